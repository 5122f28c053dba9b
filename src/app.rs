//! Shared server context handed to every request and session: config, the room registry,
//! metrics, the shutdown signal and the tracker of session tasks.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::IceServer;
use crate::room::registry::{Registry, RegistryConfig};

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down; sessions say `bye` and close.
    pub shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for their close frames to go out.
    pub sessions: TaskTracker,
}

impl App {
    pub fn new(config: Config) -> App {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(
            RegistryConfig {
                max_room_members: config.max_room_members,
                media: false,
            },
            metrics.clone(),
        );
        App {
            config: Arc::new(config),
            registry,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
        }
    }

    /// The `iceServers` a member gets in `joined`.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        Vec::new()
    }
}
