//! The per-packet path allocates nothing per subscriber: a counting global allocator watches
//! the rewrite and the fan-out of packets through 100 subscribers' egresses.
//!
//! The egresses here write to a counting sink. In the server they write to webrtc-rs'
//! `TrackLocalStaticRTP`, whose `write_rtp` (an `async_trait` method) boxes its future: one
//! allocation per packet per subscriber that is the library's, not Yoom's, along with what its
//! connection driver does with the packet (docs/benchmarks.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use yoom::ids::MemberId;
use yoom::metrics::Metrics;
use yoom::sfu::codecs::supported_codecs;
use yoom::sfu::egress::{Egress, PacketSink, SinkWrite};
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::track::{IngressPacket, PublishedTrack};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (r, ALLOCATIONS.load(Ordering::SeqCst))
}

/// Takes every packet and counts it.
#[derive(Default)]
struct CountingSink {
    packets: AtomicU64,
}

impl PacketSink for CountingSink {
    fn try_write(&self, packet: rtp::Packet) -> SinkWrite {
        std::hint::black_box(&packet);
        self.packets.fetch_add(1, Ordering::Relaxed);
        SinkWrite::Written
    }
}

fn packet(seq: u16) -> rtp::Packet {
    rtp::Packet {
        header: rtp::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc: 0x1234,
            ..Default::default()
        },
        payload: Bytes::from_static(&[0u8; 1200]),
    }
}

// One test only: the allocation counter is global to this test binary.
#[test]
fn no_allocation_per_packet_per_subscriber() {
    const SUBSCRIBERS: usize = 100;
    const PACKETS: u16 = 2_000;

    // Rewrite: zero allocations per packet.
    let mut munger = RtpMunger::new(7, 96, 90_000);
    let src = packet(1);
    let now = Instant::now();
    munger.packet(&src, now);
    let (_, allocs) = counted(|| {
        for _ in 0..PACKETS {
            std::hint::black_box(munger.packet(&src, now));
        }
    });
    assert_eq!(allocs, 0, "the per-subscriber rewrite allocated");

    // Fan-out through 100 egresses.
    let codec = supported_codecs().remove(1).0.rtp_codec;
    let track = PublishedTrack::detached(MemberId::next(), RtpCodecKind::Video, codec);
    let metrics = Arc::new(Metrics::new());
    let sink = Arc::new(CountingSink::default());
    let connected = Arc::new(AtomicBool::new(true));
    for i in 0..SUBSCRIBERS {
        let egress = Egress::new(
            sink.clone(),
            RtpMunger::new(1000 + i as u32, 96, 90_000),
            connected.clone(),
            metrics.clone(),
            None,
        );
        track.add_subscriber(&MemberId::next(), Arc::new(egress));
    }
    let packets: Vec<IngressPacket> = (0..PACKETS)
        .map(|i| IngressPacket::new(packet(i)))
        .collect();
    // Warm up: each egress's first packet starts its rewrite state.
    for p in packets.iter().take(500) {
        track.fan_out(p, &metrics);
    }
    let before = sink.packets.load(Ordering::Relaxed);
    let (_, allocs) = counted(|| {
        for p in &packets {
            track.fan_out(p, &metrics);
        }
    });
    let deliveries = u64::from(PACKETS) * SUBSCRIBERS as u64;
    assert_eq!(sink.packets.load(Ordering::Relaxed) - before, deliveries);
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for {deliveries} deliveries"
    );
}
