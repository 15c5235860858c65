//! The dashboard: the static files of `web/` served at `/` (no authentication: they hold no
//! data; every data call the page makes goes through the `/v1` API with a bearer token), the
//! page's public configuration (`/config.json`: the live WebSocket URL and an optional tile URL),
//! and the headers that keep the page to its own origin (a `Content-Security-Policy` allowing
//! only this origin, the fanout WebSocket and the tile server).
//!
//! Files are read from `WEB_DIR` at request time, by a fixed set of names (`index.html`, flat
//! `app/<name>.<js|css|svg>`, and two files of the npm packages the page needs, which `npm ci` in
//! `web/` puts under `node_modules/`), so nothing outside those can be named by a request.

use axum::extract::Path;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, HOST, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gps_runtime::config::{ConfigProblems, InvalidConfig};
use std::path::PathBuf;
use std::sync::Arc;

/// The dashboard's settings (flags and env vars).
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    /// Directory of the dashboard: `index.html`, `app/`, and `node_modules/` after `npm ci`.
    #[arg(long = "web-dir", env = "WEB_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../web"))]
    pub web_dir: PathBuf,
    /// Raster tile URL template with `{z}`, `{x}`, `{y}` (http or https), drawn under the
    /// offline basemap when set; unset, the page draws the offline basemap alone.
    #[arg(long = "web-tile-url", env = "WEB_TILE_URL")]
    pub tile_url: Option<String>,
    /// The fanout WebSocket URL the page opens (`ws://` or `wss://`, path `/v1/live`); unset,
    /// `ws://<host of the page>:8082/v1/live`.
    #[arg(long = "web-live-url", env = "WEB_LIVE_URL")]
    pub live_url: Option<String>,
    /// The ingest base URL the device setup page shows (`http://` or `https://`); the UDP
    /// address shown is its host with port 8081. Unset, `http://<host of the page>:8080`.
    #[arg(long = "web-ingest-url", env = "WEB_INGEST_URL")]
    pub ingest_url: Option<String>,
}

/// Checked [`WebArgs`].
#[derive(Debug, Clone)]
pub struct WebConfig {
    dir: PathBuf,
    tile_url: Option<String>,
    tile_origin: Option<String>,
    live_url: Option<String>,
    ingest_url: Option<String>,
}

impl WebArgs {
    /// Check the URLs; every problem is listed.
    pub fn check(&self) -> Result<WebConfig, InvalidConfig> {
        let mut problems = ConfigProblems::default();
        let tile_origin = self.tile_url.as_deref().and_then(|url| {
            let origin = origin_of(url, &["http", "https"]);
            if origin.is_none() || !["{z}", "{x}", "{y}"].iter().all(|p| url.contains(p)) {
                problems.push(
                    "WEB_TILE_URL",
                    "must be an http(s) URL template with {z}, {x} and {y}",
                );
            }
            origin
        });
        if let Some(url) = &self.live_url {
            if origin_of(url, &["ws", "wss"]).is_none() {
                problems.push("WEB_LIVE_URL", "must be a ws:// or wss:// URL");
            }
        }
        if let Some(url) = &self.ingest_url {
            if origin_of(url, &["http", "https"]).is_none() {
                problems.push("WEB_INGEST_URL", "must be an http:// or https:// URL");
            }
        }
        problems.finish()?;
        if !self.web_dir.join("index.html").is_file() {
            tracing::warn!(dir = %self.web_dir.display(), "dashboard files not found (WEB_DIR): `/` answers 404");
        } else if !self.web_dir.join(VENDOR_FILES[0].1).is_file() {
            tracing::warn!(dir = %self.web_dir.display(), "dashboard packages missing: run `npm ci` in web/ (the map has no basemap until then)");
        }
        Ok(WebConfig {
            dir: self.web_dir.clone(),
            tile_url: self.tile_url.clone(),
            tile_origin,
            live_url: self.live_url.clone(),
            ingest_url: self.ingest_url.clone(),
        })
    }
}

