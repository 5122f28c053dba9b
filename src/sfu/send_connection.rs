//! A member's subscribe connection, driven by Yoom itself over webrtc-rs' sans-IO core (`rtc`)
//! instead of through the `webrtc` crate's per-connection driver.
//!
//! Why: a subscribe connection carries one packet per forwarded packet per subscriber, the
//! server's hot path. Through the `webrtc` crate each of those packets crossed a channel, woke
//! the connection's driver task and paid a full turn of its event loop (three lock
//! acquisitions, a fresh timer, a `select!` over every source) before `rtc` encrypted it:
//! about half of the server's CPU per packet (docs/benchmarks.md). Here the track's ingress task
//! protects the packet with the connection's SRTP keys and sends the datagram itself
//! (`outbound_stream`), under a lock only that track's stream takes: `rtc`'s generic handler
//! chain (interceptors, messages moved by value through eight handlers) is off the per-packet
//! path, and `rtc` keeps ICE, DTLS, signaling and RTCP. The keys come from `srtp_keys`. The
//! driver task is left with what is not per packet: datagrams from the subscriber (ICE, DTLS,
//! RTCP; NACKs are answered from the stream's history), timers, sender reports, and signaling.
//!
//! Only what a server-side send-only connection needs is here: host candidates on the
//! connection's transport (shared UDP port or leased port), no TURN (the server is reachable
//! itself), no data channels.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::media_stream::{MediaStreamTrack, MediaStreamTrackId};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::error::{Error, Result};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, Instrument};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta};

use crate::metrics::Metrics;
use crate::sfu::codecs::{media_engine_and_interceptors, MediaDirection};
use crate::sfu::egress::PacketSink;
use crate::sfu::member::Role;
use crate::sfu::outbound_stream::{send_datagram, OutboundStream, Route};
use crate::sfu::peer::{setting_engine_builder, PeerError, PeerEvent, PeerOptions};
use crate::sfu::srtp_keys::{capturable_profiles, KeyCapture};
use crate::sfu::track::{KeyframeReason, PublishedTrack};
use crate::sfu::transport::ConnectionTransport;

/// Largest datagram read from a subscriber (RTCP, STUN and DTLS are far smaller).
const RECV_BUF_BYTES: usize = 2048;
/// Least time between two timeouts handled.
const MIN_TIMEOUT_INTERVAL: Duration = Duration::from_millis(1);
/// Least time between two timeouts handled once the connection is up. Then `rtc`'s only timer
/// is ICE's 200 ms tick, which sends a keepalive every 2 s and notices 5 s of silence; handled
/// together with the sender reports it costs one wake-up per connection per second instead of
/// six, and delays a keepalive or the Disconnected state by at most this. While connecting or
/// Disconnected, ICE keeps its own pace.
const CONNECTED_TIMER_GRAIN: Duration = REPORT_INTERVAL;
/// How long the driver sleeps when `rtc` has no timer at all.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// Longest a selected-pair change that came without any event goes unnoticed.
const ROUTE_RECHECK: Duration = Duration::from_secs(5);
/// Between two sender reports on a stream (as `rtc`'s sender-report interceptor).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// One subscribe connection. Dropping it closes the connection.
pub struct SendConnection {
    shared: Arc<Shared>,
}

