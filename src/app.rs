//! Shared server context handed to every request and session: config, the room registry,
//! metrics, the shutdown signal and the tracker of session tasks.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::IceServer;
use crate::room::registry::{Registry, RegistryConfig};
use crate::sfu::member::MediaContext;
use crate::sfu::peer::{default_media_ips, PeerOptions};

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server starts shutting down; sessions say `bye` and close.
    pub shutdown: CancellationToken,
    /// Every WebSocket session, so shutdown can wait for their close frames to go out.
    pub sessions: TaskTracker,
    /// What every member's media needs: where to bind, metrics.
    pub media: MediaContext,
}

impl App {
    pub fn new(config: Config) -> App {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(
            RegistryConfig {
                max_room_members: config.max_room_members,
                media: true,
            },
            metrics.clone(),
        );
        let udp_ips = if config.media_ips.is_empty() {
            default_media_ips(config.bind)
        } else {
            config.media_ips.clone()
        };
        tracing::info!(ips = ?udp_ips, "media binds to");
        let media = MediaContext {
            peer_options: PeerOptions {
                udp_ips,
                // The server's own connections never use TURN: they would all share one
                // relayed 5-tuple. STUN is for clients only.
                ice_servers: Vec::new(),
            },
            metrics: metrics.clone(),
        };
        App {
            config: Arc::new(config),
            registry,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            media,
        }
    }

    /// The `iceServers` a member gets in `joined`.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        if self.config.stun_urls.is_empty() {
            return Vec::new();
        }
        vec![IceServer {
            urls: self.config.stun_urls.clone(),
            username: None,
            credential: None,
        }]
    }
}