/// `scheme://host[:port]` of `url` when its scheme is one of `schemes` and it has a host.
fn origin_of(url: &str, schemes: &[&str]) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !schemes.contains(&scheme) {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let valid = !authority.is_empty()
        && !authority.contains('@')
        && authority
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]{}".contains(c));
    valid.then(|| format!("{scheme}://{authority}"))
}

/// The files of npm packages the page loads, by the path it asks for.
const VENDOR_FILES: [(&str, &str); 2] = [
    ("land-110m.json", "node_modules/world-atlas/land-110m.json"),
    ("lean-qr.mjs", "node_modules/lean-qr/index.mjs"),
];

/// The dashboard routes: `/`, `/app/{file}`, `/vendor/{file}`, `/config.json`.
pub fn router(config: WebConfig) -> Router {
    let config = Arc::new(config);
    let (c1, c2, c3, c4) = (
        config.clone(),
        config.clone(),
        config.clone(),
        config.clone(),
    );
    Router::new()
        .route(
            "/",
            get(move |headers: HeaderMap| async move {
                serve(&c1, &headers, "index.html".into()).await
            }),
        )
        .route(
            "/app/{file}",
            get(
                move |headers: HeaderMap, Path(file): Path<String>| async move {
                    match app_file(&file) {
                        Some(path) => serve(&c2, &headers, path).await,
                        None => not_found(),
                    }
                },
            ),
        )
        .route(
            "/vendor/{file}",
            get(
                move |headers: HeaderMap, Path(file): Path<String>| async move {
                    match VENDOR_FILES.iter().find(|(name, _)| *name == file) {
                        Some((_, path)) => serve(&c3, &headers, PathBuf::from(path)).await,
                        None => not_found(),
                    }
                },
            ),
        )
        .route(
            "/config.json",
            get(move |headers: HeaderMap| async move { public_config(&c4, &headers) }),
        )
}

/// `app/<file>` when `file` is a plain name of a servable kind (no directories, no dot files).
fn app_file(file: &str) -> Option<PathBuf> {
    let (stem, ext) = file.rsplit_once('.')?;
    let plain = !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    (plain && content_type(ext).is_some()).then(|| PathBuf::from("app").join(file))
}

fn content_type(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "png" => "image/png",
        _ => return None,
    })
}

/// The live WebSocket URL for a page loaded through `Host: host`.
fn live_url(config: &WebConfig, headers: &HeaderMap) -> String {
    match &config.live_url {
        Some(url) => url.clone(),
        None => format!("ws://{}:8082/v1/live", page_host(headers)),
    }
}

/// The ingest base URL and UDP address the setup page shows.
fn ingest_urls(config: &WebConfig, headers: &HeaderMap) -> (String, String) {
    match &config.ingest_url {
        Some(url) => {
            let host = origin_of(url, &["http", "https"])
                .and_then(|o| o.split_once("://").map(|(_, a)| a.to_owned()))
                .unwrap_or_default();
            let name = host_name(&host).to_owned();
            (url.trim_end_matches('/').to_owned(), format!("{name}:8081"))
        }
        None => {
            let name = page_host(headers);
            (format!("http://{name}:8080"), format!("{name}:8081"))
        }
    }
}

/// `host` without its port (IPv6 literals keep their brackets).
fn host_name(host: &str) -> &str {
    match host.rfind(']') {
        Some(end) => &host[..=end],
        None => host.split(':').next().unwrap_or(host),
    }
}

/// The host name the page was loaded through, when it is a plain one; else `127.0.0.1`.
fn page_host(headers: &HeaderMap) -> &str {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let name = host_name(host);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
    {
        "127.0.0.1"
    } else {
        name
    }
}

