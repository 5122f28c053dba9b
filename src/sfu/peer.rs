//! Building a webrtc-rs peer connection the way Yoom needs it (a member's publish connection,
//! and the client peers of the load tool and tests), and turning its callbacks into events on a
//! channel. Subscribe connections are Yoom's own ([`crate::sfu::send_connection`]) and share
//! the ICE settings ([`setting_engine`]).
//!
//! Callbacks run on the connection's own driver task, so the handler never does work there:
//! it forwards each event to whoever owns the connection. It holds no reference to the
//! connection itself (a strong one would be a cycle that keeps the connection alive forever).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, SettingEngine, SettingEngineBuilder,
};

use crate::sfu::codecs::{media_engine_and_interceptors, MediaDirection};
use crate::sfu::transport::ConnectionTransport;
use crate::sfu::wire_stats::WireStatsConfig;

/// ICE consent: a connection without traffic is Disconnected after this long...
const ICE_DISCONNECTED_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and Failed this much later: 15 s in all, after which the member is removed.
const ICE_FAILED_TIMEOUT: Duration = Duration::from_secs(10);
const ICE_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What a peer connection reports to its owner.
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the remote side.
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
    /// A remote track started (its first RTP packet arrived).
    Track(Arc<dyn TrackRemote>),
}

/// Forwards callbacks as `(tag, event)` so one owner can serve several connections.
pub struct EventForwarder<T: Copy + Send + Sync + 'static> {
    tag: T,
    events: mpsc::UnboundedSender<(T, PeerEvent)>,
}

impl<T: Copy + Send + Sync + 'static> EventForwarder<T> {
    pub fn new(tag: T, events: mpsc::UnboundedSender<(T, PeerEvent)>) -> Arc<Self> {
        Arc::new(EventForwarder { tag, events })
    }

    fn send(&self, event: PeerEvent) {
        // The owner may be gone already while the connection closes; nothing left to tell.
        let _ = self.events.send((self.tag, event));
    }
}

#[async_trait::async_trait]
impl<T: Copy + Send + Sync + 'static> PeerConnectionEventHandler for EventForwarder<T> {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            self.send(PeerEvent::Candidate(init));
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.send(PeerEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.send(PeerEvent::State(state));
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        self.send(PeerEvent::Track(track));
    }
}

/// Where a connection binds its UDP sockets and which ICE servers it uses.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// One UDP socket (ephemeral port) per address; each yields a host candidate.
    pub udp_ips: Vec<IpAddr>,
    pub ice_servers: Vec<RTCIceServer>,
    /// Which interceptors the connection gets.
    pub direction: MediaDirection,
    /// Count what crosses the wire into the server's metrics (server connections only).
    pub wire_stats: Option<WireStatsConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no address to bind media sockets to")]
    NoAddress,
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
}

/// Builds a connection with Yoom's codecs and interceptors whose events go to `handler`. With
/// a `transport` (the server's connections) its sockets and ICE credentials come from there;
/// without one (client peers of the load tool and tests) webrtc-rs binds its own.
pub async fn build_peer_connection(
    options: &PeerOptions,
    handler: Arc<dyn PeerConnectionEventHandler>,
    transport: Option<&Arc<ConnectionTransport>>,
) -> Result<Arc<dyn PeerConnection>, PeerError> {
    if options.udp_ips.is_empty() {
        return Err(PeerError::NoAddress);
    }
    let wire_stats = options.wire_stats.as_ref().map(WireStatsConfig::build);
    let (engine, registry) = media_engine_and_interceptors(options.direction, wire_stats)?;
    let settings = setting_engine(transport);
    let udp_addrs: Vec<SocketAddr> = options
        .udp_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, 0))
        .collect();
    let mut builder = PeerConnectionBuilder::new();
    if let Some(transport) = transport {
        builder = builder.with_runtime(transport.runtime());
    }
    let pc = builder
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_ice_servers(options.ice_servers.clone())
                .build(),
        )
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .with_handler(handler)
        .with_udp_addrs(udp_addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// The ICE and mDNS settings every Yoom connection gets. With a `transport` (the server's
/// connections) the ICE credentials are pinned to the transport's.
pub fn setting_engine(transport: Option<&Arc<ConnectionTransport>>) -> SettingEngine {
    setting_engine_builder(transport).build()
}

/// [`setting_engine`] before it is built, for a connection that adds settings of its own.
pub fn setting_engine_builder(
    transport: Option<&Arc<ConnectionTransport>>,
) -> SettingEngineBuilder {
    let mut settings = SettingEngineBuilder::new();
    if let Some(transport) = transport {
        // Pinned so the shared socket can route a client's first check to this connection.
        settings = settings.with_ice_credentials(transport.ufrag.clone(), transport.pwd.clone());
    }
    settings
        // The default (query mode) binds a multicast socket per connection and fails where
        // there is no multicast; candidates from browsers with mDNS names still connect
        // through peer-reflexive pairs.
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(
            Some(ICE_DISCONNECTED_TIMEOUT),
            Some(ICE_FAILED_TIMEOUT),
            Some(ICE_KEEPALIVE_INTERVAL),
        )
        // A client's connectivity checks usually arrive before its trickled candidates, so the
        // server first knows it as peer-reflexive (behind NAT: server-reflexive). The library
        // waits 1 s (0.5 s) before nominating such a pair when it controls ICE, which is every
        // subscribe connection; a pair that passed a check is good enough to start media now.
        // Relay pairs keep their default wait so a direct path still wins when there is one.
        .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
        .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
        // Pace connectivity checks like browsers do (RFC 8445 Ta = 50 ms) rather than 200 ms:
        // checks that arrive before the other side is ready are retried sooner. The attempt
        // count keeps the same ~1.4 s window before a pair is given up.
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(28))
}

/// The addresses media binds to by default: loopback when signaling is bound to loopback,
/// otherwise every non-loopback interface address (loopback if the machine has none).
pub fn default_media_ips(signaling_bind: IpAddr) -> Vec<IpAddr> {
    if signaling_bind.is_loopback() {
        return vec![signaling_bind];
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !is_link_local(ip))
        .filter(|ip| signaling_bind.is_unspecified() || *ip == signaling_bind)
        .collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}
