//! The per-packet path in isolation: the per-subscriber rewrite, the fan-out of one packet
//! through 100 subscribers' egresses (to a sink that only counts, so what is measured is
//! Yoom's part), and the metrics counters it touches. Reports ns per operation.
//! Run: `cargo bench --bench packet_path`.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use yoom::metrics::Metrics;
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::send_batch::SendBatch;
use yoom::sfu::track::IngressPacket;

#[path = "../tests/support/packet_path.rs"]
mod packet_path;
use packet_path::{track_with_egresses, video_packet};

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
    let (track, metrics, _sink) = track_with_egresses(100);
    let mut g = c.benchmark_group("fan-out");
    g.throughput(Throughput::Elements(100));
    let mut seq = 0u16;
    let mut batch = SendBatch::new();
    g.bench_function("one packet through 100 subscribers' egresses", |b| {
        b.iter_batched(
            || {
                seq = seq.wrapping_add(1);
                IngressPacket::new(video_packet(seq))
            },
            |packet| track.fan_out(&packet, &metrics, &mut batch),
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
