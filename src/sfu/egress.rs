//! One forwarded track for one subscriber: rewrites each packet for the subscriber's connection
//! and hands it to that connection without waiting.
//!
//! The track's ingress task calls [`Egress::forward`] for every subscriber in turn (as LiveKit's
//! down-track spreader does). No task sits between the two: a task per subscriber per track
//! cost a wake-up and a poll per packet per subscriber, about 12 % of the server's CPU per
//! packet in a 1 → 100 room. The sink is the track's outbound stream on the subscriber's
//! connection ([`crate::sfu::outbound_stream`]), which protects the packet on the spot into
//! the ingress task's [`SendBatch`]; the task sends the batch once every subscriber has had the
//! packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rtc::rtp;

use crate::metrics::Metrics;
use crate::sfu::forwarder::RtpMunger;
use crate::sfu::prefetch::prefetch;
use crate::sfu::send_batch::SendBatch;
use crate::sfu::track::IngressPacket;

/// Where one subscriber's copy of a track goes.
pub trait PacketSink: Send + Sync {
    /// Hands `packet` over without waiting; what goes on the wire is added to `batch`.
    fn try_write(&self, packet: rtp::Packet, batch: &mut SendBatch, metrics: &Metrics)
        -> SinkWrite;
}

/// What became of a packet handed to a [`PacketSink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkWrite {
    Written,
    /// The sink cannot take it now (its connection is behind): the packet is dropped.
    Full,
    /// The sink no longer sends (its track was removed, its connection closed).
    Closed,
}

/// One forwarded track for one subscriber.
pub struct Egress {
    sink: Arc<dyn PacketSink>,
    /// Whether the subscriber's connection can carry media yet.
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    /// The subscriber's first forwarded video packet, for `join_to_first_video_seconds`.
    first_video: Option<Arc<FirstVideo>>,
    /// Locked by the track's ingress task per packet and by the member once, when the track
    /// stops: never contended on the packet path, never held across an `.await`.
    state: Mutex<EgressState>,
}

struct EgressState {
    munger: RtpMunger,
    sample: u32,
    /// `first_video` has its packet (this egress's copy of the flag, on a line the packet
    /// path touches anyway).
    first_video_seen: bool,
    /// Set by [`Egress::finish`]: the numbering has been handed on, nothing more is sent.
    finished: bool,
}

/// What [`Egress::forward`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Sent,
    /// Nothing to send (padding only, or the egress finished).
    Skipped,
    /// The subscriber's connection is not up yet, or no longer sends this track.
    NotConnected,
    /// The subscriber's connection is behind: this packet is lost for it.
    Full,
}

/// When a member joined, and whether its first video packet was counted yet.
#[derive(Debug)]
pub struct FirstVideo {
    joined_at: Instant,
    seen: AtomicBool,
}

impl FirstVideo {
    pub fn new(joined_at: Instant) -> Arc<FirstVideo> {
        Arc::new(FirstVideo {
            joined_at,
            seen: AtomicBool::new(false),
        })
    }

    fn record(&self, metrics: &Metrics) {
        // Read before writing: every video packet of every track the member receives comes
        // here, and a plain load keeps the flag's cache line shared between ingress threads.
        if !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::Relaxed) {
            metrics
                .join_to_first_video_seconds
                .observe(self.joined_at.elapsed().as_secs_f64());
        }
    }
}

/// One packet in this many has its forwarding latency measured (reading the clock per packet
/// per subscriber is not free).
const LATENCY_SAMPLE_EVERY: u32 = 16;

impl Egress {
    pub fn new(
        sink: Arc<dyn PacketSink>,
        munger: RtpMunger,
        connected: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        first_video: Option<Arc<FirstVideo>>,
    ) -> Egress {
        let first_video_seen = first_video.is_none();
        Egress {
            sink,
            connected,
            metrics,
            first_video,
            state: Mutex::new(EgressState {
                munger,
                sample: 0,
                first_video_seen,
                finished: false,
            }),
        }
    }

    /// Rewrites `packet` for this subscriber and hands it to its connection. Never waits.
    pub fn forward(&self, packet: &IngressPacket, batch: &mut SendBatch) -> Forwarded {
        if !self.connected.load(Ordering::Relaxed) {
            // Not encryptable yet; the subscriber gets a keyframe once connected.
            self.metrics.drops_not_connected.inc();
            return Forwarded::NotConnected;
        }
        let (out, sampled, first_video) = {
            // A poisoned lock only means another thread panicked mid-rewrite; the munger's
            // numbers are plain integers, still usable.
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.finished {
                return Forwarded::Skipped;
            }
            if packet.rtp.payload.is_empty() {
                // Padding-only (bandwidth probing): nothing for the subscriber.
                state.munger.skip(&packet.rtp.header);
                return Forwarded::Skipped;
            }
            state.sample = state.sample.wrapping_add(1);
            let sampled = state.sample.is_multiple_of(LATENCY_SAMPLE_EVERY);
            let first_video = !state.first_video_seen;
            (
                // The arrival time stands in for "now": the same for every subscriber, and no
                // clock read per packet per subscriber.
                state.munger.packet(&packet.rtp, packet.received_at),
                sampled,
                first_video,
            )
        };
        let bytes = out.payload.len() as u64;
        match self.sink.try_write(out, batch, &self.metrics) {
            SinkWrite::Written => {}
            SinkWrite::Full => {
                self.metrics.drops_queue_full.inc();
                return Forwarded::Full;
            }
            SinkWrite::Closed => {
                self.metrics.drops_not_connected.inc();
                return Forwarded::NotConnected;
            }
        }
        self.metrics.packets_forwarded_total.inc();
        self.metrics.bytes_forwarded_total.inc_by(bytes);
        if sampled {
            let latency = packet.received_at.elapsed();
            self.metrics
                .forward_latency_us
                .observe(latency.as_micros() as f64);
        }
        if first_video {
            if let Some(first) = &self.first_video {
                first.record(&self.metrics);
            }
            self.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_video_seen = true;
        }
        Forwarded::Sent
    }

