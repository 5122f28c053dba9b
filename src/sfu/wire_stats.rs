//! An interceptor next to the wire that counts what Yoom's connections really send and
//! receive: RTP originals and retransmissions, NACK/PLI/FIR both ways, losses and jitter from
//! receiver reports, and round-trip time from the subscriber's reports on Yoom's sender reports.
//!
//! It sits below the NACK responder, so retransmissions pass through it, and sees RTCP before
//! anything consumes it. Counting is an atomic add on counters resolved once; the per-SSRC
//! state lives in this connection's own maps (no lock, no allocation after a stream's first
//! packet).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;

use crate::metrics::{Metrics, WireCounters};

/// What one connection measured that others (the admin API) read.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Latest round-trip time in µs; 0 = not measured yet.
    rtt_us: AtomicU64,
}

impl ConnectionStats {
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

/// Which side of the SFU a connection is: it decides which way media is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A publish connection: RTP comes in, Yoom's feedback goes out.
    Publish,
    /// A subscribe connection: RTP goes out, the subscriber's feedback comes in.
    Subscribe,
}

/// Everything needed to give a connection its `WireStats` (cloneable, unlike the interceptor).
#[derive(Clone)]
pub struct WireStatsConfig {
    pub side: Side,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<ConnectionStats>,
}

impl std::fmt::Debug for WireStatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireStatsConfig")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl WireStatsConfig {
    pub fn build(&self) -> WireStats {
        WireStats::new(self.side, &self.metrics, self.shared.clone())
    }
}

/// Sender reports remembered for matching receiver reports (RFC 3550 §6.4.1).
const SENT_REPORTS_KEPT: usize = 16;

