//! GPS query API: login, API keys, role-based access per tenant, management of devices, users
//! and groups, history (JSON, GeoJSON, GPX, CSV), latest positions, area queries, summaries,
//! live-view tickets, the audit log and the OpenAPI document.
//!
//! `run` takes a bound listener so that tests can bind port 0 and call it directly.

pub mod app;
pub mod config;
pub mod error;
pub mod metrics;
pub mod openapi;
mod passwords;
pub mod routes;
pub mod summary;
pub mod web;

pub use config::{AdminCommand, Command, Config, Settings};
pub use error::ServiceError;

use app::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use gps_runtime::ops::{self, Readiness};
use gps_runtime::service::Service;
use gps_runtime::shutdown::Shutdown;
use gps_store::principal::JwtKeys;
use routes::{api_keys, audit, devices, groups, history, identity, users};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Longest a request may take (503 after), and so the longest shutdown waits for open ones.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The `/v1` API and `/openapi.json` (without the ops routes).
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/auth/login", post(identity::login))
        .route("/v1/auth/refresh", post(identity::refresh))
        .route("/v1/auth/logout", post(identity::logout))
        .route("/v1/auth/password", post(identity::change_password))
        .route("/v1/live/ticket", post(identity::live_ticket))
        .route(
            "/v1/devices",
            get(devices::list_devices).post(devices::create_device),
        )
        .route(
            "/v1/devices/{id}",
            get(devices::get_device)
                .patch(devices::patch_device)
                .delete(devices::delete_device),
        )
        .route(
            "/v1/tenant",
            get(devices::get_tenant).patch(devices::patch_tenant),
        )
        .route("/v1/devices/{id}/rotate-token", post(devices::rotate_token))
        .route(
            "/v1/devices/{id}/rotate-udp-key",
            post(devices::rotate_udp_key),
        )
        .route("/v1/devices/{id}/positions", get(history::device_positions))
        .route("/v1/devices/{id}/summary", get(history::summary))
        .route(
            "/v1/devices/{id}/status",
            get(routes::status::device_status),
        )
        .route("/v1/positions", get(history::area))
        .route("/v1/positions/latest", get(history::latest))
        .route("/v1/users", get(users::list_users).post(users::create_user))
        .route(
            "/v1/users/{id}",
            get(users::get_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        )
        .route("/v1/users/{id}/role", put(users::set_role))
        .route(
            "/v1/groups",
            get(groups::list_groups).post(groups::create_group),
        )
        .route(
            "/v1/groups/{id}",
            get(groups::get_group).delete(groups::delete_group),
        )
        .route(
            "/v1/groups/{id}/devices/{device_id}",
            put(groups::add_group_device).delete(groups::remove_group_device),
        )
        .route(
            "/v1/groups/{id}/members/{user_id}",
            put(groups::add_group_member).delete(groups::remove_group_member),
        )
        .route(
            "/v1/api-keys",
            get(api_keys::list_api_keys).post(api_keys::create_api_key),
        )
        .route(
            "/v1/api-keys/{id}",
            axum::routing::delete(api_keys::revoke_api_key),
        )
        .route("/v1/audit", get(audit::list_audit))
        .route("/v1/event-types", get(routes::events::event_types))
        .route("/v1/events", get(routes::events::list_events))
        // Fence bodies have a larger body limit of their own.
        .merge(routes::geofences::router())
        .merge(routes::webhooks::router())
        .route("/openapi.json", get(openapi::document))
        // Bodies over the limit are refused (413) before they are buffered.
        .layer(axum::extract::DefaultBodyLimit::max(app::MAX_BODY_BYTES))
        .fallback(|| async { error::ApiError::NotFound })
        .method_not_allowed_fallback(|| async {
            error::ApiError::bad_request("method not allowed on this route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Count and time every request by its route template (bounded labels).
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .latency
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}

/// Run until `shutdown` fires (or the server fails), then stop accepting and let open
/// requests finish, at most [`REQUEST_TIMEOUT`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let settings = config.settings()?;
    let export_idle_timeout = settings.limits.export_idle_timeout;
    let web = config.web.check()?;
    // Every session with a statement timeout: a query stops when its client got its error.
    let pool = gps_runtime::db::connect_with(&config.database, config.db_session()).await?;
    gps_runtime::db::migrate(&pool).await?;
    let redis = gps_runtime::redis_client::connect(&config.redis).await?;
    let registry = prometheus::Registry::new();
    let readiness = Readiness::new().postgres(&pool).redis(&redis);
    let state = AppState {
        // History reads may hold at most half the pool at once: the rest answers everyone else.
        exports: history::ExportSlots::new(
            settings.limits.exports_per_tenant,
            config.database.max_connections as usize / 2,
        ),
        pool,
        redis,
        keys: JwtKeys::new(&settings.jwt_secret),
        settings: Arc::new(settings),
        metrics: metrics::Metrics::new(&registry),
    };
    let router = api_router(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .merge(ops::router("query-api", registry, readiness))
        .merge(web::router(web));
    tracing::info!(addr = %listener.local_addr()?, "query-api listening");
    let service = Service::new("query-api", shutdown);
    // A client that stops reading a response (an export) is cut after the export idle
    // timeout: the stream's reader stops at its next chunk, the socket is reset here.
    service.serve_with_write_timeout("http", listener, router, export_idle_timeout);
    service.run(REQUEST_TIMEOUT).await?;
    Ok(())
}

/// Run an admin command; returns what to print.
pub async fn run_admin(config: &Config, action: &AdminCommand) -> Result<String, ServiceError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::db::migrate(&pool).await?;
    match action {
        AdminCommand::EnsureUser {
            tenant,
            email,
            role,
            password,
        } => ensure_user(&pool, tenant, email, role, password).await,
        AdminCommand::CreateTenant {
            name,
            admin_email,
            password,
        } => {
            routes::check_name("name", name)
                .map_err(|e| ServiceError::Admin(format!("cannot create tenant: name {e}")))?;
            let generated = password.is_none();
            let password = password
                .clone()
                .unwrap_or_else(|| gps_domain::auth::random_token(18));
            let tenant = routes::tenants::insert_tenant(&pool, name)
                .await
                .map_err(|e| ServiceError::Admin(format!("cannot create tenant {name:?}: {e}")))?;
            let user = users::insert_user(
                &pool,
                tenant,
                admin_email,
                &password,
                gps_domain::auth::Role::Admin,
                "administrator",
            )
            .await
            .map_err(|e| ServiceError::Admin(format!("cannot create admin: {e}")))?;
            let shown = if generated {
                password.as_str()
            } else {
                "<the password you gave>"
            };
            Ok(format!(
                "tenant {name} ({tenant}) created with admin {admin_email} ({user})\n\
                 log in:\n  curl -s -X POST http://{addr}/v1/auth/login -H 'content-type: application/json' \\\n    -d '{{\"email\":\"{admin_email}\",\"password\":\"{shown}\"}}'\n",
                addr = config.addr,
            ))
        }
    }
}

/// `admin ensure-user`: the tenant (created when missing) gets the user, or the existing user its
/// new password and role; older sessions of that user end (as after any password change).
async fn ensure_user(
    pool: &sqlx::PgPool,
    tenant: &str,
    email: &str,
    role: &str,
    password: &str,
) -> Result<String, ServiceError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ServiceError::Admin(format!("{what}: {e}"));
    routes::check_name("name", tenant).map_err(|e| fail("tenant name", &e))?;
    let role: gps_domain::auth::Role = role.parse().map_err(|e| fail("role", &e))?;
    if password.chars().count() < 10 {
        return Err(ServiceError::Admin(
            "password: at least 10 characters".into(),
        ));
    }
    let tenant_id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO tenants (name) VALUES ($1)
         ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .map_err(|e| fail("tenant", &e))?;
    let existing: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE tenant_id = $1 AND lower(email) = lower($2)",
    )
    .bind(tenant_id)
    .bind(email.trim())
    .fetch_optional(pool)
    .await
    .map_err(|e| fail("user lookup", &e))?;
    let user = match existing {
        None => users::insert_user(pool, tenant_id, email, password, role, "")
            .await
            .map_err(|e| fail("user", &e))?,
        Some(id) => {
            let phc = passwords::hash_new_password(password.to_owned())
                .await
                .map_err(|e| fail("password", &e))?;
            sqlx::query(
                "UPDATE users SET password_hash = $2, role = $3, disabled = false,
                        tokens_not_before = now() WHERE id = $1",
            )
            .bind(id)
            .bind(phc)
            .bind(role.as_str())
            .execute(pool)
            .await
            .map_err(|e| fail("user update", &e))?;
            id
        }
    };
    Ok(format!(
        "user {email} ({user}) of tenant {tenant} ({tenant_id}) ready, role {}\n",
        role.as_str()
    ))
}
