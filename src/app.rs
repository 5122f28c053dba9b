//! Shared server context handed to every request and session: config, the room registry,
//! metrics, the shutdown signal and the tracker of session tasks.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ids::MemberId;
use crate::metrics::Metrics;
use crate::protocol::IceServer;
use crate::room::registry::{Registry, RegistryConfig};
use crate::sfu::member::MediaContext;
use crate::sfu::peer::{default_media_ips, PeerOptions};
use crate::sfu::transport::{
    discover_public_ip, MediaTransport, TransportError, TransportSettings,
};
use crate::turn;

/// Why the server cannot start with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("rtc: {0}")]
    Transport(#[from] TransportError),
    #[error("rtc.discover_public_ip: asking {server}: {source}")]
    Discovery {
        server: String,
        source: std::io::Error,
    },
    #[error("metrics.bind: cannot listen on {addr}: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

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
    /// Open WebSocket connections per client address (`server.max_connections_per_ip`).
    pub connection_limit: ConnectionLimit,
}

/// Counts connections per IP address; a slot is given back when its guard drops.
#[derive(Clone)]
pub struct ConnectionLimit {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

pub struct ConnectionSlot {
    ip: std::net::IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        ConnectionLimit {
            max,
            open: Default::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` at the limit.
    pub fn acquire(&self, ip: std::net::IpAddr) -> Option<ConnectionSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl App {
    /// Binds media sockets (and discovers the public address if asked); must run in tokio.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(
            RegistryConfig {
                max_room_members: config.max_room_members,
                max_rooms: config.max_rooms,
                media: true,
            },
            metrics.clone(),
        );
        let udp_ips = if config.media_ips.is_empty() {
            default_media_ips(config.bind)
        } else {
            config.media_ips.clone()
        };
        let mut public_ips = config.public_ips.clone();
        if config.discover_public_ip {
            let url = &config.stun_urls[0];
            let server = stun_host_port(url);
            let ip = discover_public_ip(&server, udp_ips[0])
                .await
                .map_err(|source| StartError::Discovery { server, source })?;
            tracing::info!(%ip, "public address discovered");
            public_ips = vec![ip];
        }
        let transport = MediaTransport::bind(
            &TransportSettings {
                ips: udp_ips.clone(),
                udp_port: config.udp_port,
                port_range: config.port_range.clone(),
                public_ips: public_ips.clone(),
            },
            metrics.clone(),
        )?;
        match &config.port_range {
            Some(range) => tracing::info!(
                ips = ?udp_ips, public = ?public_ips, ports = ?range, "media: one UDP port per connection"
            ),
            None => tracing::info!(
                addrs = ?transport.shared_addrs(), public = ?public_ips, "media: one shared UDP port"
            ),
        }
        let media = MediaContext {
            peer_options: PeerOptions {
                udp_ips,
                // The server's own connections never use TURN or STUN: they would all share
                // one relayed 5-tuple, and the shared socket only accepts clients' checks.
                ice_servers: Vec::new(),
                ..PeerOptions::default()
            },
            transport,
            metrics: metrics.clone(),
        };
        Ok(App {
            connection_limit: ConnectionLimit::new(config.max_connections_per_ip),
            config: Arc::new(config),
            registry,
            metrics,
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            media,
        })
    }

    /// The `iceServers` a member gets in `joined`: STUN as configured, TURN with credentials
    /// minted for this member.
    pub fn ice_servers(&self, member: &MemberId) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.config.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.config.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let (false, Some(secret)) = (self.config.turn_urls.is_empty(), &self.config.turn_secret)
        {
            let c = turn::credentials(
                secret.expose(),
                &member.to_string(),
                self.config.turn_ttl,
                SystemTime::now(),
            );
            servers.push(IceServer {
                urls: self.config.turn_urls.clone(),
                username: Some(c.username),
                credential: Some(c.password),
            });
        }
        servers
    }
}

/// `stun:host:port` (RFC 7064) → `host:port`, with the default port when none is given.
fn stun_host_port(url: &str) -> String {
    let rest = url
        .strip_prefix("stuns:")
        .or_else(|| url.strip_prefix("stun:"))
        .unwrap_or(url);
    let rest = rest.split('?').next().unwrap_or(rest);
    let has_port = match rest.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        rest.to_string()
    } else {
        format!("{rest}:3478")
    }
}
