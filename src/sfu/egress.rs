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
}

impl Egress {
    /// Runs until the source stops feeding this queue or the subscriber's connection closes.
    pub async fn run(mut self) {
        let _task = self.metrics.task_guard();
        loop {
            tokio::select! {
                packet = self.queue_rx.recv() => {
                    let Some(packet) = packet else { break };
                    if !self.connected.load(Ordering::Relaxed) {
                        // Not encryptable yet; the subscriber gets a keyframe once connected.
                        continue;
                    }
                    if packet.payload.is_empty() {
                        // Padding-only (bandwidth probing): nothing for the subscriber.
                        self.munger.skip(&packet.header);
                        continue;
                    }
                    let out = self.munger.packet(&packet, Instant::now());
                    let bytes = out.payload.len() as u64;
                    if self.local.write_rtp(out).await.is_err() {
                        break;
                    }
                    self.metrics.packets_forwarded_total.inc();
                    self.metrics.bytes_forwarded_total.inc_by(bytes);
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
    }
}