struct Shared {
    core: Mutex<Core>,
    /// Wakes the driver: signaling changed something, or the connection is closing.
    wake: Notify,
    /// Local address, socket, and the kernel socket's descriptor for batched sends.
    sockets: Vec<(SocketAddr, Arc<dyn AsyncUdpSocket>, RawFd)>,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

struct Core {
    pc: RTCPeerConnection,
    outbound: HashMap<MediaStreamTrackId, Outbound>,
    capture: Arc<KeyCapture>,
    /// Where media goes, once ICE has a nominated pair and DTLS gave the keys. Every outbound
    /// stream holds it, so the per-packet path reads nothing of the connection's.
    route: Option<Arc<Route>>,
    /// (local, remote) of `route`.
    route_addrs: Option<(SocketAddr, SocketAddr)>,
    next_report: Instant,
    /// When the route is next checked against `rtc`'s selected pair without an event.
    next_route_check: Instant,
    /// The connection state is Connected.
    connected: bool,
}

struct Outbound {
    stream: Arc<OutboundStream>,
    /// Whose keyframe a subscriber's PLI/FIR about this track asks for.
    source: Weak<PublishedTrack>,
    ssrc: u32,
}

impl SendConnection {
    /// Builds the connection on `transport`'s sockets and starts its driver, which reports
    /// state changes to `events` as `Role::Subscribe`.
    pub fn open(
        options: &PeerOptions,
        transport: &Arc<ConnectionTransport>,
        events: mpsc::UnboundedSender<(Role, PeerEvent)>,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<SendConnection, PeerError> {
        if options.udp_ips.is_empty() {
            return Err(PeerError::NoAddress);
        }
        let wire_stats = options.wire_stats.as_ref().map(|w| w.build());
        let (engine, registry) =
            media_engine_and_interceptors(MediaDirection::SendOnly, wire_stats)?;
        let capture = KeyCapture::new().map_err(|e| Error::Other(format!("crypto: {e}")))?;
        let settings = setting_engine_builder(Some(transport))
            .with_crypto_provider(capture.clone())
            .with_srtp_protection_profiles(capturable_profiles())
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings)
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        let mut sockets = Vec::new();
        for ip in &options.udp_ips {
            let (socket, fd) = transport
                .open_socket(*ip)
                .map_err(|e| Error::Other(format!("media socket on {ip}: {e}")))?;
            let local = socket
                .local_addr()
                .map_err(|e| Error::Other(format!("media socket on {ip}: {e}")))?;
            pc.add_local_candidate(host_candidate(local)?)?;
            sockets.push((local, socket, fd));
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                pc,
                outbound: HashMap::new(),
                capture,
                route: None,
                route_addrs: None,
                next_report: Instant::now() + REPORT_INTERVAL,
                next_route_check: Instant::now(),
                connected: false,
            }),
            wake: Notify::new(),
            sockets,
            closed: AtomicBool::new(false),
            metrics,
        });
        tokio::spawn(drive(shared.clone(), events).in_current_span());
        Ok(SendConnection { shared })
    }

    /// Adds `track` (sent on the SSRC of its one encoding); a PLI/FIR about it asks `source`
    /// for a keyframe.
    pub fn add_track(
        &self,
        track: MediaStreamTrack,
        source: Weak<PublishedTrack>,
    ) -> Result<RTCRtpSenderId> {
        let mut core = self.shared.lock();
        let track_id = track.track_id().clone();
        let kind = track.kind();
        let ssrc = track
            .ssrcs()
            .next()
            .ok_or_else(|| Error::Other("a track to send needs an SSRC".into()))?;
        let sender = core.pc.add_track(track)?;
        let stream = OutboundStream::new(sender, kind == RtpCodecKind::Video);
        if !self.shared.closed.load(Ordering::Acquire) {
            stream.set_route(core.route.clone());
        }
        core.outbound.insert(
            track_id,
            Outbound {
                stream,
                source,
                ssrc,
            },
        );
        Ok(sender)
    }

    pub fn remove_track(&self, sender: RTCRtpSenderId) -> Result<()> {
        let mut core = self.shared.lock();
        if let Some(s) = core.pc.rtp_sender(sender) {
            let id = s.track().track_id().clone();
            // The egress may still hold the sink for a moment: it sends nothing more.
            if let Some(outbound) = core.outbound.remove(&id) {
                outbound.stream.set_route(None);
            }
        }
        let result = core.pc.remove_track(sender);
        drop(core);
        self.shared.wake.notify_one();
        result
    }

    /// Creates an offer, applies it locally and returns the local description.
    pub fn offer(&self) -> Result<RTCSessionDescription> {
        let mut core = self.shared.lock();
        let offer = core.pc.create_offer(None)?;
        core.pc.set_local_description(Instant::now(), offer)?;
        let local = core
            .pc
            .local_description()
            .ok_or_else(|| Error::Other("no local description after applying the offer".into()));
        drop(core);
        self.shared.wake.notify_one();
        local
    }

    pub fn pending_local_description(&self) -> Option<RTCSessionDescription> {
        self.shared.lock().pc.pending_local_description()
    }

    pub fn set_remote_description(&self, answer: RTCSessionDescription) -> Result<()> {
        let result = self
            .shared
            .lock()
            .pc
            .set_remote_description(Instant::now(), answer);
        self.shared.wake.notify_one();
        result
    }

    pub fn add_ice_candidate(&self, candidate: RTCIceCandidateInit) -> Result<()> {
        let result = self.shared.lock().pc.add_remote_candidate(candidate);
        self.shared.wake.notify_one();
        result
    }

    /// The codecs negotiated for `sender`, in the subscriber's order of preference.
    pub fn send_codecs(&self, sender: RTCRtpSenderId) -> Option<Vec<RTCRtpCodecParameters>> {
        let mut core = self.shared.lock();
        let mut s = core.pc.rtp_sender(sender)?;
        Some(s.get_parameters().rtp_parameters.codecs.clone())
    }

    /// Where an egress hands `sender`'s packets; `None` if `sender` is not one of this
    /// connection's tracks.
    pub fn sink(&self, sender: RTCRtpSenderId) -> Option<Arc<dyn PacketSink>> {
        let core = self.shared.lock();
        let stream = core
            .outbound
            .values()
            .find(|o| o.stream.sender() == sender)?
            .stream
            .clone();
        Some(stream)
    }

    /// Closes the connection (the driver sends what closing produces, e.g. DTLS close_notify,
    /// and stops).
    pub fn close(&self) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            let mut core = self.shared.lock();
            for outbound in core.outbound.values() {
                outbound.stream.set_route(None);
            }
            if let Err(e) = core.pc.close() {
                debug!(error = %e, "closing the subscribe connection");
            }
            drop(core);
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for SendConnection {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves `rtc`'s state as it was mid-call; it is still
        // the best there is, and the connection is torn down soon after either way.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket bound to `local` (the first one if none is).
    fn socket_for(&self, local: SocketAddr) -> Option<(&Arc<dyn AsyncUdpSocket>, RawFd)> {
        self.sockets
            .iter()
            .find(|(addr, ..)| *addr == local)
            .or_else(|| self.sockets.first())
            .map(|(_, socket, fd)| (socket, *fd))
    }

    /// Sends every datagram `rtc` has ready. Never waits (NACK or the next keyframe repairs
    /// media a full socket dropped).
    fn flush_writes(&self, pc: &mut RTCPeerConnection) {
        while let Some(datagram) = pc.poll_write() {
            let Some((socket, _)) = self.socket_for(datagram.transport.local_addr) else {
                return;
            };
            send_datagram(
                socket.as_ref(),
                datagram.transport.peer_addr,
                &datagram.message,
                &self.metrics,
            );
        }
    }
}

