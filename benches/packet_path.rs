//! The per-packet path in isolation: the per-subscriber rewrite, the fan-out of one packet
//! through 100 subscribers' egresses (to a sink that only counts, so what is measured is
//! Yoom's part), and the metrics counters it touches. Reports ns per operation.
//! Run: `cargo bench --bench packet_path`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use yoom::ids::MemberId;
use yoom::metrics::Metrics;
use yoom::sfu::codecs::supported_codecs;
use yoom::sfu::egress::{Egress, PacketSink, SinkWrite};
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::track::{IngressPacket, PublishedTrack};

/// Takes every packet and counts it.
#[derive(Default)]
struct CountingSink {
    packets: AtomicU64,
}

impl PacketSink for CountingSink {
    fn try_write(&self, packet: rtp::Packet) -> SinkWrite {
        black_box(&packet);
        self.packets.fetch_add(1, Ordering::Relaxed);
        SinkWrite::Written
    }
}

fn video_packet(seq: u16) -> rtp::Packet {
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

fn rewrite(c: &mut Criterion) {
    let mut munger = RtpMunger::new(0xabcd, 96, 90_000);
    let src = video_packet(1);
    let now = Instant::now();
    let mut g = c.benchmark_group("forwarder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rewrite one packet for one subscriber", |b| {
        b.iter(|| black_box(munger.packet(black_box(&src), now)))
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let codec = supported_codecs()
        .into_iter()
        .find(|(p, _)| p.payload_type == 96)
        .map(|(p, _)| p.rtp_codec)
        .unwrap();
    let track = PublishedTrack::detached(MemberId::next(), RtpCodecKind::Video, codec);
    let metrics = Arc::new(Metrics::new());
    let sink = Arc::new(CountingSink::default());
    let connected = Arc::new(AtomicBool::new(true));
    for i in 0..100u32 {
        let egress = Egress::new(
            sink.clone(),
            RtpMunger::new(1000 + i, 96, 90_000),
            connected.clone(),
            metrics.clone(),
            None,
        );
        track.add_subscriber(&MemberId::next(), Arc::new(egress));
    }
    let mut g = c.benchmark_group("fan-out");
    g.throughput(Throughput::Elements(100));
    let mut seq = 0u16;
    g.bench_function("one packet through 100 subscribers' egresses", |b| {
        b.iter_batched(
            || {
                seq = seq.wrapping_add(1);
                IngressPacket::new(video_packet(seq))
            },
            |packet| track.fan_out(&packet, &metrics),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn counters(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("packet + byte counters for one forwarded packet", |b| {
        b.iter(|| {
            metrics.packets_forwarded_total.inc();
            metrics.bytes_forwarded_total.inc_by(black_box(1200));
        })
    });
    g.finish();
}

criterion_group!(benches, rewrite, fan_out, counters);
criterion_main!(benches);
