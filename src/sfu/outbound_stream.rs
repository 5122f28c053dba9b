//! One forwarded track on one subscribe connection: its packets protected with the
//! connection's SRTP keys by the track's ingress task, into the batch that task sends once
//! every subscriber has the packet ([`crate::sfu::send_batch`]), a history to answer the
//! subscriber's NACKs from, and the counters its sender reports carry.
//!
//! This is the per-packet, per-subscriber path, so it takes only this stream's lock, touches
//! only this stream's state, and allocates nothing: the packet is marshalled and protected in
//! place in the batch's buffer ([`crate::sfu::srtp_sender`]).

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::shared::marshal::{Marshal, MarshalSize};
use tracing::debug;
use webrtc::runtime::{AsyncUdpSocket, Transmit};

use crate::metrics::Metrics;
use crate::sfu::egress::{PacketSink, SinkWrite};
use crate::sfu::prefetch::prefetch;
use crate::sfu::send_batch::SendBatch;
use crate::sfu::srtp_keys::SrtpKeys;
use crate::sfu::srtp_sender::{SrtpSender, MAX_TAG_LEN};

/// Packets kept per video stream for retransmission, as many as `rtc`'s NACK responder kept
/// (about 6 s of 1.5 Mbit/s video). They share their payloads with every other subscriber's
/// copy. Audio is not NACKed (only video offers "nack"), so it keeps none.
const HISTORY: usize = 1024;

/// Where a connection's media goes: the nominated pair and the keys from its handshake.
pub struct Route {
    pub keys: SrtpKeys,
    pub socket: Arc<dyn AsyncUdpSocket>,
    /// The kernel socket under `socket`, if it is one (it stays open while `socket` lives).
    pub fd: Option<RawFd>,
    /// `socket` is an IPv6 one (it reaches IPv4 peers at IPv4-mapped addresses).
    pub ipv6_socket: bool,
    pub peer: SocketAddr,
}

/// Why a packet did not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// No nominated pair or no keys yet, or the connection closed.
    NoRoute,
    /// Marshalling or protection failed (a bug or a packet `rtc` could not have sent either).
    Protect,
}

pub struct OutboundStream {
    sender: RTCRtpSenderId,
    state: Mutex<StreamState>,
}

struct StreamState {
    route: Option<Arc<Route>>,
    srtp: Option<SrtpSender>,
    /// Where a retransmission is marshalled and protected, reused.
    scratch: Vec<u8>,
    history: Vec<Option<rtp::Packet>>,
    report: ReportCounters,
}

/// What a sender report says (RFC 3550 §6.4.1), kept as `rtc`'s sender-report interceptor
/// keeps it so reports read the same.
#[derive(Default)]
struct ReportCounters {
    started: bool,
    packets: u32,
    /// Payload octets.
    octets: u32,
    last_sequence: u16,
    last_timestamp: u32,
    last_timestamp_at: Option<Instant>,
    payload_type: u8,
}

impl OutboundStream {
    pub fn new(sender: RTCRtpSenderId, keeps_history: bool) -> Arc<OutboundStream> {
        Arc::new(OutboundStream {
            sender,
            state: Mutex::new(StreamState {
                route: None,
                srtp: None,
                scratch: Vec::new(),
                history: if keeps_history {
                    (0..HISTORY).map(|_| None).collect()
                } else {
                    Vec::new()
                },
                report: ReportCounters::default(),
            }),
        })
    }

