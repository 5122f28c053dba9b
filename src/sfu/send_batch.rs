//! One packet's datagrams to all of a track's subscribers, protected one by one and then sent
//! together: one `sendmmsg` per run of datagrams that leave by the same socket (in mux mode
//! that is every subscriber), instead of one `sendmsg` each.
//!
//! What this saves is the kernel's per-call work (syscall entry and exit, copying the message
//! header in); the per-datagram UDP/IP work stays. The datagrams are sent before the ingress
//! task takes the next packet, so batching adds no delay.
//!
//! The datagrams are written (marshalled and protected in place) straight into one buffer the
//! batch keeps for the next packet, so sending a packet to any number of subscribers allocates
//! nothing once the buffer has grown to the room's size.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use tracing::debug;

use webrtc::runtime::AsyncUdpSocket;

use crate::metrics::Metrics;
use crate::sfu::outbound_stream::{send_datagram, Route};

/// Messages per `sendmmsg` call; the arrays for them live on the stack.
const CHUNK: usize = 64;

/// Datagrams waiting to be sent. Owned by one track's ingress task and reused for every packet,
/// so it allocates only when a room grows past its largest size so far.
#[derive(Default)]
pub struct SendBatch {
    pending: Vec<Pending>,
    /// Every pending datagram's bytes, one after another.
    arena: Vec<u8>,
    /// Where the committed datagrams end in `arena`.
    committed: usize,
    /// How much room the last [`SendBatch::next_datagram`] gave.
    offered: usize,
    /// Keep the pending datagrams' sockets (and so their descriptors) open until they are
    /// sent, with their descriptors. One entry per change of kernel socket, not per datagram:
    /// in mux mode every subscriber's route has its own handle on one shared socket, and a
    /// reference count touched per subscriber would be one more cache miss each. Any handle
    /// keeps the descriptor open, and an open descriptor is never another socket's.
    sockets: Vec<(Option<RawFd>, Arc<dyn AsyncUdpSocket>)>,
}

struct Pending {
    /// The kernel socket, if the route's socket is one.
    fd: Option<RawFd>,
    ipv6_socket: bool,
    peer: SocketAddr,
    /// Index in `sockets` (for a socket that is not the kernel's).
    socket: usize,
    start: usize,
    len: usize,
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch::default()
    }

    /// Room for the next datagram, `max_len` bytes holding whatever an earlier packet left
    /// there (the buffer only grows, so nothing is zeroed per datagram). What is written there
    /// is only sent once [`Self::commit`] says how much of it is the datagram.
    pub fn next_datagram(&mut self, max_len: usize) -> &mut [u8] {
        let end = self.committed + max_len;
        if self.arena.len() < end {
            self.arena.resize(end, 0);
        }
        self.offered = max_len;
        &mut self.arena[self.committed..end]
    }

    /// Sends the first `len` bytes of what [`Self::next_datagram`] gave, on `route`.
    pub fn commit(&mut self, route: &Route, len: usize) {
        let len = len.min(std::mem::take(&mut self.offered));
        let kept = self
            .sockets
            .last()
            .is_some_and(|(fd, socket)| match route.fd {
                Some(_) => *fd == route.fd,
                None => Arc::as_ptr(socket).cast::<()>() == Arc::as_ptr(&route.socket).cast::<()>(),
            });
        if !kept {
            self.sockets.push((route.fd, route.socket.clone()));
        }
        self.pending.push(Pending {
            fd: route.fd,
            ipv6_socket: route.ipv6_socket,
            peer: route.peer,
            socket: self.sockets.len() - 1,
            start: self.committed,
            len,
        });
        self.committed += len;
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sends everything committed since the last flush. A datagram the socket cannot take now is
    /// dropped and counted, as a single send would (UDP semantics; NACK repairs video).
    pub fn flush(&mut self, metrics: &Metrics) {
        let mut rest = &self.pending[..];
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|p| p.fd == first.fd).count();
            let (now, later) = rest.split_at(run);
            match first.fd {
                Some(fd) => {
                    for chunk in now.chunks(CHUNK) {
                        send_chunk(fd, chunk, &self.arena, metrics);
                    }
                }
                // A socket that is not the kernel's (benchmarks' in-memory ones).
                None => {
                    for p in now {
                        let contents = &self.arena[p.start..p.start + p.len];
                        send_datagram(self.sockets[p.socket].1.as_ref(), p.peer, contents, metrics);
                    }
                }
            }
            rest = later;
        }
        self.pending.clear();
        self.sockets.clear();
        self.committed = 0;
    }
}

