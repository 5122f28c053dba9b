//! The per-packet path allocates nothing per subscriber: a counting global allocator watches
//! the rewrite and the fan-out of packets to 100 subscribers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;
use yoom::ids::MemberId;
use yoom::metrics::Metrics;
use yoom::sfu::codecs::supported_codecs;
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::track::{IngressPacket, PublishedTrack, SharedPacket, SUBSCRIBER_QUEUE_LEN};

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

    // Fan-out to 100 queues, drained as egresses would.
    let codec = supported_codecs().remove(1).0.rtp_codec;
    let track = PublishedTrack::detached(MemberId::next(), RtpCodecKind::Video, codec);
    let metrics = Metrics::new();
    let mut receivers: Vec<mpsc::Receiver<SharedPacket>> = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE_LEN);
        track.add_subscriber(&MemberId::next(), tx);
        receivers.push(rx);
    }
    let packets: Vec<SharedPacket> = (0..PACKETS)
        .map(|i| IngressPacket::shared(packet(i)))
        .collect();
    // Warm up the queues' internal blocks.
    for p in packets.iter().take(500) {
        track.fan_out(p, &metrics);
        for rx in receivers.iter_mut() {
            let _ = rx.try_recv();
        }
    }
    let (_, allocs) = counted(|| {
        for p in &packets {
            track.fan_out(p, &metrics);
            for rx in receivers.iter_mut() {
                let _ = rx.try_recv();
            }
        }
    });
    let deliveries = u64::from(PACKETS) * SUBSCRIBERS as u64;
    // The queues recycle their storage once warm: not a single allocation.
    assert_eq!(
        allocs, 0,
        "{allocs} allocations for {deliveries} deliveries"
    );
}