    pub fn sender(&self) -> RTCRtpSenderId {
        self.sender
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where packets go from now on (set by the connection's driver; `None` stops sending).
    /// The SRTP state is kept across a new pair with the same keys: its rollover counter must
    /// go on.
    pub fn set_route(&self, route: Option<Arc<Route>>) {
        let mut state = self.lock();
        if let Some(new) = &route {
            let same_keys = state.route.as_ref().is_some_and(|r| r.keys.same(&new.keys));
            if state.srtp.is_none() || !same_keys {
                state.srtp = match new.keys.sender() {
                    Ok(sender) => Some(sender),
                    Err(e) => {
                        debug!(error = %e, "SRTP sender");
                        None
                    }
                };
            }
        }
        state.route = route;
    }

    /// Protects `packet` for the connection's route into `batch` (which sends it), then keeps
    /// it for retransmission.
    pub fn send(
        &self,
        packet: rtp::Packet,
        batch: &mut SendBatch,
        metrics: &Metrics,
    ) -> Result<(), SendFailure> {
        let mut state = self.lock();
        let StreamState {
            route,
            srtp,
            history,
            report,
            ..
        } = &mut *state;
        let Some(route) = route.as_deref() else {
            return Err(SendFailure::NoRoute);
        };
        let slot = usize::from(packet.header.sequence_number) % HISTORY;
        // These are most likely out of the cache since this stream's last packet; they load
        // while the packet is marshalled (and, but for the keys, encrypted).
        prefetch(route, 2);
        if let Some(slot) = history.get(slot) {
            prefetch(slot, 2);
        }
        if let Some(srtp) = srtp {
            srtp.prefetch();
        }
        let room = batch.next_datagram(packet.marshal_size() + MAX_TAG_LEN);
        let (len, size) = protect(srtp.as_mut(), &packet, room)?;
        batch.commit(route, len);
        metrics.wire.packets_out.inc();
        metrics.wire.bytes_out.inc_by(size as u64);
        report.count(&packet);
        if let Some(slot) = history.get_mut(slot) {
            *slot = Some(packet);
        }
        Ok(())
    }

    /// Sends again what `nack` lists and the history still has.
    pub fn retransmit(&self, nack: &TransportLayerNack, metrics: &Metrics) {
        let mut state = self.lock();
        let StreamState {
            route,
            srtp,
            scratch,
            history,
            ..
        } = &mut *state;
        let Some(route) = route.as_ref() else {
            return;
        };
        if history.is_empty() {
            return;
        }
        for pair in &nack.nacks {
            for sequence in pair.packet_list() {
                let Some(packet) = history[usize::from(sequence) % HISTORY]
                    .as_ref()
                    .filter(|p| p.header.sequence_number == sequence)
                else {
                    continue;
                };
                scratch.resize(packet.marshal_size() + MAX_TAG_LEN, 0);
                if let Ok((len, size)) = protect(srtp.as_mut(), packet, scratch) {
                    send_datagram(route.socket.as_ref(), route.peer, &scratch[..len], metrics);
                    metrics.wire.packets_out_retransmit.inc();
                    metrics.wire.bytes_out_retransmit.inc_by(size as u64);
                }
            }
        }
    }

    /// The payload type of the last packet sent, if any was.
    pub fn payload_type(&self) -> Option<u8> {
        let state = self.lock();
        state.report.started.then_some(state.report.payload_type)
    }

    /// A sender report as of `now`, once a packet was sent.
    pub fn sender_report(&self, ssrc: u32, clock_rate: u32, now: Instant) -> Option<SenderReport> {
        let state = self.lock();
        let r = &state.report;
        let at = r.last_timestamp_at?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: ntp_now(),
            rtp_time: r
                .last_timestamp
                .wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: r.packets,
            octet_count: r.octets,
            ..Default::default()
        })
    }
}

/// An egress hands its packets straight to the stream: no object between them, which would be
/// one more cache miss per packet per subscriber.
impl PacketSink for OutboundStream {
    fn try_write(
        &self,
        packet: rtp::Packet,
        batch: &mut SendBatch,
        metrics: &Metrics,
    ) -> SinkWrite {
        match self.send(packet, batch, metrics) {
            Ok(()) => SinkWrite::Written,
            // No route yet (the egress only forwards once the connection is up), the
            // connection closed, or a packet that cannot be protected.
            Err(SendFailure::NoRoute | SendFailure::Protect) => SinkWrite::Closed,
        }
    }
}

