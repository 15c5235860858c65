//! The bad-input table: every malformed request gets its documented 4xx answer (status, code,
//! field) and moves the refusal metric; nothing answers 5xx, nothing panics, and ingest keeps
//! serving good requests afterwards. (Bad UDP datagrams are covered in `protocols`.)

use crate::support::Ingest;
use serde_json::{json, Value};

/// Refusals of every protocol and reason.
const REFUSED: &str = "gps_ingest_fixes_refused_total";

struct Case {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: String,
    auth: Option<String>,
    status: u16,
    code: Option<&'static str>,
    field: Option<&'static str>,
}

#[tokio::test]
async fn every_bad_input_gets_its_documented_answer() {
    let ingest = Ingest::start_with(|c| {
        c.limits.max_batch = 10;
        c.limits.max_body_bytes = 64 * 1024;
    })
    .await;
    let token = Some(ingest.device.token.clone());
    let good = |extra: Value| {
        let mut fix = json!({"time": 1_714_557_601_000_i64, "lat": 1.0, "lon": 2.0});
        if let (Some(f), Some(e)) = (fix.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                f.insert(k.clone(), v.clone());
            }
        }
        fix
    };
    let case = |name, body: String, status, code, field| Case {
        name,
        path: "/v1/fixes",
        content_type: "application/json",
        body,
        auth: token.clone(),
        status,
        code,
        field,
    };
    let cases = vec![
        case("malformed json", "{\"lat\": 1,".into(), 400, None, None),
        case("not an object", "\"hello\"".into(), 400, None, None),
        case(
            "wrong type",
            good(json!({"lat": "north"})).to_string(),
            400,
            Some("invalid_fixes"),
            Some("0.lat"),
        ),
        case(
            "NaN string",
            good(json!({"lon": "NaN"})).to_string(),
            400,
            Some("invalid_fixes"),
            Some("0.lon"),
        ),
        case(
            "Infinity string",
            good(json!({"speed": "Infinity"})).to_string(),
            400,
            Some("invalid_fixes"),
            Some("0.speed"),
        ),
        case(
            "huge number",
            r#"{"time":1714557601000,"lat":1e999,"lon":2}"#.into(),
            400,
            None,
            None,
        ),
        case(
            "missing lat",
            json!({"time": 1_714_557_601_000_i64, "lon": 2.0}).to_string(),
            400,
            Some("invalid_fixes"),
            Some("0.lat"),
        ),
        case(
            "missing time",
            json!({"lat": 1.0, "lon": 2.0}).to_string(),
            400,
            Some("invalid_fixes"),
            Some("0.time"),
        ),
        case("empty batch", "[]".into(), 400, None, None),
        case(
            "too many items",
            json!((0..11).map(|_| good(json!({}))).collect::<Vec<_>>()).to_string(),
            413,
            Some("too_large"),
            None,
        ),
        case(
            "oversized body",
            format!("[{}]", vec![good(json!({})).to_string(); 2000].join(",")),
            413,
            None,
            None,
        ),
        Case {
            auth: None,
            ..case(
                "no token",
                good(json!({})).to_string(),
                401,
                Some("unauthorized"),
                None,
            )
        },
        Case {
            auth: Some("gpsd_not-a-real-token".into()),
            ..case(
                "bad token",
                good(json!({})).to_string(),
                401,
                Some("unauthorized"),
                None,
            )
        },
        Case {
            path: "/?id=no-such-device&lat=1&lon=2&timestamp=1714557601",
            content_type: "application/x-www-form-urlencoded",
            auth: None,
            ..case("osmand unknown device", String::new(), 400, None, None)
        },
        Case {
            path: "/?id=x&lat=91&lon=2&timestamp=soon",
            content_type: "application/x-www-form-urlencoded",
            auth: None,
            ..case("osmand bad timestamp", String::new(), 400, None, None)
        },
        Case {
            path: "/owntracks",
            auth: None,
            ..case(
                "owntracks without credentials",
                json!({"_type": "location", "lat": 1, "lon": 2, "tst": 1}).to_string(),
                401,
                None,
                None,
            )
        },
    ];
    let refused_before = ingest.metric(REFUSED).await;
    let mut failures = Vec::new();
    for c in &cases {
        let mut request = ingest
            .client
            .post(ingest.url(c.path))
            .header("content-type", c.content_type)
            .body(c.body.clone());
        if let Some(token) = &c.auth {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 500 || status != c.status {
            failures.push(format!("{}: {status} {text}", c.name));
            continue;
        }
        if let Some(code) = c.code {
            if body["error"]["code"] != code {
                failures.push(format!(
                    "{}: code {} (want {code})",
                    c.name, body["error"]["code"]
                ));
            }
        }
        if let Some(field) = c.field {
            if body["error"]["field"] != field {
                failures.push(format!(
                    "{}: field {} (want {field}) {text}",
                    c.name, body["error"]["field"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let refused_after = ingest.metric(REFUSED).await;
    assert!(
        refused_after >= refused_before + cases.len() as f64 - 1.0,
        "every refusal is counted: {refused_before} -> {refused_after}"
    );
    // Still serving.
    let ok = ingest
        .client
        .post(ingest.url("/v1/fixes"))
        .bearer_auth(&ingest.device.token)
        .json(&good(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    ingest.stop().await;
}