/// Everything `rtc` has for the application after a step: datagrams to send, state changes,
/// the subscriber's keyframe requests. Returns when `rtc` next wants a timeout.
fn after_step(
    shared: &Shared,
    core: &mut Core,
    events: &mpsc::UnboundedSender<(Role, PeerEvent)>,
) -> Option<Instant> {
    let mut states = Vec::new();
    let mut any_event = false;
    while let Some(event) = core.pc.poll_event() {
        any_event = true;
        if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
            states.push(state);
        }
    }
    let now = Instant::now();
    // Asking `rtc` for the selected pair builds both candidates anew (strings, a parse): on every
    // step it was a tenth of the subscribe drivers' time in a large room. `rtc` selects a pair
    // together with an ICE state change, which comes as an event; the periodic look is for a
    // change that would come without one.
    if core.route_addrs.is_none() || any_event || now >= core.next_route_check {
        update_route(shared, core);
        core.next_route_check = now + ROUTE_RECHECK;
    }
    // After the route: media may flow once "connected" is out.
    for state in states {
        core.connected = state == RTCPeerConnectionState::Connected;
        let _ = events.send((Role::Subscribe, PeerEvent::State(state)));
    }
    while let Some(TaggedRTCMessage { message, .. }) = core.pc.poll_read() {
        let RTCMessage::RtcpPacket(track_id, packets) = message else {
            continue;
        };
        let Some(outbound) = core.outbound.get(&track_id) else {
            continue;
        };
        let mut wants_keyframe = false;
        for p in &packets {
            let any = p.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                outbound.stream.retransmit(nack, &shared.metrics);
            } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                wants_keyframe = true;
            }
        }
        if wants_keyframe {
            shared.metrics.keyframe_requests_in_total.inc();
            if let Some(source) = outbound.source.upgrade() {
                source.request_keyframe(KeyframeReason::Repair);
            }
        }
    }
    if now >= core.next_report {
        send_reports(core, now);
        // Keeping the phase keeps the reports on the same wake-ups as the coalesced timers.
        core.next_report += REPORT_INTERVAL;
        if core.next_report <= now {
            core.next_report = now + REPORT_INTERVAL;
        }
    }
    // Last, so it also sends what draining the reads queued (STUN responses, DTLS, RTCP).
    shared.flush_writes(&mut core.pc);
    let report = (!core.outbound.is_empty()).then_some(core.next_report);
    match (core.pc.poll_timeout(), report) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Publishes where media goes once ICE has nominated a pair and DTLS has given the keys, and
