//! What `benches/packet_path.rs` and `tests/packet_path_allocations.rs` both drive: a
//! publisher's video packet, and a published track whose subscribers' egresses write to a sink
//! that only counts (so what is measured is Yoom's part of the path). Included by both with
//! `#[path]`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use yoom::ids::MemberId;
use yoom::metrics::Metrics;
use yoom::sfu::codecs::supported_codecs;
use yoom::sfu::egress::{Egress, PacketSink, SinkWrite};
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::send_batch::SendBatch;
use yoom::sfu::track::PublishedTrack;

/// A 1,200-byte video packet as the ingress gets it: the extension bit set (the rewrite clears
/// it) and a reference-counted payload, so sharing it costs what it costs in the server.
pub fn video_packet(seq: u16) -> rtp::Packet {
    rtp::Packet {
        header: rtp::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc: 0x1234,
            extension: true,
            ..Default::default()
        },
        payload: Bytes::from(vec![0u8; 1200]),
    }
}

/// Takes every packet and counts it.
#[derive(Default)]
pub struct CountingSink {
    pub packets: AtomicU64,
}

impl PacketSink for CountingSink {
    fn try_write(&self, packet: rtp::Packet, _batch: &mut SendBatch, _: &Metrics) -> SinkWrite {
        std::hint::black_box(&packet);
        self.packets.fetch_add(1, Ordering::Relaxed);
        SinkWrite::Written
    }
}

/// A video track forwarded to `subscribers` connected subscribers, every egress writing to one
/// counting sink.
pub fn track_with_egresses(subscribers: u32) -> (PublishedTrack, Arc<Metrics>, Arc<CountingSink>) {
    let metrics = Arc::new(Metrics::new());
    let sink = Arc::new(CountingSink::default());
    let track = track_with_sinks(subscribers, &metrics, || sink.clone());
    (track, metrics, sink)
}

/// A video track forwarded to `subscribers` connected subscribers, each egress writing to the
/// sink `sink_for` makes for it.
// The benches include this file too, and use only `track_with_egresses`.
#[cfg_attr(not(test), allow(dead_code))]
pub fn track_with_sinks<S: PacketSink + 'static>(
    subscribers: u32,
    metrics: &Arc<Metrics>,
    mut sink_for: impl FnMut() -> Arc<S>,
) -> PublishedTrack {
    let codec = supported_codecs()
        .into_iter()
        .find(|(p, _)| p.payload_type == 96)
        .map(|(p, _)| p.rtp_codec)
        .expect("the server forwards payload type 96");
    let track = PublishedTrack::detached(MemberId::next(), RtpCodecKind::Video, codec);
    let connected = Arc::new(AtomicBool::new(true));
    for i in 0..subscribers {
        let egress = Egress::new(
            sink_for(),
            RtpMunger::new(1000 + i, 96, 90_000),
            connected.clone(),
            metrics.clone(),
            None,
        );
        track.add_subscriber(&MemberId::next(), Arc::new(egress));
    }
    track
}
