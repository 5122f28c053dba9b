//! One forwarded track for one subscriber: drains its queue, rewrites each packet for the
//! subscriber's connection and writes it; turns the subscriber's PLI/FIR into a keyframe
//! request on the source track.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};

use crate::metrics::Metrics;
use crate::sfu::forwarder::RtpMunger;
use crate::sfu::track::{KeyframeReason, PublishedTrack, SharedPacket};

pub struct Egress {
    pub local: Arc<TrackLocalStaticRTP>,
    pub munger: RtpMunger,
    pub queue_rx: mpsc::Receiver<SharedPacket>,
    /// Weak: a subscriber must not keep a departed publisher's track alive.
    pub source: Weak<PublishedTrack>,
    pub metrics: Arc<Metrics>,
    /// Whether the subscriber's connection can carry media yet.
    pub connected: Arc<AtomicBool>,
    /// The subscriber's first forwarded video packet, for `join_to_first_video_seconds`.
    pub first_video: Option<Arc<FirstVideo>>,
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
        if !self.seen.swap(true, Ordering::Relaxed) {
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
    /// Runs until the source stops feeding this queue or the subscriber's connection closes;
    /// ends with the numbering it reached, for the next track sent on the same SSRC.
    pub async fn run(mut self) -> RtpMunger {
        let _task = self.metrics.task_guard();
        let mut sample = 0u32;
        loop {
            tokio::select! {
                packet = self.queue_rx.recv() => {
                    let Some(packet) = packet else { break };
                    if !self.connected.load(Ordering::Relaxed) {
                        // Not encryptable yet; the subscriber gets a keyframe once connected.
                        self.metrics.drops_not_connected.inc();
                        continue;
                    }
                    if packet.rtp.payload.is_empty() {
                        // Padding-only (bandwidth probing): nothing for the subscriber.
                        self.munger.skip(&packet.rtp.header);
                        continue;
                    }
                    let now = Instant::now();
                    let out = self.munger.packet(&packet.rtp, now);
                    let bytes = out.payload.len() as u64;
                    if self.local.write_rtp(out).await.is_err() {
                        break;
                    }
                    self.metrics.packets_forwarded_total.inc();
                    self.metrics.bytes_forwarded_total.inc_by(bytes);
                    sample = sample.wrapping_add(1);
                    if sample.is_multiple_of(LATENCY_SAMPLE_EVERY) {
                        let latency = now.saturating_duration_since(packet.received_at);
                        self.metrics.forward_latency_us.observe(latency.as_micros() as f64);
                    }
                    if let Some(first) = self.first_video.take() {
                        first.record(&self.metrics);
                    }
                }
                event = self.local.poll() => match event {
                    Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                        let wants_keyframe = packets.iter().any(|p| {
                            let any = p.as_any();
                            any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                        });
                        if wants_keyframe {
                            self.metrics.keyframe_requests_in_total.inc();
                            if let Some(source) = self.source.upgrade() {
                                source.request_keyframe(KeyframeReason::Repair);
                            }
                        }
                    }
                    None => break,
                    #[allow(unreachable_patterns)]
                    Some(_) => {}
                },
            }
        }
        self.munger
    }
}