/// again whenever ICE moves to another pair.
fn update_route(shared: &Shared, core: &mut Core) {
    let Some(sender) = core.outbound.values().next().map(|o| o.stream.sender()) else {
        return;
    };
    let pair = core
        .pc
        .rtp_sender(sender)
        .and_then(|s| s.transport()?.ice_transport().get_selected_candidate_pair());
    let Some(pair) = pair else {
        return;
    };
    let address = |c: &RTCIceCandidate| {
        c.address
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, c.port))
    };
    let (Some(local), Some(remote)) = (address(pair.local()), address(pair.remote())) else {
        return;
    };
    if core.route_addrs == Some((local, remote)) {
        return;
    }
    let (Some((socket, fd)), Some(keys)) = (shared.socket_for(local), core.capture.local_keys())
    else {
        return;
    };
    core.route_addrs = Some((local, remote));
    let route = Arc::new(Route {
        keys,
        socket: socket.clone(),
        fd: Some(fd),
        ipv6_socket: local.is_ipv6(),
        peer: remote,
    });
    debug!(%local, %remote, "media route");
    if !shared.closed.load(Ordering::Acquire) {
        for outbound in core.outbound.values() {
            outbound.stream.set_route(Some(route.clone()));
        }
    }
    core.route = Some(route);
}

/// A sender report for every stream that has sent something, through `rtc` (which protects
/// RTCP with its own context, and whose wire statistics note it for round-trip times).
fn send_reports(core: &mut Core, now: Instant) {
    let Core { pc, outbound, .. } = core;
    for Outbound { stream, ssrc, .. } in outbound.values() {
        let Some(payload_type) = stream.payload_type() else {
            continue;
        };
        let Some(mut s) = pc.rtp_sender(stream.sender()) else {
            continue;
        };
        let clock_rate = s
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.payload_type == payload_type)
            .map(|c| c.rtp_codec.clock_rate);
        let Some(report) = clock_rate.and_then(|rate| stream.sender_report(*ssrc, rate, now))
        else {
            continue;
        };
        if let Err(e) = s.write_rtcp(now, vec![Box::new(report)]) {
            debug!(error = %e, "sender report");
        }
    }
}