pub struct WireStats {
    side: Side,
    counters: WireCounters,
    rtt_ms: Histogram,
    jitter_us: Histogram,
    shared: Arc<ConnectionStats>,
    /// Highest extended sequence number per SSRC, to tell retransmissions from originals.
    highest_seq: HashMap<u32, i64>,
    /// Cumulative loss last reported per SSRC, to count only what is new.
    reported_lost: HashMap<u32, u32>,
    clock_rates: HashMap<u32, u32>,
    /// (middle 32 bits of the NTP time, when sent) of our recent sender reports.
    sent_reports: VecDeque<(u32, Instant)>,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl WireStats {
    pub fn new(side: Side, metrics: &Metrics, shared: Arc<ConnectionStats>) -> WireStats {
        WireStats {
            side,
            counters: metrics.wire.clone(),
            rtt_ms: metrics.rtt_ms.clone(),
            jitter_us: metrics.jitter_us.clone(),
            shared,
            highest_seq: HashMap::new(),
            reported_lost: HashMap::new(),
            clock_rates: HashMap::new(),
            sent_reports: VecDeque::with_capacity(SENT_REPORTS_KEPT),
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    /// Whether this packet is a retransmission (its sequence number was seen already).
    fn is_retransmission(&mut self, ssrc: u32, seq: u16) -> bool {
        match self.highest_seq.get_mut(&ssrc) {
            None => {
                self.highest_seq.insert(ssrc, i64::from(seq));
                false
            }
            Some(highest) => {
                let delta = i64::from(seq.wrapping_sub(*highest as u16) as i16);
                if delta > 0 {
                    *highest += delta;
                    false
                } else {
                    true
                }
            }
        }
    }

    fn count_rtp(&mut self, packet: &rtc::rtp::Packet, incoming: bool) {
        let bytes = (packet.header.marshal_size() + packet.payload.len()) as u64;
        let retransmit = self.is_retransmission(packet.header.ssrc, packet.header.sequence_number);
        let c = &self.counters;
        let (packets, octets) = match (incoming, retransmit) {
            (true, false) => (&c.packets_in, &c.bytes_in),
            (true, true) => (&c.packets_in_retransmit, &c.bytes_in_retransmit),
            (false, false) => (&c.packets_out, &c.bytes_out),
            (false, true) => (&c.packets_out_retransmit, &c.bytes_out_retransmit),
        };
        packets.inc();
        octets.inc_by(bytes);
    }

    /// RTCP arriving: a subscriber's feedback on a subscribe connection, a publisher's sender
    /// reports (ignored) on a publish connection.
    fn count_rtcp_in(&mut self, packets: &[Box<dyn rtc::rtcp::packet::Packet>], now: Instant) {
        for p in packets {
            let any = p.as_any();
            if any.is::<TransportLayerNack>() {
                self.counters.nack_in.inc();
            } else if any.is::<PictureLossIndication>() {
                self.counters.pli_in.inc();
            } else if any.is::<FullIntraRequest>() {
                self.counters.fir_in.inc();
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                self.reception_reports(&rr.reports, now);
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                self.reception_reports(&sr.reports, now);
            }
        }
    }

    /// Reports about the streams Yoom sends on this connection.
    fn reception_reports(&mut self, reports: &[ReceptionReport], now: Instant) {
        if self.side != Side::Subscribe {
            return;
        }
        for report in reports {
            // Only streams still bound: a report in flight when its track was removed would
            // re-create the entry `unbind_local_stream` dropped, and it would stay for the
            // connection's lifetime (one per track a long-lived subscriber ever received).
            if let Some(&rate) = self.clock_rates.get(&report.ssrc) {
                let new_loss = self.new_loss(report);
                self.counters.loss_out.inc_by(new_loss);
                if rate > 0 {
                    self.jitter_us
                        .observe(f64::from(report.jitter) * 1e6 / f64::from(rate));
                }
            }
            if report.last_sender_report != 0 {
                let sent = self
                    .sent_reports
                    .iter()
                    .find(|(mid, _)| *mid == report.last_sender_report);
                if let Some((_, sent_at)) = sent {
                    let held = Duration::from_secs_f64(f64::from(report.delay) / 65536.0);
                    let rtt = now.saturating_duration_since(*sent_at).saturating_sub(held);
                    self.rtt_ms.observe(rtt.as_secs_f64() * 1000.0);
                    self.shared
                        .rtt_us
                        .store((rtt.as_micros() as u64).max(1), Ordering::Relaxed);
                }
            }
        }
    }

    fn new_loss(&mut self, report: &ReceptionReport) -> u64 {
        // 24-bit cumulative count; a smaller value (reset or negative) adds nothing.
        let total = report.total_lost & 0x00ff_ffff;
        let before = self.reported_lost.insert(report.ssrc, total).unwrap_or(0);
        u64::from(total.saturating_sub(before))
    }

    /// RTCP leaving: Yoom's feedback to a publisher, or its sender reports to a subscriber.
    fn count_rtcp_out(&mut self, packets: &[Box<dyn rtc::rtcp::packet::Packet>], now: Instant) {
        for p in packets {
            let any = p.as_any();
            if any.is::<TransportLayerNack>() {
                self.counters.nack_out.inc();
            } else if any.is::<PictureLossIndication>() {
                self.counters.pli_out.inc();
            } else if any.is::<FullIntraRequest>() {
                self.counters.fir_out.inc();
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                if self.sent_reports.len() == SENT_REPORTS_KEPT {
                    self.sent_reports.pop_front();
                }
                self.sent_reports
                    .push_back(((sr.ntp_time >> 16) as u32, now));
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                if self.side == Side::Publish {
                    for report in &rr.reports {
                        let new_loss = self.new_loss(report);
                        self.counters.loss_in.inc_by(new_loss);
                    }
                }
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for WireStats {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(rtp) => self.count_rtp(rtp, true),
            Packet::Rtcp(rtcp) => self.count_rtcp_in(rtcp, msg.now),
            _ => {}
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(rtp) => self.count_rtp(rtp, false),
            Packet::Rtcp(rtcp) => self.count_rtcp_out(rtcp, msg.now),
            _ => {}
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for WireStats {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.insert(info.ssrc, info.clock_rate);
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.clock_rates.remove(&info.ssrc);
        self.highest_seq.remove(&info.ssrc);
        self.reported_lost.remove(&info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.highest_seq.remove(&info.ssrc);
        self.reported_lost.remove(&info.ssrc);
    }
}
