//! The per-packet path allocates nothing per subscriber: a counting global allocator watches
//! the rewrite, and the fan-out of the same number of packets through one subscriber's egress
//! and through 100 subscribers' egresses.
//!
//! The egresses here write to a counting sink. In the server they write to the track's outbound
//! stream on the subscriber's connection, where `rtc-srtp` returns each protected datagram in a
//! new buffer: one allocation per packet per subscriber that is the library's API, not Yoom's
//! (docs/benchmarks.md, `cargo bench --bench rtc_send_path`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::send_batch::SendBatch;
use yoom::sfu::track::IngressPacket;

#[path = "support/packet_path.rs"]
mod packet_path;
use packet_path::{track_with_egresses, video_packet};

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

// One test only: the allocation counter is global to this test binary.
#[test]
fn no_allocation_per_packet_per_subscriber() {
    const SUBSCRIBERS: u32 = 100;
    const PACKETS: u16 = 2_000;

    // Rewrite: zero allocations per packet.
    let mut munger = RtpMunger::new(7, 96, 90_000);
    let src = video_packet(1);
    let now = Instant::now();
    munger.packet(&src, now);
    let (_, allocs) = counted(|| {
        for _ in 0..PACKETS {
            std::hint::black_box(munger.packet(&src, now));
        }
    });
    assert_eq!(allocs, 0, "the per-subscriber rewrite allocated");

    // Fan-out: what allocates must not grow with the subscribers. (A payload shared for the
    // first time allocates its reference count once, per packet, whatever the audience.)
    let one = fan_out_allocations(1, PACKETS);
    let hundred = fan_out_allocations(SUBSCRIBERS, PACKETS);
    assert_eq!(
        hundred, one,
        "{hundred} allocations fanning {PACKETS} packets out to {SUBSCRIBERS} subscribers, \
         {one} to one: something allocates per subscriber"
    );
    assert!(
        one <= u64::from(PACKETS),
        "{one} allocations for {PACKETS} packets to one subscriber"
    );
}

/// Allocations while `packets` fresh packets go through a track with `subscribers` egresses,
/// once every egress has started.
fn fan_out_allocations(subscribers: u32, packets: u16) -> u64 {
    const WARM_UP: u16 = 500;
    let (track, metrics, sink) = track_with_egresses(subscribers);
    let mut batch = SendBatch::new();
    for seq in 0..WARM_UP {
        track.fan_out(&IngressPacket::new(video_packet(seq)), &metrics, &mut batch);
    }
    let packets: Vec<IngressPacket> = (WARM_UP..WARM_UP + packets)
        .map(|seq| IngressPacket::new(video_packet(seq)))
        .collect();
    let before = sink.packets.load(Ordering::Relaxed);
    let (_, allocs) = counted(|| {
        for p in &packets {
            track.fan_out(p, &metrics, &mut batch);
        }
    });
    let deliveries = packets.len() as u64 * u64::from(subscribers);
    assert_eq!(sink.packets.load(Ordering::Relaxed) - before, deliveries);
    allocs
}