    /// Starts loading what [`Self::forward`] reads first, for a subscriber the fan-out reaches
    /// soon: this egress, its connection's flag and its sink.
    pub fn prefetch(self: &Arc<Self>) {
        prefetch(Arc::as_ptr(self), 2);
    }

    /// What [`Self::prefetch`] started loading points to: the connection's flag and the sink.
    /// Called one subscriber later, when this egress itself has arrived.
    pub fn prefetch_targets(&self) {
        prefetch(Arc::as_ptr(&self.connected), 1);
        prefetch(Arc::as_ptr(&self.sink), 3);
    }

    /// Stops this egress and returns the numbering it reached, for the next track sent on the
    /// same SSRC. A packet the ingress is forwarding at this moment is either counted in the
    /// returned numbering or not sent at all.
    pub fn finish(&self) -> RtpMunger {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.finished = true;
        state.munger.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::AtomicUsize;

    /// Takes `room` packets, then reports itself full.
    struct CountingSink {
        room: usize,
        written: AtomicUsize,
        closed: AtomicBool,
    }

    impl PacketSink for CountingSink {
        fn try_write(
            &self,
            _packet: rtp::Packet,
            _batch: &mut SendBatch,
            _metrics: &Metrics,
        ) -> SinkWrite {
            if self.closed.load(Ordering::Relaxed) {
                return SinkWrite::Closed;
            }
            if self.written.load(Ordering::Relaxed) >= self.room {
                return SinkWrite::Full;
            }
            self.written.fetch_add(1, Ordering::Relaxed);
            SinkWrite::Written
        }
    }

    fn sink(room: usize) -> Arc<CountingSink> {
        Arc::new(CountingSink {
            room,
            written: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        })
    }

    fn packet(seq: u16, payload: &'static [u8]) -> IngressPacket {
        IngressPacket {
            rtp: rtp::Packet {
                header: rtp::Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number: seq,
                    timestamp: u32::from(seq) * 3000,
                    ssrc: 0x1234,
                    ..Default::default()
                },
                payload: Bytes::from_static(payload),
            },
            received_at: Instant::now(),
        }
    }

    /// Forwards one packet through a batch of its own (the counting sink puts nothing there).
    fn forward(e: &Egress, seq: u16, payload: &'static [u8]) -> Forwarded {
        e.forward(&packet(seq, payload), &mut SendBatch::new())
    }

    fn egress(sink: Arc<CountingSink>, connected: bool) -> (Egress, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let e = Egress::new(
            sink,
            RtpMunger::new(7, 96, 90_000),
            Arc::new(AtomicBool::new(connected)),
            metrics.clone(),
            Some(FirstVideo::new(Instant::now())),
        );
        (e, metrics)
    }

    #[test]
    fn forwards_and_counts_only_what_the_sink_took() {
        let s = sink(2);
        let (e, metrics) = egress(s.clone(), true);
        assert_eq!(forward(&e, 1, b"a"), Forwarded::Sent);
        assert_eq!(forward(&e, 2, b"b"), Forwarded::Sent);
        assert_eq!(forward(&e, 3, b"c"), Forwarded::Full);
        assert_eq!(metrics.packets_forwarded_total.get(), 2);
        assert_eq!(metrics.drops_queue_full.get(), 1);
        assert_eq!(metrics.join_to_first_video_seconds.get_sample_count(), 1);
    }

    #[test]
    fn nothing_goes_out_before_the_connection_is_up() {
        let s = sink(10);
        let (e, metrics) = egress(s.clone(), false);
        assert_eq!(forward(&e, 1, b"a"), Forwarded::NotConnected);
        assert_eq!(s.written.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.drops_not_connected.get(), 1);
        // Not sent, so not the first video either.
        assert_eq!(metrics.join_to_first_video_seconds.get_sample_count(), 0);
    }

    #[test]
    fn a_first_packet_the_sink_refused_is_not_the_first_video() {
        let s = sink(0);
        let (e, metrics) = egress(s.clone(), true);
        assert_eq!(forward(&e, 1, b"a"), Forwarded::Full);
        assert_eq!(metrics.join_to_first_video_seconds.get_sample_count(), 0);
        s.closed.store(true, Ordering::Relaxed);
        assert_eq!(forward(&e, 2, b"a"), Forwarded::NotConnected);
        assert_eq!(metrics.join_to_first_video_seconds.get_sample_count(), 0);
    }

    #[test]
    fn padding_is_skipped_without_a_gap_and_finish_hands_on_the_numbering() {
        let s = sink(10);
        let (e, _) = egress(s.clone(), true);
        assert_eq!(forward(&e, 10, b"a"), Forwarded::Sent);
        assert_eq!(forward(&e, 11, b""), Forwarded::Skipped);
        assert_eq!(forward(&e, 12, b"b"), Forwarded::Sent);
        let mut numbering = e.finish();
        // Nothing more goes out once the numbering has been handed on.
        assert_eq!(forward(&e, 13, b"c"), Forwarded::Skipped);
        assert_eq!(s.written.load(Ordering::Relaxed), 2);
        // Output so far: 10 and 11 (the padding left no gap); the next track continues at 12.
        numbering.continue_with(96, 90_000);
        let next = numbering.packet(&packet(500, b"d").rtp, Instant::now());
        assert_eq!(next.header.sequence_number, 12);
    }
}
