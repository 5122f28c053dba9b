//! Where media packets enter and leave: which UDP sockets peer connections use and which
//! addresses clients are told to send to. webrtc-rs 0.21 binds one ephemeral socket per
//! connection and announces the bound address; Yoom instead gives every connection either a
//! registration on one shared port per media address ([`udp_mux`], the default: `rtc.udp_port`)
//! or a port leased from `rtc.port_range` ([`port_pool`]), and announces that port — on the
//! public address when `rtc.public_ips` says the host sits behind a 1:1 NAT.
//!
//! The hook is a per-connection [`runtime::ConnectionRuntime`] whose `wrap_udp_socket` swaps
//! the socket the driver bound for the real one, and pinned ICE credentials so the mux can
//! route a client's first connectivity check by ufrag.

pub mod candidates;
pub mod port_pool;
pub mod runtime;
pub mod stun;
pub mod udp_mux;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use webrtc::runtime::{AsyncUdpSocket, Runtime, TokioRuntime};

use crate::metrics::Metrics;
use port_pool::{LeasedSocket, PortLease, PortPool, PortsExhausted};
use udp_mux::UdpMux;

/// How the server's media sockets are laid out (from `rtc.*` settings).
#[derive(Debug, Clone, Default)]
pub struct TransportSettings {
    /// Addresses media binds to; each yields one host candidate per connection.
    pub ips: Vec<IpAddr>,
    /// The one UDP port every connection shares (0: an ephemeral port, picked once).
    pub udp_port: u16,
    /// Instead of sharing a port, lease each connection its own port from this range.
    pub port_range: Option<RangeInclusive<u16>>,
    /// Announced instead of `ips` (one for all, or one per entry of `ips`).
    pub public_ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind media UDP socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("no media address to bind")]
    NoAddress,
    #[error(
        "{public} public addresses for {bound} media addresses: give one, or one per media address"
    )]
    PublicIpCount { public: usize, bound: usize },
}

enum Mode {
    Mux(HashMap<IpAddr, UdpMux>),
    PortRange(Arc<PortPool>),
}

/// The server-wide media transport: built once at start-up.
pub struct MediaTransport {
    ips: Vec<IpAddr>,
    announce: HashMap<IpAddr, IpAddr>,
    mode: Mode,
}

impl MediaTransport {
    /// Binds the shared sockets (mux mode) or prepares the port pool. Must run inside tokio.
    pub fn bind(
        settings: &TransportSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<MediaTransport>, TransportError> {
        if settings.ips.is_empty() {
            return Err(TransportError::NoAddress);
        }
        let announce: HashMap<IpAddr, IpAddr> = match settings.public_ips.len() {
            0 => settings.ips.iter().map(|ip| (*ip, *ip)).collect(),
            1 => settings
                .ips
                .iter()
                .map(|ip| (*ip, settings.public_ips[0]))
                .collect(),
            n if n == settings.ips.len() => settings
                .ips
                .iter()
                .copied()
                .zip(settings.public_ips.iter().copied())
                .collect(),
            n => {
                return Err(TransportError::PublicIpCount {
                    public: n,
                    bound: settings.ips.len(),
                })
            }
        };
        let mode = match &settings.port_range {
            Some(range) => {
                // Nothing binds until the first member arrives: check the addresses now.
                for ip in &settings.ips {
                    let addr = SocketAddr::new(*ip, 0);
                    std::net::UdpSocket::bind(addr)
                        .map_err(|source| TransportError::Bind { addr, source })?;
                }
                Mode::PortRange(PortPool::new(range.clone(), &settings.ips))
            }
            None => {
                let mut muxes = HashMap::new();
                for ip in &settings.ips {
                    let addr = SocketAddr::new(*ip, settings.udp_port);
                    let mux = UdpMux::bind(addr, metrics.clone())
                        .map_err(|source| TransportError::Bind { addr, source })?;
                    muxes.insert(*ip, mux);
                }
                Mode::Mux(muxes)
            }
        };
        Ok(Arc::new(MediaTransport {
            ips: settings.ips.clone(),
            announce,
            mode,
        }))
    }

    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// The shared sockets' addresses (empty in port-range mode).
    pub fn shared_addrs(&self) -> Vec<SocketAddr> {
        match &self.mode {
            Mode::Mux(muxes) => {
                let mut addrs: Vec<SocketAddr> = muxes.values().map(UdpMux::local_addr).collect();
                addrs.sort();
                addrs
            }
            Mode::PortRange(_) => Vec::new(),
        }
    }

    /// Everything one new peer connection needs. In port-range mode its ports are leased
    /// now, so running out is an error the member sees at once.
    pub fn connection(self: &Arc<Self>) -> Result<Arc<ConnectionTransport>, PortsExhausted> {
        let mut prebound = HashMap::new();
        if let Mode::PortRange(pool) = &self.mode {
            for ip in &self.ips {
                prebound.insert(*ip, pool.bind(*ip)?);
            }
        }
        let mut rng = rand::rng();
        Ok(Arc::new(ConnectionTransport {
            ufrag: Alphanumeric.sample_string(&mut rng, 16),
            pwd: Alphanumeric.sample_string(&mut rng, 32),
            media: self.clone(),
            prebound: Mutex::new(prebound),
            announcements: Mutex::new(Vec::new()),
        }))
    }
}

/// One peer connection's transport: its pinned ICE credentials, its sockets, and the
/// addresses to announce for them.
pub struct ConnectionTransport {
    pub ufrag: String,
    pub pwd: String,
    media: Arc<MediaTransport>,
    prebound: Mutex<HashMap<IpAddr, (std::net::UdpSocket, PortLease)>>,
    /// `(address webrtc-rs reports, address announced)` for each socket handed out.
    announcements: Mutex<Vec<(SocketAddr, SocketAddr)>>,
}

impl std::fmt::Debug for ConnectionTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTransport")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

impl ConnectionTransport {
    /// The runtime to build this connection with.
    pub fn runtime(self: &Arc<Self>) -> Arc<dyn Runtime> {
        Arc::new(runtime::ConnectionRuntime {
            transport: self.clone(),
        })
    }

