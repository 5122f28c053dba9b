//! Yoom: a selective forwarding unit for video meetings, in one binary.
//!
//! # Layout
//! Dependencies point one way: `http`/`signal` → `room` → `sfu`.
//! - [`config`]: flags, `YOOM_*` env and `config/yoom.toml` merged once into a validated
//!   [`Config`].
//! - [`http`]: the axum `Router` — embedded web client, `/ws`, `/healthz`, `/metrics`.
//! - [`protocol`]: the signaling contract (PROTOCOL.md) as types; parsing never panics.
//! - [`signal`]: one session task per WebSocket (size and rate limits, ping, idle timeout).
//! - [`room`]: the registry that owns every room's state behind one short lock, and each
//!   client's bounded outbox.
//! - [`metrics`]: every Prometheus metric, named once.
//! - [`load`]: `yoom load`, the load tool (simulated members, loss/delay/CPU report).
//! - [`healthcheck`]: `yoom healthcheck`, a GET of `/healthz` for container health checks.
//! - [`allocator`]: heap in use (a metric) and malloc settings for a long-running server.
//!
//! [`run`] serves until its shutdown future resolves; `main.rs` only parses the command line.

pub mod admin;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod config;
pub mod healthcheck;
pub mod http;
pub mod ids;
pub mod load;
pub mod metrics;
pub mod proc_stat;
pub mod protocol;
pub mod room;
pub mod sfu;
pub mod signal;
pub mod turn;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

pub use app::{App, StartError};
pub use config::Config;

/// How long shutdown waits for sessions to say goodbye before giving up on them.
const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration cannot be put into effect (a busy or unknown media address...).
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds media, then serves HTTP and signaling on `listener` until `shutdown` resolves, then
/// closes every WebSocket with a `bye` and a close frame and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let app = App::start(config).await?;
    let addr = listener.local_addr()?;
    let metrics_listener = match app.config.metrics_bind {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::MetricsBind { addr, source })?,
        ),
        None => None,
    };
    let lobby = tokio::spawn(app.registry.clone().run_lobby_broadcaster());
    let router = http::router(app.clone());
    let metrics_server = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!("metrics on http://{addr}/metrics");
        }
        let stop = app.shutdown.clone();
        let router = http::metrics_router(app.clone());
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "metrics listener failed");
            }
        })
    });

    info!("listening on http://{addr}");
    let stop = app.shutdown.clone();
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        info!("shutting down");
        stop.cancel();
    })
    .await;

    // Upgraded WebSockets are not HTTP connections any more: wait for them separately.
    app.shutdown.cancel();
    app.sessions.close();
    if tokio::time::timeout(SESSION_DRAIN_TIMEOUT, app.sessions.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = app.sessions.len(),
            "sessions did not close in time"
        );
    }
    lobby.abort();
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    Ok(served?)
}
