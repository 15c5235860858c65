//! GPS query API: login, API keys, role-based access per tenant, management of devices, users
//! and groups, history (JSON, GeoJSON, GPX, CSV), latest positions, area queries, summaries,
//! live-view tickets, the audit log and the OpenAPI document.
//!
//! `run` takes a bound listener so that tests can bind port 0 and call it directly.

pub mod app;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod summary;

use app::{AppState, Settings};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use clap::{Parser, Subcommand};
use gps_runtime::access::JwtKeys;
use gps_runtime::config::{DatabaseArgs, JwtArgs, LogArgs, RedisArgs};
use gps_runtime::ops::{self, Readiness};
use gps_runtime::shutdown::Shutdown;
use routes::{history, identity, manage};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Service configuration: flags and env vars.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", about = "GPS query API: history, management, auth")]
pub struct Config {
    /// What to do; without a subcommand, serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// HTTP listen address.
    #[arg(
        long = "addr",
        env = "QUERY_API_ADDR",
        default_value = "127.0.0.1:8083"
    )]
    pub addr: SocketAddr,
    /// Access token lifetime, seconds.
    #[arg(long = "access-token-ttl", env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(i64).range(30..=86_400))]
    pub access_ttl_secs: i64,
    /// Refresh token lifetime, seconds.
    #[arg(long = "refresh-token-ttl", env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 30 * 86_400, value_parser = clap::value_parser!(i64).range(60..=365 * 86_400))]
    pub refresh_ttl_secs: i64,
    /// Live ticket lifetime, seconds.
    #[arg(long = "live-ticket-ttl", env = "LIVE_TICKET_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ticket_ttl_secs: u64,
    /// Login attempts per minute per IP and per email.
    #[arg(long = "login-rate-limit", env = "LOGIN_RATE_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_limit_per_minute: u64,
    /// Authenticated requests per minute per user or API key.
    #[arg(long = "api-rate-limit", env = "API_RATE_LIMIT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_limit_per_minute: u64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Administrative subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Administration from the command line (bootstrap).
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
}

/// `query-api admin ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create a tenant and its first admin, and print how to log in.
    CreateTenant {
        /// Tenant name.
        #[arg(long)]
        name: String,
        /// The first admin's email.
        #[arg(long)]
        admin_email: String,
        /// The admin's password (generated and printed when omitted).
        #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
}

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A dependency or listener failed at start.
    #[error(transparent)]
    Runtime(#[from] gps_runtime::RuntimeError),
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] gps_runtime::config::ConfigError),
    /// Serving failed.
    #[error("http server failed: {0}")]
    Serve(#[from] std::io::Error),
    /// An admin command failed.
    #[error("{0}")]
    Admin(String),
}

/// The `/v1` API and `/openapi.json` (without the ops routes).
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/auth/login", post(identity::login))
        .route("/v1/auth/refresh", post(identity::refresh))
        .route("/v1/auth/logout", post(identity::logout))
        .route("/v1/live/ticket", post(identity::live_ticket))
        .route(
            "/v1/devices",
            get(manage::list_devices).post(manage::create_device),
        )
        .route(
            "/v1/devices/{id}",
            get(manage::get_device)
                .patch(manage::patch_device)
                .delete(manage::delete_device),
        )
        .route("/v1/devices/{id}/rotate-token", post(manage::rotate_token))
        .route(
            "/v1/devices/{id}/rotate-udp-key",
            post(manage::rotate_udp_key),
        )
        .route("/v1/devices/{id}/positions", get(history::device_positions))
        .route("/v1/devices/{id}/summary", get(history::summary))
        .route("/v1/positions", get(history::area))
        .route("/v1/positions/latest", get(history::latest))
        .route(
            "/v1/users",
            get(manage::list_users).post(manage::create_user),
        )
        .route(
            "/v1/users/{id}",
            get(manage::get_user)
                .patch(manage::patch_user)
                .delete(manage::delete_user),
        )
        .route("/v1/users/{id}/role", put(manage::set_role))
        .route(
            "/v1/groups",
            get(manage::list_groups).post(manage::create_group),
        )
        .route(
            "/v1/groups/{id}",
            get(manage::get_group).delete(manage::delete_group),
        )
        .route(
            "/v1/groups/{id}/devices/{device_id}",
            put(manage::add_group_device).delete(manage::remove_group_device),
        )
        .route(
            "/v1/groups/{id}/members/{user_id}",
            put(manage::add_group_member).delete(manage::remove_group_member),
        )
        .route(
            "/v1/api-keys",
            get(manage::list_api_keys).post(manage::create_api_key),
        )
        .route(
            "/v1/api-keys/{id}",
            axum::routing::delete(manage::revoke_api_key),
        )
        .route("/v1/audit", get(manage::list_audit))
        .route("/openapi.json", get(openapi::document))
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

/// Run until `shutdown` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), ServiceError> {
    let secret = config.jwt.resolve()?;
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::db::migrate(&pool).await?;
    let redis = gps_runtime::redis_client::connect(&config.redis).await?;
    let registry = prometheus::Registry::new();
    let state = AppState {
        pool: pool.clone(),
        redis: redis.clone(),
        keys: JwtKeys::new(&secret),
        settings: Arc::new(Settings {
            access_ttl_secs: config.access_ttl_secs,
            refresh_ttl_secs: config.refresh_ttl_secs,
            ticket_ttl_secs: config.ticket_ttl_secs,
            login_limit_per_minute: config.login_limit_per_minute,
            api_limit_per_minute: config.api_limit_per_minute,
        }),
        metrics: metrics::Metrics::new(&registry),
    };
    let readiness = Readiness::new()
        .with("postgres", move || {
            let pool = pool.clone();
            async move { gps_runtime::db::ping(&pool).await }
        })
        .with("redis", move || {
            let mut redis = redis.clone();
            async move { gps_runtime::redis_client::ping(&mut redis).await }
        });
    tracing::info!(addr = %listener.local_addr()?, "query-api listening");
    let router = api_router(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(60),
        ))
        .merge(ops::router("query-api", registry, readiness));
    ops::serve(listener, router, shutdown).await?;
    Ok(())
}

/// Run an admin command; returns what to print.
pub async fn run_admin(config: &Config, action: &AdminCommand) -> Result<String, ServiceError> {
    let pool = gps_runtime::db::connect(&config.database).await?;
    gps_runtime::db::migrate(&pool).await?;
    match action {
        AdminCommand::CreateTenant {
            name,
            admin_email,
            password,
        } => {
            let generated = password.is_none();
            let password = password
                .clone()
                .unwrap_or_else(|| gps_domain::auth::random_token(18));
            let tenant: uuid::Uuid =
                sqlx::query_scalar("INSERT INTO tenants (name) VALUES ($1) RETURNING id")
                    .bind(name)
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| {
                        ServiceError::Admin(format!("cannot create tenant {name:?}: {e}"))
                    })?;
            let user = routes::manage::insert_user(
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
