//! A published track: the ingress loop that reads the publisher's RTP and hands each packet to
//! every subscriber's egress, and the throttled keyframe requests back to the publisher.
//!
//! Per packet the ingress stamps the packet's arrival time and, for each subscriber, lets that
//! subscriber's [`Egress`] rewrite it and hand it to its connection without waiting: no lock
//! shared between subscribers (the subscriber list is an `ArcSwap` snapshot), no allocation
//! per subscriber in Yoom's code, and a connection that is behind only costs its own
//! subscriber a dropped packet.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::ids::MemberId;
use crate::metrics::{GaugeGuard, Metrics};
use crate::sfu::egress::{Egress, Forwarded};
use crate::sfu::send_batch::SendBatch;
use crate::sfu::track_stats::{TrackStats, TrackStatsRecorder};

/// At most one keyframe request per track per this interval reaches the publisher on behalf of
/// subscribers' PLI/FIR; requests in between are merged into the next one, so a PLI storm from
/// many subscribers stays cheap.
pub const KEYFRAME_THROTTLE: Duration = Duration::from_millis(500);

/// A subscriber that just started receiving a track sees nothing until the next keyframe, so
/// its request waits at most this long after the previous one. Joins are bounded by signaling,
/// so this cannot become a storm, and a burst of joiners within it shares one keyframe.
pub const JOIN_KEYFRAME_THROTTLE: Duration = Duration::from_millis(100);

/// Server-wide unique id of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u64);

impl TrackId {
    pub fn next() -> TrackId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TrackId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for TrackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// A publisher's packet as every subscriber's egress sees it: the payload is shared with each
/// rewritten copy, never copied.
#[derive(Debug)]
pub struct IngressPacket {
    pub rtp: rtp::Packet,
    /// When the ingress got it (for `forward_latency_us`).
    pub received_at: Instant,
}

impl IngressPacket {
    pub fn new(rtp: rtp::Packet) -> IngressPacket {
        IngressPacket {
            rtp,
            received_at: Instant::now(),
        }
    }
}

/// One subscriber's egress for this track.
#[derive(Clone)]
struct Downstream {
    subscriber: MemberId,
    egress: Arc<Egress>,
}

pub struct PublishedTrack {
    pub id: TrackId,
    pub publisher: MemberId,
    pub kind: RtpCodecKind,
    pub codec: RTCRtpCodec,
    downstreams: ArcSwap<Vec<Downstream>>,
    keyframe_requests: Arc<KeyframeRequests>,
    /// Packets, bytes, bitrate, loss — for the admin API.
    pub stats: TrackStats,
    /// Muted by an administrator: nothing is forwarded.
    server_muted: AtomicBool,
}

/// Why a keyframe is wanted; decides how long the request may be held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeReason {
    /// A subscriber sent PLI/FIR, or its queue overflowed.
    Repair = 1,
    /// A subscriber just started (or restarted) receiving the track.
    NewSubscriber = 2,
}

impl KeyframeReason {
    fn throttle(self) -> Duration {
        match self {
            KeyframeReason::Repair => KEYFRAME_THROTTLE,
            KeyframeReason::NewSubscriber => JOIN_KEYFRAME_THROTTLE,
        }
    }
}

/// Requests from many subscribers merged into a set of reasons the ingress loop collects.
#[derive(Default)]
struct KeyframeRequests {
    reasons: AtomicU8,
    wake: Notify,
}