/// The headers every dashboard answer carries.
fn security_headers(config: &WebConfig, headers: &HeaderMap, response: &mut Response) {
    let live = live_url(config, headers);
    let live_origin = origin_of(&live, &["ws", "wss"]).unwrap_or_default();
    let tiles = config.tile_origin.as_deref().unwrap_or("");
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: {tiles}; \
         connect-src 'self' {live_origin}; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    );
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        out.insert(CONTENT_SECURITY_POLICY, value);
    }
    out.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    out.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /config.json`: what the page needs to know about its deployment (nothing secret).
fn public_config(config: &WebConfig, headers: &HeaderMap) -> Response {
    let (ingest_url, udp_addr) = ingest_urls(config, headers);
    let body = serde_json::json!({
        "live_url": live_url(config, headers),
        "tile_url": config.tile_url,
        "ingest_url": ingest_url,
        "udp_addr": udp_addr,
    });
    let mut response = (
        [
            (CONTENT_TYPE, "application/json"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response();
    security_headers(config, headers, &mut response);
    response
}

fn not_found() -> Response {
    crate::error::ApiError::NotFound.into_response()
}

/// One file of `WEB_DIR`, revalidated on every load (`no-cache` with an `ETag` of its size and
/// modification time), so a changed file is picked up at once and an unchanged one costs a 304.
async fn serve(config: &WebConfig, headers: &HeaderMap, relative: PathBuf) -> Response {
    let ext = relative
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    let Some(kind) = content_type(ext) else {
        return not_found();
    };
    let path = config.dir.join(&relative);
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        tracing::debug!(path = %path.display(), "dashboard file missing");
        return not_found();
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), modified);
    let mut response = if headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match tokio::fs::read(&path).await {
            Ok(bytes) => ([(CONTENT_TYPE, kind)], bytes).into_response(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dashboard file unreadable");
                return not_found();
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(ETAG, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(config, headers, &mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(tile: Option<&str>, live: Option<&str>) -> WebArgs {
        WebArgs {
            web_dir: PathBuf::from("/nonexistent"),
            tile_url: tile.map(str::to_owned),
            live_url: live.map(str::to_owned),
            ingest_url: None,
        }
    }

    #[test]
    fn only_plain_app_file_names_are_served() {
        assert_eq!(app_file("main.js"), Some(PathBuf::from("app/main.js")));
        assert_eq!(app_file("style.css"), Some(PathBuf::from("app/style.css")));
        for bad in [
            "../secret.js",
            "..",
            ".env",
            "a/b.js",
            "a\\b.js",
            "main.rs",
            "main",
            ".js",
            "x.js.map",
        ] {
            assert_eq!(app_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn urls_are_checked_and_their_origins_go_to_the_policy() {
        let config = args(
            Some("https://tiles.example/{z}/{x}/{y}.png"),
            Some("wss://live.example:9443/v1/live"),
        )
        .check()
        .unwrap();
        assert_eq!(config.tile_origin.as_deref(), Some("https://tiles.example"));
        let mut response = ().into_response();
        security_headers(&config, &HeaderMap::new(), &mut response);
        let csp = response.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' wss://live.example:9443;"),
            "{csp}"
        );
        assert!(csp.contains("img-src 'self' data: blob: https://tiles.example;"));

        let err = args(Some("javascript:alert(1)"), Some("http://x/v1/live"))
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WEB_TILE_URL") && err.contains("WEB_LIVE_URL"),
            "{err}"
        );
        assert!(args(Some("https://t.example/tile.png"), None)
            .check()
            .is_err());
    }

    #[test]
    fn the_default_live_url_follows_the_page_host() {
        let config = args(None, None).check().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("localhost:8083"));
        assert_eq!(live_url(&config, &headers), "ws://localhost:8082/v1/live");
        headers.insert(HOST, HeaderValue::from_static("[::1]:8083"));
        assert_eq!(live_url(&config, &headers), "ws://[::1]:8082/v1/live");
        headers.insert(HOST, HeaderValue::from_static("evil'; script-src *"));
        assert_eq!(live_url(&config, &headers), "ws://127.0.0.1:8082/v1/live");
        assert_eq!(
            live_url(&config, &HeaderMap::new()),
            "ws://127.0.0.1:8082/v1/live"
        );
        headers.insert(HOST, HeaderValue::from_static("gps.example:8083"));
        assert_eq!(
            ingest_urls(&config, &headers),
            ("http://gps.example:8080".into(), "gps.example:8081".into())
        );
        let mut args = args(None, None);
        args.ingest_url = Some("https://in.example:8443/".into());
        assert_eq!(
            ingest_urls(&args.check().unwrap(), &headers),
            ("https://in.example:8443".into(), "in.example:8081".into())
        );
    }
}