    /// This connection's socket on media address `ip`, for a connection Yoom drives itself
    /// ([`crate::sfu::send_connection`]). It reports a local address of its own, which
    /// [`Self::announce_sdp`] rewrites to the announced one, as for webrtc-rs' connections.
    /// Also returns the descriptor of the kernel socket underneath, valid while the socket
    /// lives, for sending many datagrams in one call ([`crate::sfu::send_batch`]).
    pub fn open_socket(&self, ip: IpAddr) -> io::Result<(Arc<dyn AsyncUdpSocket>, RawFd)> {
        self.wrap_with_fd(std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?)
    }

    /// Replaces the socket the driver bound (`throwaway`) with this connection's real one.
    fn wrap(&self, throwaway: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        self.wrap_with_fd(throwaway).map(|(socket, _)| socket)
    }

    fn wrap_with_fd(
        &self,
        throwaway: std::net::UdpSocket,
    ) -> io::Result<(Arc<dyn AsyncUdpSocket>, RawFd)> {
        let reported = throwaway.local_addr()?;
        drop(throwaway);
        let ip = reported.ip();
        let announce_ip = self.media.announce.get(&ip).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{ip} is not a media address"),
            )
        })?;
        let (socket, port, fd): (Arc<dyn AsyncUdpSocket>, u16, RawFd) = match &self.media.mode {
            Mode::Mux(muxes) => {
                let mux = muxes.get(&ip).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::AddrNotAvailable, "no mux for this address")
                })?;
                (
                    Arc::new(mux.register(&self.ufrag, reported)),
                    mux.local_addr().port(),
                    mux.send_fd(),
                )
            }
            Mode::PortRange(pool) => {
                let prebound = self.prebound.lock().ok().and_then(|mut p| p.remove(&ip));
                let (socket, lease) = match prebound {
                    Some(bound) => bound,
                    // An ICE restart binds again: lease another port.
                    None => pool
                        .bind(ip)
                        .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e))?,
                };
                socket.set_nonblocking(true)?;
                let port = lease.port();
                let fd = socket.as_raw_fd();
                let inner = TokioRuntime.wrap_udp_socket(socket)?;
                (
                    Arc::new(LeasedSocket::new(inner, reported, lease)),
                    port,
                    fd,
                )
            }
        };
        if let Ok(mut announcements) = self.announcements.lock() {
            announcements.push((reported, SocketAddr::new(announce_ip, port)));
        }
        Ok((socket, fd))
    }

    fn announcements(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.announcements
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// A local candidate as the client must see it.
    pub fn announce_candidate(&self, candidate: &str) -> String {
        candidates::rewrite_candidate(candidate, &self.announcements()).into_owned()
    }

    /// A local description as the client must see it.
    pub fn announce_sdp(&self, sdp: &str) -> String {
        candidates::rewrite_sdp(sdp, &self.announcements())
    }
}

/// Asks a STUN server which address this host's packets come from (for `rtc.public_ips`
/// discovery behind a 1:1 NAT). `server` is `host:port`.
pub async fn discover_public_ip(server: &str, bind_ip: IpAddr) -> io::Result<IpAddr> {
    let target = tokio::net::lookup_host(server)
        .await?
        .find(|a| a.is_ipv4() == bind_ip.is_ipv4())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address of the right family"))?;
    let socket = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
    let transaction_id: [u8; 12] = rand::random();
    let request = stun::binding_request(transaction_id);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket.send_to(&request, target).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let (n, from) = received?;
            if from != target {
                continue;
            }
            if let Some(mapped) = stun::binding_response_address(&buf[..n], &transaction_id) {
                return Ok(mapped.ip());
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no answer from the STUN server",
    ))
}