/// Marshals one packet into `out` (which has room for it and [`MAX_TAG_LEN`] more) and
/// protects it there with `srtp`; returns the datagram's length and the packet's before
/// protection. A datagram the socket then cannot take is already in the history: a NACK
/// repairs it.
fn protect(
    srtp: Option<&mut SrtpSender>,
    packet: &rtp::Packet,
    out: &mut [u8],
) -> Result<(usize, usize), SendFailure> {
    let Some(srtp) = srtp else {
        return Err(SendFailure::Protect);
    };
    let written = packet.marshal_to(out).map_err(|_| SendFailure::Protect)?;
    let protected = srtp
        .protect(out, written, packet.header.marshal_size())
        .map_err(|e| {
            debug!(error = %e, "SRTP protection");
            SendFailure::Protect
        })?;
    Ok((protected, written))
}

/// Sends one datagram to a subscriber without waiting: one the socket cannot take now is
/// dropped and counted (UDP semantics).
pub(crate) fn send_datagram(
    socket: &dyn AsyncUdpSocket,
    destination: SocketAddr,
    contents: &[u8],
    metrics: &Metrics,
) {
    let transmit = Transmit {
        destination,
        ecn: None,
        contents,
        segment_size: None,
        src_ip: None,
    };
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    match socket.poll_send(&mut cx, &transmit) {
        Poll::Ready(Ok(_)) => {}
        Poll::Ready(Err(e)) => debug!(error = %e, "send to subscriber failed"),
        Poll::Pending => metrics
            .udp_mux_drops
            .with_label_values(&["send_buffer_full"])
            .inc(),
    }
}

impl ReportCounters {
    fn count(&mut self, packet: &rtp::Packet) {
        let h = &packet.header;
        let in_order = !self.started || {
            let diff = h.sequence_number.wrapping_sub(self.last_sequence);
            diff > 0 && diff < 1 << 15
        };
        if in_order {
            self.started = true;
            self.last_sequence = h.sequence_number;
            self.payload_type = h.payload_type;
            if self.last_timestamp_at.is_none() || h.timestamp != self.last_timestamp {
                self.last_timestamp = h.timestamp;
                self.last_timestamp_at = Some(Instant::now());
            }
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self
            .octets
            .wrapping_add(u32::try_from(packet.payload.len()).unwrap_or(u32::MAX));
    }
}

/// The wall clock as a 64-bit NTP timestamp (RFC 3550 §4).
fn ntp_now() -> u64 {
    const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET_SECS;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn packet(sequence: u16, timestamp: u32, payload: &'static [u8]) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: sequence,
                timestamp,
                ..Default::default()
            },
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn sender_reports_count_payload_octets_and_run_the_rtp_clock_on() {
        let stream = OutboundStream::new(RTCRtpSenderId::default(), true);
        assert!(stream.payload_type().is_none());
        assert!(stream.sender_report(7, 90_000, Instant::now()).is_none());
        {
            let mut state = stream.lock();
            state.report.count(&packet(10, 3_000, b"abcd"));
            state.report.count(&packet(11, 3_000, b"efghij"));
            // A late packet counts but moves nothing back.
            state.report.count(&packet(9, 0, b"kl"));
        }
        let at = stream.lock().report.last_timestamp_at.unwrap();
        let report = stream
            .sender_report(7, 90_000, at + Duration::from_millis(100))
            .unwrap();
        assert_eq!(report.ssrc, 7);
        assert_eq!(report.packet_count, 3);
        assert_eq!(report.octet_count, 12);
        // 100 ms at 90 kHz after the last timestamp.
        assert_eq!(report.rtp_time, 3_000 + 9_000);
        assert_eq!(stream.payload_type(), Some(96));
        // NTP seconds since 1900: after 2020 (3,786,825,600 s).
        assert!(report.ntp_time >> 32 > 3_786_825_600);
    }

    #[test]
    fn nothing_is_sent_or_kept_without_a_route() {
        let stream = OutboundStream::new(RTCRtpSenderId::default(), true);
        let metrics = Metrics::new();
        assert_eq!(
            stream.send(packet(1, 0, b"x"), &mut SendBatch::new(), &metrics),
            Err(SendFailure::NoRoute)
        );
        assert_eq!(metrics.wire.packets_out.get(), 0);
        assert!(stream.lock().history.iter().all(Option::is_none));
        assert!(stream.payload_type().is_none());
    }
}