/// The connection's driver: datagrams from the subscriber, timers and signaling changes.
async fn drive(shared: Arc<Shared>, events: mpsc::UnboundedSender<(Role, PeerEvent)>) {
    // Counted, so a driver that outlives its member shows in `yoom_media_tasks`.
    let _task = shared.metrics.task_guard();
    let mut bufs: Vec<Vec<u8>> = shared
        .sockets
        .iter()
        .map(|_| vec![0u8; RECV_BUF_BYTES])
        .collect();
    let sleep = tokio::time::sleep(IDLE_WAIT);
    tokio::pin!(sleep);
    let mut last_timeout: Option<Instant> = None;
    loop {
        let (deadline, connected) = {
            let mut core = shared.lock();
            let deadline = after_step(&shared, &mut core, &events);
            if shared.closed.load(Ordering::Acquire) {
                break;
            }
            (deadline, core.connected)
        };
        let mut deadline = deadline.unwrap_or_else(|| Instant::now() + IDLE_WAIT);
        if let Some(last) = last_timeout {
            // A timer source that keeps reporting a deadline already past (webrtc-rs#862)
            // would spin this loop; protocol timers are millisecond-grained, so waiting out
            // the millisecond loses nothing and keeps sockets and signaling served.
            let grain = if connected {
                CONNECTED_TIMER_GRAIN
            } else {
                MIN_TIMEOUT_INTERVAL
            };
            deadline = deadline.max(last + grain);
        }
        sleep
            .as_mut()
            .reset(tokio::time::Instant::from_std(deadline));
        tokio::select! {
            () = shared.wake.notified() => {}
            () = &mut sleep => {
                let now = Instant::now();
                last_timeout = Some(now);
                let mut core = shared.lock();
                if let Err(e) = core.pc.handle_timeout(now) {
                    debug!(error = %e, "subscribe connection timeout handling");
                }
            }
            received = recv_any(&shared.sockets, &mut bufs) => match received {
                Ok((index, n, stride, from)) => {
                    let (local, ..) = shared.sockets[index];
                    let now = Instant::now();
                    let mut core = shared.lock();
                    for datagram in bufs[index][..n].chunks(stride.max(1)) {
                        let message = TaggedBytesMut {
                            now,
                            transport: TransportContext {
                                local_addr: local,
                                peer_addr: from,
                                transport_protocol: TransportProtocol::UDP,
                                ecn: None,
                            },
                            message: BytesMut::from(datagram),
                        };
                        if let Err(e) = core.pc.handle_read(message) {
                            // A bad datagram from the network is the sender's problem.
                            debug!(error = %e, %from, "datagram refused");
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "subscribe connection's socket stopped");
                    break;
                }
            },
        }
    }
}

/// The next datagram (or GRO run of them) from any of the connection's sockets: which socket,
/// its length, its segment size, and where it came from.
async fn recv_any(
    sockets: &[(SocketAddr, Arc<dyn AsyncUdpSocket>, RawFd)],
    bufs: &mut [Vec<u8>],
) -> std::io::Result<(usize, usize, usize, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for (index, ((_, socket, _), buf)) in sockets.iter().zip(bufs.iter_mut()).enumerate() {
            let mut meta = [RecvMeta::default()];
            let mut slices = [IoSliceMut::new(buf)];
            match socket.poll_recv(cx, &mut slices, &mut meta) {
                Poll::Ready(Ok(0)) | Poll::Pending => {}
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Ok((index, meta[0].len, meta[0].stride, meta[0].addr)))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Pending
    })
    .await
}

/// A UDP host candidate for `addr`.
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    RTCIceCandidate::from(&candidate).to_json()
}
