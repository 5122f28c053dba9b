//! What the kernel alone charges the sender for one forwarded datagram on this machine's
//! loopback: no SRTP, no RTP, no server — 1,200-byte datagrams to 100 receivers, one round per
//! millisecond, as one packet fanned out to a 1 → 100 room. The receivers are tokio sockets on
//! the other core, as the load tool's are; on loopback the sender's CPU time also covers their
//! network stack and waking them (softirq in the sender's context), which is why a server's
//! cost per packet here cannot go below this.
//!
//! Two ways: one `sendto` per datagram, and one `sendmmsg` per round (what Yoom's ingress does
//! since `send_batch`). Prints the sending thread's CPU time (`getrusage(RUSAGE_THREAD)`) per
//! datagram for each. Run: `cargo bench --bench udp_floor` (core 0 sends, core 1 receives).

use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RECEIVERS: usize = 100;
const DATAGRAM: usize = 1_200;
const ROUNDS: usize = 3_000;

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) is ignored.
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sockets: Vec<UdpSocket> = (0..RECEIVERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind a receiver"))
        .collect();
    let addrs: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr().expect("receiver address"))
        .collect();
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || receive(sockets, stop, received))
    };
    pin_to_core(0);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    let payload = vec![0x5a_u8; DATAGRAM];
    std::thread::sleep(Duration::from_millis(200));

    for round in 0..2 {
        for (name, batched) in [("sendto", false), ("sendmmsg", true)] {
            let before_cpu = thread_cpu();
            let before_received = received.load(Ordering::Relaxed);
            let mut sent = 0u64;
            for _ in 0..ROUNDS {
                sent += if batched {
                    send_mmsg(&sender, &addrs, &payload)
                } else {
                    send_each(&sender, &addrs, &payload)
                };
                std::thread::sleep(Duration::from_millis(1));
            }
            let (user, system) = thread_cpu();
            let (user, system) = (user - before_cpu.0, system - before_cpu.1);
            std::thread::sleep(Duration::from_millis(100));
            let got = received.load(Ordering::Relaxed) - before_received;
            let per = |d: Duration| d.as_secs_f64() * 1e6 / sent.max(1) as f64;
            println!(
                "run {}: {name:>8}: {:.2} us of sender CPU per datagram (user {:.2}, kernel {:.2}; {sent} sent, {got} received)",
                round + 1,
                per(user + system),
                per(user),
                per(system),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    receiver.join().expect("receiver thread");
}

fn send_each(socket: &UdpSocket, addrs: &[SocketAddr], payload: &[u8]) -> u64 {
    addrs
        .iter()
        .filter(|a| socket.send_to(payload, a).is_ok())
        .count() as u64
}

fn send_mmsg(socket: &UdpSocket, addrs: &[SocketAddr], payload: &[u8]) -> u64 {
    // SAFETY: plain C structs, all-zero is valid; every pointer below points into these locals
    // or `payload`, which outlive the call.
    let mut names: Vec<libc::sockaddr_in> = addrs
        .iter()
        .map(|a| {
            let SocketAddr::V4(a) = a else {
                unreachable!("receivers are IPv4")
            };
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            sin
        })
        .collect();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    let mut headers: Vec<libc::mmsghdr> = names
        .iter_mut()
        .map(|name| {
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut sent = 0usize;
    while sent < headers.len() {
        let left = &mut headers[sent..];
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                left.as_mut_ptr(),
                left.len() as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            break;
        }
        sent += n as usize;
    }
    sent as u64
}

/// Drains every receiver on core 1 with tokio, as the load tool's subscribers do.
fn receive(sockets: Vec<UdpSocket>, stop: Arc<AtomicBool>, received: Arc<AtomicU64>) {
    pin_to_core(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("receiver runtime");
    runtime.block_on(async move {
        for socket in sockets {
            socket.set_nonblocking(true).expect("non-blocking");
            let socket = tokio::net::UdpSocket::from_std(socket).expect("tokio socket");
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while socket.recv(&mut buf).await.is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

fn pin_to_core(core: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("could not pin to core {core}; figures include migrations");
        }
    }
}

/// The calling thread's CPU time so far: (user, system).
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let time =
        |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    (time(usage.ru_utime), time(usage.ru_stime))
}
