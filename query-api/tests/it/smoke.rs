//! The service starts against the real stack and serves its operational endpoints.

use crate::support::Api;
use gps_runtime::testing::assert_ops_endpoints;

#[tokio::test]
async fn serves_health_readiness_metrics_and_openapi() {
    let api = Api::start().await;
    let base = api.url("");
    assert_ops_endpoints(&api.client, &base, &["postgres", "redis"]).await;
}

#[tokio::test]
async fn openapi_lists_exactly_the_routes_that_answer() {
    let api = Api::start().await;
    let doc: serde_json::Value = api
        .client
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in query_api::openapi::ROUTES {
        assert!(
            doc["paths"][route.path][route.method].is_object(),
            "{} {} missing",
            route.method,
            route.path
        );
        // Every documented route is routed: unauthenticated calls get 401 (or 400 for the
        // public JSON routes, which want a body), never the 404 of an unknown route.
        let path = route
            .path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{device_id}", &uuid::Uuid::new_v4().to_string())
            .replace("{user_id}", &uuid::Uuid::new_v4().to_string());
        let method = reqwest::Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
        let status = api
            .client
            .request(method, api.url(&path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        let expected: &[u16] = if route.auth { &[401] } else { &[200, 400, 415] };
        assert!(
            expected.contains(&status),
            "{} {} answered {status}",
            route.method,
            route.path
        );
    }
    let unknown = api.client.get(api.url("/v1/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}