/// Sends up to [`CHUNK`] datagrams from `fd` with as few `sendmmsg` calls as the socket allows.
fn send_chunk(fd: RawFd, chunk: &[Pending], arena: &[u8], metrics: &Metrics) {
    debug_assert!(chunk.len() <= CHUNK);
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut addrs: [libc::sockaddr_storage; CHUNK] = unsafe { mem::zeroed() };
    let mut iovecs: [libc::iovec; CHUNK] = unsafe { mem::zeroed() };
    let mut headers: [libc::mmsghdr; CHUNK] = unsafe { mem::zeroed() };
    let mut name_lens = [0 as libc::socklen_t; CHUNK];
    let mut count = 0;
    for p in chunk {
        let Some(len) = write_sockaddr(p.peer, p.ipv6_socket, &mut addrs[count]) else {
            debug!(peer = %p.peer, "an IPv6 peer cannot be reached from an IPv4 socket");
            continue;
        };
        name_lens[count] = len;
        let contents = &arena[p.start..p.start + p.len];
        iovecs[count] = libc::iovec {
            iov_base: contents.as_ptr() as *mut libc::c_void,
            iov_len: contents.len(),
        };
        count += 1;
    }
    // The pointers are taken once the arrays are written, from one pointer per array.
    let (addrs, iovecs) = (addrs.as_mut_ptr(), iovecs.as_mut_ptr());
    for (i, header) in headers[..count].iter_mut().enumerate() {
        // SAFETY: i < count <= CHUNK, inside both arrays.
        header.msg_hdr.msg_name = unsafe { addrs.add(i) }.cast();
        header.msg_hdr.msg_namelen = name_lens[i];
        header.msg_hdr.msg_iov = unsafe { iovecs.add(i) };
        header.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    while sent < count {
        let left = &mut headers[sent..count];
        // SAFETY: `fd` is open (the batch holds every pending datagram's socket), and every header
        // points at an address and an iovec in the arrays above, whose iovec points into
        // `arena`; all of them outlive the call. The kernel only reads them (and writes each
        // header's `msg_len`).
        let n = unsafe { libc::sendmmsg(fd, left.as_mut_ptr(), left.len() as libc::c_uint, 0) };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                metrics
                    .udp_mux_drops
                    .with_label_values(&["send_buffer_full"])
                    .inc_by((count - sent) as u64);
                return;
            }
            // Refused for this destination alone (unreachable, not permitted): the others
            // still go.
            _ => {
                debug!(error = %error, "send to subscriber failed");
                sent += 1;
            }
        }
    }
}

