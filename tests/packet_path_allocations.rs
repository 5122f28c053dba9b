//! The per-packet path allocates nothing per subscriber: a counting global allocator watches
//! the rewrite, and the fan-out of the same number of packets through one subscriber's egress
//! and through 100 subscribers' egresses: once with egresses that write to a counting sink
//! (Yoom's rewrite and hand-over alone), once as in the server, where each egress writes to its
//! subscriber's outbound stream, which marshals and SRTP-protects the packet into the track's
//! send batch, and the batch goes to a real UDP socket with `sendmmsg`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::srtp::protection_profile::ProtectionProfile;
use webrtc::runtime::{AsyncUdpSocket, Runtime, TokioRuntime};
use yoom::metrics::Metrics;
use yoom::sfu::forwarder::RtpMunger;
use yoom::sfu::outbound_stream::{OutboundStream, Route};
use yoom::sfu::send_batch::SendBatch;
use yoom::sfu::srtp_keys::SrtpKeys;
use yoom::sfu::track::{IngressPacket, PublishedTrack};

#[path = "support/packet_path.rs"]
mod packet_path;
use packet_path::{track_with_egresses, track_with_sinks, video_packet};

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

    // The same through outbound streams, SRTP and the kernel, for both SRTP profiles.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _inside = runtime.enter();
    for (profile, salt_len) in [
        (ProtectionProfile::AeadAes128Gcm, 12),
        (ProtectionProfile::Aes128CmHmacSha1_80, 14),
    ] {
        let one = stream_fan_out_allocations(1, PACKETS, profile, salt_len);
        let hundred = stream_fan_out_allocations(SUBSCRIBERS, PACKETS, profile, salt_len);
        assert_eq!(
            hundred, one,
            "{profile:?}: {hundred} allocations sending {PACKETS} packets to {SUBSCRIBERS} \
             subscribers' outbound streams, {one} to one: something allocates per subscriber"
        );
        assert!(
            one <= u64::from(PACKETS),
            "{profile:?}: {one} allocations for {PACKETS} packets to one outbound stream"
        );
    }
}

/// Allocations while `packets` fresh packets go through a track with `subscribers` egresses,
/// once every egress has started.
fn fan_out_allocations(subscribers: u32, packets: u16) -> u64 {
    let (track, metrics, sink) = track_with_egresses(subscribers);
    counted_fan_out(&track, &metrics, subscribers, 500, packets, || {
        sink.packets.load(Ordering::Relaxed)
    })
}

/// Fans `warm_up` packets out, then counts the allocations while `packets` more go out to the
/// track's `subscribers`, and checks that every one of them was `delivered`.
fn counted_fan_out(
    track: &PublishedTrack,
    metrics: &Metrics,
    subscribers: u32,
    warm_up: u16,
    packets: u16,
    delivered: impl Fn() -> u64,
) -> u64 {
    let mut batch = SendBatch::new();
    for seq in 0..warm_up {
        track.fan_out(&IngressPacket::new(video_packet(seq)), metrics, &mut batch);
    }
    let packets: Vec<IngressPacket> = (warm_up..warm_up + packets)
        .map(|seq| IngressPacket::new(video_packet(seq)))
        .collect();
    let before = delivered();
    let (_, allocs) = counted(|| {
        for p in &packets {
            track.fan_out(p, metrics, &mut batch);
        }
    });
    let deliveries = packets.len() as u64 * u64::from(subscribers);
    assert_eq!(delivered() - before, deliveries);
    allocs
}

/// Allocations while `packets` fresh packets go through a track whose `subscribers` egresses
/// write to outbound streams, all routed from one UDP socket to one loopback receiver (which
/// never reads: what it cannot take the kernel drops, as it would a slow client's).
fn stream_fan_out_allocations(
    subscribers: u32,
    packets: u16,
    profile: ProtectionProfile,
    salt_len: usize,
) -> u64 {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("receiver");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("sender");
    sender.set_nonblocking(true).expect("non-blocking");
    let fd = sender.as_raw_fd();
    let socket: Arc<dyn AsyncUdpSocket> = TokioRuntime.wrap_udp_socket(sender).expect("wrap");
    let route = Arc::new(Route {
        keys: SrtpKeys::new(profile, vec![7; 16], vec![9; salt_len]).expect("keys"),
        socket,
        fd: Some(fd),
        ipv6_socket: false,
        peer: receiver.local_addr().expect("receiver address"),
    });
    let metrics = Arc::new(Metrics::new());
    let track = track_with_sinks(subscribers, &metrics, || {
        // Video keeps a NACK history, as in the server.
        let stream = OutboundStream::new(RTCRtpSenderId::default(), true);
        stream.set_route(Some(route.clone()));
        stream
    });
    // A warm-up past the history's 1,024 slots, so every slot has held a packet once.
    counted_fan_out(&track, &metrics, subscribers, 1_100, packets, || {
        metrics.wire.packets_out.get()
    })
}
