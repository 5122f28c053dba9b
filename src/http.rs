//! The HTTP surface: web client, `/ws` signaling, `/healthz`, `/metrics` (here or on its own
//! listener), the admin API and page.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;
use tower_http::services::ServeDir;

use crate::admin;
use crate::app::App;
use crate::signal::session;

/// Frames up to this size are read whole so that an oversized (but sane) frame can be refused
/// with `too_large` and the connection kept; anything larger is a protocol violation that
/// closes the socket (1009) before it can cost memory.
const WS_READ_LIMIT_BYTES: usize = 1024 * 1024;

/// The web client, compiled into the binary so `yoom serve` works from any directory.
#[derive(RustEmbed)]
#[folder = "web/"]
struct WebAssets;

pub fn router(app: App) -> Router {
    let mut api = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/admin", get(admin_page))
        // The page's own files exist only when the page does.
        .route("/admin.html", get(admin_page))
        .route("/admin.js", get(admin_asset))
        .route("/admin.css", get(admin_asset))
        .merge(admin::api_routes(&app));
    if app.config.metrics_bind.is_none() {
        api = api.route("/metrics", get(metrics));
    }
    let router = match &app.config.web_dir {
        Some(dir) => api.fallback_service(ServeDir::new(dir)),
        None => api.fallback(embedded_asset),
    };
    router.with_state(app)
}

/// `/metrics` alone, for `metrics.bind`.
pub fn metrics_router(app: App) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app)
}

async fn admin_asset(State(app): State<App>, uri: Uri, headers: HeaderMap) -> Response {
    admin_file(&app, uri.path().trim_start_matches('/'), &headers).await
}

/// The admin page exists only when the admin API is on.
async fn admin_page(State(app): State<App>, headers: HeaderMap) -> Response {
    admin_file(&app, "admin.html", &headers).await
}

async fn admin_file(app: &App, path: &str, headers: &HeaderMap) -> Response {
    if app.config.admin_token.is_none() {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let Some(dir) = &app.config.web_dir else {
        return serve_embedded(path, headers);
    };
    let mime = match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "text/css; charset=utf-8",
    };
    match tokio::fs::read(dir.join(path)).await {
        Ok(body) => ([(header::CONTENT_TYPE, mime)], body).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if !origin_allowed(&app.config.allowed_origins, &headers) {
        tracing::warn!(%remote, origin = ?headers.get(header::ORIGIN), "WebSocket from a foreign origin refused");
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not connect (server.allowed_origins)",
        )
            .into_response();
    }
    let Some(slot) = app.connection_limit.acquire(remote.ip()) else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address (server.max_connections_per_ip)",
        )
            .into_response();
    };
    let sessions = app.sessions.clone();
    ws.max_message_size(WS_READ_LIMIT_BYTES)
        .max_frame_size(WS_READ_LIMIT_BYTES)
        .on_upgrade(move |socket| {
            sessions.track_future(async move {
                let _slot = slot;
                session::run(socket, app, remote).await
            })
        })
}

/// Cross-site WebSocket hijacking guard: a browser always says which page opens the socket.
/// Clients without `Origin` are not browsers (no ambient cookies to abuse) and pass.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    }
    // Default: only pages served by this host (as the browser addressed it).
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((_, origin_host)), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

async fn embedded_asset(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    serve_embedded(path, &headers)
}

fn serve_embedded(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = WebAssets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..8]));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Response::new(Body::from(file.data.into_owned()));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(file.metadata.mimetype()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidate every time: the client is small and must never run stale against a new server.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn by_default_only_the_servers_own_pages_may_connect() {
        let none: Vec<String> = Vec::new();
        assert!(origin_allowed(
            &none,
            &headers(Some("http://localhost:3000"), "localhost:3000")
        ));
        assert!(origin_allowed(
            &none,
            &headers(Some("https://Meet.Example.org"), "meet.example.org")
        ));
        assert!(!origin_allowed(
            &none,
            &headers(Some("https://evil.example"), "localhost:3000")
        ));
        assert!(!origin_allowed(
            &none,
            &headers(Some("http://localhost:3001"), "localhost:3000")
        ));
        assert!(!origin_allowed(
            &none,
            &headers(Some("null"), "localhost:3000")
        ));
        assert!(origin_allowed(&none, &headers(None, "localhost:3000")));
    }

    #[test]
    fn configured_origins_replace_the_default() {
        let list = vec!["https://meet.example.org".to_string()];
        assert!(origin_allowed(
            &list,
            &headers(Some("https://meet.example.org"), "yoom.internal:3000")
        ));
        assert!(!origin_allowed(
            &list,
            &headers(Some("http://yoom.internal:3000"), "yoom.internal:3000")
        ));
        let any = vec!["*".to_string()];
        assert!(origin_allowed(
            &any,
            &headers(Some("https://anything.example"), "x")
        ));
    }
}