/// Writes `peer` as the socket address a socket of the route's family takes; an IPv4 peer of
/// an IPv6 socket as an IPv4-mapped address. Returns its length, or `None` for an IPv6 peer of
/// an IPv4 socket.
fn write_sockaddr(
    peer: SocketAddr,
    ipv6_socket: bool,
    out: &mut libc::sockaddr_storage,
) -> Option<libc::socklen_t> {
    let v6 = |ip: std::net::Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32| libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: flowinfo,
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: scope_id,
    };
    let storage = (out as *mut libc::sockaddr_storage).cast::<u8>();
    match (peer, ipv6_socket) {
        (SocketAddr::V4(a), false) => {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every socket address.
            unsafe { storage.cast::<libc::sockaddr_in>().write(addr) };
            Some(mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        (SocketAddr::V4(a), true) => {
            let addr = v6(a.ip().to_ipv6_mapped(), a.port(), 0, 0);
            // SAFETY: as above.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(addr) };
            Some(mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
        (SocketAddr::V6(a), true) => {
            let addr = v6(*a.ip(), a.port(), a.flowinfo(), a.scope_id());
            // SAFETY: as above.
            unsafe { storage.cast::<libc::sockaddr_in6>().write(addr) };
            Some(mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
        (SocketAddr::V6(_), false) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use webrtc::runtime::{AsyncUdpSocket, Runtime, TokioRuntime};

    use super::*;
    use rtc::srtp::protection_profile::ProtectionProfile;

    use crate::sfu::srtp_keys::SrtpKeys;

    /// A route out of `socket` (kept open by the route) to `peer`.
    fn route(socket: &UdpSocket, peer: SocketAddr) -> Arc<Route> {
        let local = socket.local_addr().unwrap();
        let fd = socket.as_raw_fd();
        let socket: Arc<dyn AsyncUdpSocket> = TokioRuntime
            .wrap_udp_socket(socket.try_clone().unwrap())
            .unwrap();
        Arc::new(Route {
            keys: SrtpKeys::new(
                ProtectionProfile::Aes128CmHmacSha1_80,
                vec![1; 16],
                vec![2; 14],
            )
            .unwrap(),
            socket,
            fd: Some(fd),
            ipv6_socket: local.is_ipv6(),
            peer,
        })
    }

    fn receiver(addr: &str) -> UdpSocket {
        let socket = UdpSocket::bind(addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        socket
    }

    /// Everything `socket` has, as (contents, source).
    fn drain(socket: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        socket.set_nonblocking(true).unwrap();
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
        got
    }

    fn datagram(n: usize) -> Vec<u8> {
        format!("datagram {n}").into_bytes()
    }

    /// What an outbound stream does: write into the batch's buffer, then commit.
    fn push(batch: &mut SendBatch, route: &Arc<Route>, contents: &[u8]) {
        // More room than needed, as a stream asks for room for the longest tag.
        let room = batch.next_datagram(contents.len() + 16);
        room[..contents.len()].copy_from_slice(contents);
        room[contents.len()..].fill(0xee);
        batch.commit(route, contents.len());
    }

    #[tokio::test]
    async fn every_datagram_reaches_its_own_peer_across_several_calls() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let receivers: Vec<UdpSocket> = (0..3).map(|_| receiver("127.0.0.1:0")).collect();
        let routes: Vec<Arc<Route>> = receivers
            .iter()
            .map(|r| route(&sender, r.local_addr().unwrap()))
            .collect();
        let metrics = Metrics::new();
        let mut batch = SendBatch::new();
        // More than one sendmmsg's worth (CHUNK), round-robin over the peers, with one the
        // kernel refuses (port 0) in the middle of a call.
        let total = CHUNK * 2 + 7;
        let refused = route(&sender, "127.0.0.1:0".parse().unwrap());
        for n in 0..total {
            push(&mut batch, &routes[n % 3], &datagram(n));
            if n == 10 {
                push(&mut batch, &refused, &datagram(n));
            }
            if n == 20 {
                // Written but never committed (a packet that failed protection): not sent.
                batch.next_datagram(50).fill(b'x');
            }
        }
        assert_eq!(batch.len(), total + 1);
        batch.flush(&metrics);
        assert!(batch.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (i, r) in receivers.iter().enumerate() {
            let got = drain(r);
            let want: Vec<Vec<u8>> = (0..total).filter(|n| n % 3 == i).map(datagram).collect();
            assert_eq!(got.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(), want);
            assert!(got
                .iter()
                .all(|(_, from)| *from == sender.local_addr().unwrap()));
        }
        let dropped = metrics
            .udp_mux_drops
            .with_label_values(&["send_buffer_full"])
            .get();
        assert_eq!(dropped, 0);
    }

    #[tokio::test]
    async fn datagrams_leave_by_their_own_routes_socket() {
        let senders: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        let peer = receiver("127.0.0.1:0");
        let routes: Vec<Arc<Route>> = senders
            .iter()
            .map(|s| route(s, peer.local_addr().unwrap()))
            .collect();
        let mut batch = SendBatch::new();
        // Interleaved, so every run of one socket is a single datagram.
        for n in 0..6 {
            push(&mut batch, &routes[n % 2], &datagram(n));
        }
        batch.flush(&Metrics::new());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = drain(&peer);
        assert_eq!(got.len(), 6);
        for (n, (contents, from)) in got.iter().enumerate() {
            assert_eq!(*contents, datagram(n));
            assert_eq!(*from, senders[n % 2].local_addr().unwrap());
        }
    }

    #[tokio::test]
    async fn one_handle_per_run_of_a_kernel_socket_is_kept_until_the_send() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let peer = receiver("127.0.0.1:0");
        let to = peer.local_addr().unwrap();
        // Every subscriber's route has its own handle on the one shared socket, as in mux mode.
        let shared: Vec<Arc<Route>> = (0..3).map(|_| route(&sender, to)).collect();
        let mut batch = SendBatch::new();
        for (n, r) in shared.iter().enumerate() {
            push(&mut batch, r, &datagram(n));
        }
        assert_eq!(batch.sockets.len(), 1);
        push(&mut batch, &route(&other, to), &datagram(3));
        push(&mut batch, &shared[0], &datagram(4));
        assert_eq!(batch.sockets.len(), 3);
        // The routes may go before the send: the batch holds its own handles.
        drop(shared);
        batch.flush(&Metrics::new());
        assert!(batch.sockets.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got: Vec<Vec<u8>> = drain(&peer).into_iter().map(|(c, _)| c).collect();
        assert_eq!(got, (0..5).map(datagram).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_ipv6_socket_reaches_ipv4_peers_mapped_and_an_ipv4_one_skips_ipv6_peers() {
        let v6 = UdpSocket::bind("[::]:0").unwrap();
        v6.set_nonblocking(true).unwrap();
        let v4_peer = receiver("127.0.0.1:0");
        let v6_peer = receiver("[::1]:0");
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.set_nonblocking(true).unwrap();
        let mut batch = SendBatch::new();
        // The third, from an IPv4 socket to an IPv6 peer, cannot go; the one after it still does.
        for (n, (socket, peer)) in [
            (&v6, &v4_peer),
            (&v6, &v6_peer),
            (&v4, &v6_peer),
            (&v4, &v4_peer),
        ]
        .into_iter()
        .enumerate()
        {
            push(
                &mut batch,
                &route(socket, peer.local_addr().unwrap()),
                &datagram(n + 1),
            );
        }
        batch.flush(&Metrics::new());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let to_v4: Vec<Vec<u8>> = drain(&v4_peer).into_iter().map(|(d, _)| d).collect();
        let to_v6: Vec<Vec<u8>> = drain(&v6_peer).into_iter().map(|(d, _)| d).collect();
        assert_eq!(to_v4, vec![datagram(1), datagram(4)]);
        assert_eq!(to_v6, vec![datagram(2)]);
    }

    #[test]
    fn socket_addresses_are_written_as_the_kernel_reads_them() {
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let v4: SocketAddr = "192.0.2.7:5004".parse().unwrap();
        let len = write_sockaddr(v4, false, &mut storage).unwrap();
        assert_eq!(len as usize, mem::size_of::<libc::sockaddr_in>());
        let sin = unsafe { *(&storage as *const _ as *const libc::sockaddr_in) };
        assert_eq!(sin.sin_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(u16::from_be(sin.sin_port), 5004);
        assert_eq!(sin.sin_addr.s_addr.to_ne_bytes(), [192, 0, 2, 7]);

        let len = write_sockaddr(v4, true, &mut storage).unwrap();
        assert_eq!(len as usize, mem::size_of::<libc::sockaddr_in6>());
        let sin6 = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
        assert_eq!(sin6.sin6_family, libc::AF_INET6 as libc::sa_family_t);
        assert_eq!(u16::from_be(sin6.sin6_port), 5004);
        assert_eq!(
            sin6.sin6_addr.s6_addr,
            "::ffff:192.0.2.7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );

        let v6: SocketAddr = "[2001:db8::1%3]:9".parse().unwrap();
        assert!(write_sockaddr(v6, false, &mut storage).is_none());
        write_sockaddr(v6, true, &mut storage).unwrap();
        let sin6 = unsafe { *(&storage as *const _ as *const libc::sockaddr_in6) };
        assert_eq!(sin6.sin6_scope_id, 3);
        assert_eq!(u16::from_be(sin6.sin6_port), 9);
    }
}
