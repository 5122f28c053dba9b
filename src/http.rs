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

/// The admin page exists only when the admin API is on.
async fn admin_page(State(app): State<App>, headers: HeaderMap) -> Response {
    if app.config.admin_token.is_none() {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    match &app.config.web_dir {
        Some(dir) => match tokio::fs::read(dir.join("admin.html")).await {
            Ok(html) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
        },
        None => serve_embedded("admin.html", &headers),
    }
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    if app.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let sessions = app.sessions.clone();
    ws.max_message_size(WS_READ_LIMIT_BYTES)
        .max_frame_size(WS_READ_LIMIT_BYTES)
        .on_upgrade(move |socket| sessions.track_future(session::run(socket, app, remote)))
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