impl KeyframeRequests {
    fn add(&self, reason: KeyframeReason) {
        self.reasons.fetch_or(reason as u8, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The most urgent pending reason, clearing them all.
    fn take(&self) -> Option<KeyframeReason> {
        let bits = self.reasons.swap(0, Ordering::Relaxed);
        if bits & KeyframeReason::NewSubscriber as u8 != 0 {
            Some(KeyframeReason::NewSubscriber)
        } else if bits & KeyframeReason::Repair as u8 != 0 {
            Some(KeyframeReason::Repair)
        } else {
            None
        }
    }
}

impl PublishedTrack {
    pub fn is_video(&self) -> bool {
        self.kind == RtpCodecKind::Video
    }

    /// Starts forwarding this track through `egress`.
    pub fn add_subscriber(&self, subscriber: &MemberId, egress: Arc<Egress>) {
        self.downstreams.rcu(|current| {
            let mut next: Vec<Downstream> = current
                .iter()
                .filter(|d| &d.subscriber != subscriber)
                .cloned()
                .collect();
            next.push(Downstream {
                subscriber: subscriber.clone(),
                egress: egress.clone(),
            });
            next
        });
    }

    pub fn remove_subscriber(&self, subscriber: &MemberId) {
        self.downstreams.rcu(|current| {
            current
                .iter()
                .filter(|d| &d.subscriber != subscriber)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    pub fn subscriber_count(&self) -> usize {
        self.downstreams.load().len()
    }

    pub fn set_server_muted(&self, muted: bool) {
        self.server_muted.store(muted, Ordering::Relaxed);
    }

    pub fn is_server_muted(&self) -> bool {
        self.server_muted.load(Ordering::Relaxed)
    }

    /// Hands one packet to every subscriber's egress, none of which waits, then sends what
    /// they put in `batch` (emptying it). Returns how many subscribers' connections were
    /// behind (the packet is lost for them).
    pub fn fan_out(
        &self,
        packet: &IngressPacket,
        metrics: &Metrics,
        batch: &mut SendBatch,
    ) -> usize {
        if self.server_muted.load(Ordering::Relaxed) {
            metrics
                .drops_server_muted
                .inc_by(self.downstreams.load().len() as u64);
            return 0;
        }
        let mut full = 0;
        let downstreams = self.downstreams.load();
        // Each subscriber's state is a chain of pointers that has left the cache since the
        // last packet: load the egress two subscribers ahead, and what it points to one ahead,
        // so those misses overlap with this subscriber's encryption.
        let ahead = |i: usize| downstreams.get(i).map(|d| &d.egress);
        if let Some(e) = ahead(0) {
            e.prefetch();
            e.prefetch_targets();
        }
        if let Some(e) = ahead(1) {
            e.prefetch();
        }
        for (i, d) in downstreams.iter().enumerate() {
            if let Some(e) = ahead(i + 2) {
                e.prefetch();
            }
            if let Some(e) = ahead(i + 1) {
                e.prefetch_targets();
            }
            if d.egress.forward(packet, batch) == Forwarded::Full {
                full += 1;
            }
        }
        batch.flush(metrics);
        full
    }

    /// A track that is not fed by a publisher's connection (benchmarks, tests).
    pub fn detached(publisher: MemberId, kind: RtpCodecKind, codec: RTCRtpCodec) -> PublishedTrack {
        Self::new(publisher, kind, codec).0
    }

    /// The track and the shared end of its keyframe requests.
    fn new(
        publisher: MemberId,
        kind: RtpCodecKind,
        codec: RTCRtpCodec,
    ) -> (PublishedTrack, Arc<KeyframeRequests>) {
        let keyframe_requests = Arc::new(KeyframeRequests::default());
        let track = PublishedTrack {
            id: TrackId::next(),
            publisher,
            kind,
            codec,
            downstreams: ArcSwap::from_pointee(Vec::new()),
            keyframe_requests: keyframe_requests.clone(),
            stats: TrackStats::default(),
            server_muted: AtomicBool::new(false),
        };
        (track, keyframe_requests)
    }

    /// Asks the publisher for a keyframe (throttled by `reason`; never waits).
    pub fn request_keyframe(&self, reason: KeyframeReason) {
        if self.is_video() {
            self.keyframe_requests.add(reason);
        }
    }

    /// Creates the track and spawns its ingress loop, which ends when the publisher's track
    /// ends or its connection closes; `ended_tx` then receives the track id.
    pub fn start(
        publisher: MemberId,
        remote: Arc<dyn TrackRemote>,
        kind: RtpCodecKind,
        codec: RTCRtpCodec,
        metrics: Arc<Metrics>,
        ended_tx: mpsc::UnboundedSender<TrackId>,
    ) -> Arc<PublishedTrack> {
        let (track, keyframe_requests) = Self::new(publisher, kind, codec);
        let track = Arc::new(track);
        let kind_label = if track.is_video() { "video" } else { "audio" };
        metrics
            .track_published_total
            .with_label_values(&[kind_label])
            .inc();
        let ingress = Ingress {
            track: Arc::downgrade(&track),
            id: track.id,
            remote,
            metrics,
            keyframe_requests,
            last_keyframe_request: None,
            keyframe_pending: None,
            media_ssrc: 0,
            recorder: TrackStatsRecorder::default(),
            batch: SendBatch::new(),
        };
        let live = GaugeGuard::new(ingress.metrics.published_tracks.clone());
        tokio::spawn(async move {
            let _live = live;
            let id = ingress.id;
            ingress.run().await;
            let _ = ended_tx.send(id);
        });
        track
    }
}

struct Ingress {
    /// Weak: the room owns the track; a departed publisher's track must not be kept alive here.
    track: std::sync::Weak<PublishedTrack>,
    id: TrackId,
    remote: Arc<dyn TrackRemote>,
    metrics: Arc<Metrics>,
    keyframe_requests: Arc<KeyframeRequests>,
    last_keyframe_request: Option<Instant>,
    /// The most urgent reason among the requests not sent yet.
    keyframe_pending: Option<KeyframeReason>,
    media_ssrc: u32,
    recorder: TrackStatsRecorder,
    /// Every subscriber's datagram for the packet being fanned out.
    batch: SendBatch,
}

impl Ingress {
    async fn run(mut self) {
        let _task = self.metrics.task_guard();
        let mut drops: u64 = 0;
        loop {
            let throttle_left = self.keyframe_pending.map(|reason| {
                self.last_keyframe_request.map_or(Duration::ZERO, |t| {
                    reason.throttle().saturating_sub(t.elapsed())
                })
            });
            tokio::select! {
                event = self.remote.poll() => match event {
                    Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                        let Some(track) = self.track.upgrade() else { break };
                        self.media_ssrc = packet.header.ssrc;
                        self.metrics.packets_in_total.inc();
                        self.metrics.bytes_in_total.inc_by(packet.payload.len() as u64);
                        let packet = IngressPacket::new(packet);
                        self.recorder.record(
                            &track.stats,
                            packet.rtp.header.sequence_number,
                            packet.rtp.payload.len(),
                            packet.received_at,
                        );
                        let full = track.fan_out(&packet, &self.metrics, &mut self.batch);
                        if full > 0 {
                            // The subscribers that missed a packet need a fresh keyframe.
                            self.want_keyframe(KeyframeReason::Repair);
                            let before = drops;
                            drops += full as u64;
                            if before / 100 != drops / 100 || before == 0 {
                                debug!(track = %self.id, drops, "subscriber connections behind, dropping");
                            }
                        }
                    }
                    Some(TrackRemoteEvent::OnEnded) | None => break,
                    Some(_) => {}
                },
                () = self.keyframe_requests.wake.notified() => {
                    if let Some(reason) = self.keyframe_requests.take() {
                        self.want_keyframe(reason);
                    }
                }
                () = sleep_opt(throttle_left) => {
                    self.send_keyframe_request().await;
                }
            }
        }
    }

    fn want_keyframe(&mut self, reason: KeyframeReason) {
        if self.keyframe_pending != Some(KeyframeReason::NewSubscriber) {
            self.keyframe_pending = Some(reason);
        }
    }

    async fn send_keyframe_request(&mut self) {
        self.keyframe_pending = None;
        self.last_keyframe_request = Some(Instant::now());
        if self.media_ssrc == 0 {
            return;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: self.media_ssrc,
        };
        match self.remote.write_rtcp(vec![Box::new(pli)]).await {
            Ok(()) => self.metrics.pli_sent_total.inc(),
            Err(e) => warn!(track = %self.id, error = %e, "keyframe request failed"),
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_requests_merge_and_the_most_urgent_reason_wins() {
        let requests = KeyframeRequests::default();
        assert_eq!(requests.take(), None);
        requests.add(KeyframeReason::Repair);
        requests.add(KeyframeReason::Repair);
        assert_eq!(requests.take(), Some(KeyframeReason::Repair));
        assert_eq!(requests.take(), None);
        requests.add(KeyframeReason::Repair);
        requests.add(KeyframeReason::NewSubscriber);
        assert_eq!(requests.take(), Some(KeyframeReason::NewSubscriber));
        assert_eq!(requests.take(), None);
    }
}
