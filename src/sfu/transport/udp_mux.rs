//! One UDP socket per media address shared by every peer connection (LiveKit-style "UDP
//! mux"): clients reach all of Yoom's media on a single port, which is what makes Docker and
//! firewalls easy.
//!
//! A connection registers its ICE ufrag and gets a [`MuxedSocket`], which webrtc-rs drives as if
//! it were its own socket. The demultiplexer task owns the routing tables (no lock anywhere):
//! a datagram from a known remote address goes to that address's connection; from an unknown
//! address only a STUN Binding Request is accepted, routed by the ufrag in its USERNAME (the
//! part before `:` names the receiving side), and its source address is remembered. The ICE
//! agent then checks the request's integrity as usual, so a forged request gains nothing but a
//! dropped packet.
//!
//! Sending goes straight to the shared socket from the task that has the datagram: a track's
//! ingress task sends one packet's copies for every subscriber with one `sendmmsg`
//! ([`crate::sfu::send_batch`], through [`UdpMux::send_fd`]); connections' drivers send the
//! rest through [`MuxedSocket`] (`sendmsg`, with GSO when a webrtc-rs driver batches). A full
//! send buffer drops the datagram — UDP semantics, repaired by NACK — rather than parking one
//! of many writers on a single readiness waker.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};
use webrtc::runtime::AsyncUdpSocket;

use crate::metrics::Metrics;
use crate::sfu::transport::stun;

/// Datagrams waiting for one connection's driver; beyond this the connection is not keeping up.
const INBOX_LEN: usize = 1024;
/// Remote addresses one connection may be reached from (candidate pairs, network changes).
const MAX_ADDRS_PER_CONNECTION: usize = 8;
/// Socket buffers sized for bursts of many subscribers' packets (the kernel caps these at
/// net.core.{r,w}mem_max; docs/deploy.md says how to raise them).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Largest datagram (or GRO-coalesced run of them) read in one message.
const RECV_BUF_BYTES: usize = 64 * 1024;
/// Refill the receive slab when less than this is left, so one datagram always fits.
const SLAB_BYTES: usize = 256 * 1024;

type Datagram = (Bytes, SocketAddr);

/// The real socket, shared by the demultiplexer (receiving) and every connection (sending).
struct SharedSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    metrics: Arc<Metrics>,
}

impl SharedSocket {
    fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.state.try_send(UdpSockRef::from(&self.io), transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.metrics
                    .udp_mux_drops
                    .with_label_values(&["send_buffer_full"])
                    .inc();
                Ok(())
            }
            other => other,
        }
    }
}

enum Control {
    Register {
        ufrag: Arc<str>,
        generation: u64,
        inbox: mpsc::Sender<Datagram>,
    },
    Unregister {
        ufrag: Arc<str>,
        generation: u64,
    },
}

/// One shared UDP socket and its demultiplexer task (which ends when this is dropped).
pub struct UdpMux {
    local_addr: SocketAddr,
    shared: Arc<SharedSocket>,
    control: mpsc::UnboundedSender<Control>,
    next_generation: std::sync::atomic::AtomicU64,
    _stop: DropGuard,
}

impl UdpMux {
    /// Binds `addr` and starts demultiplexing. Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<UdpMux> {
        let std_socket = std::net::UdpSocket::bind(addr)?;
        std_socket.set_nonblocking(true)?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        for (what, result) in [
            (
                "send",
                state.set_send_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER_BYTES),
            ),
            (
                "receive",
                state.set_recv_buffer_size(UdpSockRef::from(&io), SOCKET_BUFFER_BYTES),
            ),
        ] {
            if let Err(e) = result {
                debug!(error = %e, "cannot enlarge the UDP {what} buffer");
            }
        }
        let local_addr = io.local_addr()?;
        let shared = Arc::new(SharedSocket { io, state, metrics });
        let (control, control_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let demux = Demux {
            shared: shared.clone(),
            control: control_rx,
            routes: HashMap::new(),
            by_addr: HashMap::new(),
        };
        tokio::spawn(demux.run(stop.clone()));
        Ok(UdpMux {
            local_addr,
            shared,
            control,
            next_generation: Default::default(),
            _stop: stop.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared socket's descriptor, open as long as this mux or any [`MuxedSocket`] of it.
    pub fn send_fd(&self) -> RawFd {
        self.shared.io.as_raw_fd()
    }

    /// A socket for the connection whose local ICE ufrag is `ufrag`. `reported_addr` is what
    /// the socket tells webrtc-rs its address is (the one the driver keyed it under). A second
    /// registration of the same ufrag (ICE restart rebinding) replaces the first.
    pub fn register(&self, ufrag: &str, reported_addr: SocketAddr) -> MuxedSocket {
        let (tx, rx) = mpsc::channel(INBOX_LEN);
        let ufrag: Arc<str> = ufrag.into();
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.control.send(Control::Register {
            ufrag: ufrag.clone(),
            generation,
            inbox: tx,
        });
        MuxedSocket {
            shared: self.shared.clone(),
            reported_addr,
            inbox: Mutex::new(rx),
            control: self.control.clone(),
            ufrag,
            generation,
        }
    }
}

struct Route {
    generation: u64,
    inbox: mpsc::Sender<Datagram>,
    addrs: Vec<SocketAddr>,
}

/// Owns the routing tables; the only reader of the shared socket.
struct Demux {
    shared: Arc<SharedSocket>,
    control: mpsc::UnboundedReceiver<Control>,
    routes: HashMap<Arc<str>, Route>,
    /// Remote address → (ufrag, inbox) of the connection it belongs to.
    by_addr: HashMap<SocketAddr, (Arc<str>, mpsc::Sender<Datagram>)>,
}

/// RFC 7983: a first byte of 0–3 is STUN (the rest is DTLS, RTP/RTCP, or TURN channel data).
fn looks_like_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b < 4)
}

impl Demux {
    async fn run(mut self, stop: CancellationToken) {
        let segments = self.shared.state.gro_segments().max(1);
        let buf_len = (segments * 1500).clamp(2048, RECV_BUF_BYTES);
        let batch = quinn_udp::BATCH_SIZE;
        let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| vec![0u8; buf_len]).collect();
        let mut meta = vec![RecvMeta::default(); batch];
        let mut slab = BytesMut::with_capacity(SLAB_BYTES);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                control = self.control.recv() => match control {
                    Some(c) => self.apply(c),
                    None => break,
                },
                ready = self.shared.io.readable() => {
                    if let Err(e) = ready {
                        warn!(error = %e, "UDP mux socket failed");
                        break;
                    }
                    self.drain(&mut bufs, &mut meta, &mut slab);
                }
            }
        }
    }

    /// Reads until the socket would block, routing every datagram.
    fn drain(&mut self, bufs: &mut [Vec<u8>], meta: &mut [RecvMeta], slab: &mut BytesMut) {
        loop {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let shared = &self.shared;
            let received = shared.io.try_io(Interest::READABLE, || {
                shared
                    .state
                    .recv(UdpSockRef::from(&shared.io), &mut slices, meta)
            });
            drop(slices);
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors from one peer surface here; they say nothing about the others.
                Err(e) => {
                    debug!(error = %e, "UDP mux receive error");
                    continue;
                }
            };
            for (buf, m) in bufs.iter().zip(meta.iter()).take(n) {
                let stride = if m.stride == 0 {
                    m.len.max(1)
                } else {
                    m.stride
                };
                for datagram in buf[..m.len].chunks(stride) {
                    self.route(datagram, m.addr, slab);
                }
            }
        }
    }

    fn route(&mut self, datagram: &[u8], from: SocketAddr, slab: &mut BytesMut) {
        let known = match self.by_addr.get(&from) {
            // A check from a known address naming another connection (a client's address
            // reused, or NATs rebinding) moves the address to the connection it names.
            Some((ufrag, _)) if looks_like_stun(datagram) => {
                stun::binding_request_local_ufrag(datagram).is_none_or(|named| named == &**ufrag)
            }
            Some(_) => true,
            None => false,
        };
        let inbox = match known.then(|| self.by_addr.get(&from)).flatten() {
            Some((_, inbox)) => inbox,
            None => match self.learn(datagram, from) {
                Some(inbox) => inbox,
                None => {
                    self.shared
                        .metrics
                        .udp_mux_drops
                        .with_label_values(&["unknown_source"])
                        .inc();
                    return;
                }
            },
        };
        if slab.capacity() < datagram.len() {
            *slab = BytesMut::with_capacity(SLAB_BYTES.max(datagram.len()));
        }
        slab.extend_from_slice(datagram);
        let bytes = slab.split().freeze();
        if let Err(mpsc::error::TrySendError::Full(_)) = inbox.try_send((bytes, from)) {
            self.shared
                .metrics
                .udp_mux_drops
                .with_label_values(&["connection_behind"])
                .inc();
        }
    }

    /// A first datagram from `from`: a connectivity check names the connection it is for.
    fn learn(&mut self, datagram: &[u8], from: SocketAddr) -> Option<&mpsc::Sender<Datagram>> {
        let ufrag = stun::binding_request_local_ufrag(datagram)?;
        let (ufrag, route) = self.routes.get_key_value(ufrag)?;
        let (ufrag, inbox) = (ufrag.clone(), route.inbox.clone());
        if let Some((previous, _)) = self.by_addr.remove(&from) {
            if let Some(route) = self.routes.get_mut(&previous) {
                route.addrs.retain(|a| *a != from);
            }
        }
        let route = self.routes.get_mut(&ufrag)?;
        if route.addrs.len() >= MAX_ADDRS_PER_CONNECTION {
            let oldest = route.addrs.remove(0);
            self.by_addr.remove(&oldest);
        }
        route.addrs.push(from);
        let (_, inbox) = self.by_addr.entry(from).or_insert((ufrag, inbox));
        Some(inbox)
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Register {
                ufrag,
                generation,
                inbox,
            } => {
                let addrs = match self.routes.remove(&ufrag) {
                    // A rebind keeps the remote addresses already learnt.
                    Some(old) => old.addrs,
                    None => Vec::new(),
                };
                for addr in &addrs {
                    self.by_addr.insert(*addr, (ufrag.clone(), inbox.clone()));
                }
                self.routes.insert(
                    ufrag,
                    Route {
                        generation,
                        inbox,
                        addrs,
                    },
                );
            }
            Control::Unregister { ufrag, generation } => {
                if self
                    .routes
                    .get(&ufrag)
                    .is_some_and(|r| r.generation == generation)
                {
                    if let Some(route) = self.routes.remove(&ufrag) {
                        for addr in route.addrs {
                            self.by_addr.remove(&addr);
                        }
                    }
                }
            }
        }
    }
}

/// What one connection's driver sees as its UDP socket.
pub struct MuxedSocket {
    shared: Arc<SharedSocket>,
    reported_addr: SocketAddr,
    /// Only the connection's driver polls this; the lock is never contended.
    inbox: Mutex<mpsc::Receiver<Datagram>>,
    control: mpsc::UnboundedSender<Control>,
    ufrag: Arc<str>,
    generation: u64,
}

impl std::fmt::Debug for MuxedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxedSocket")
            .field("shared", &self.shared.io.local_addr().ok())
            .field("reported_addr", &self.reported_addr)
            .field("ufrag", &self.ufrag)
            .finish()
    }
}

impl Drop for MuxedSocket {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Unregister {
            ufrag: self.ufrag.clone(),
            generation: self.generation,
        });
    }
}

impl AsyncUdpSocket for MuxedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.reported_addr)
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        Poll::Ready(self.shared.send(transmit).map(|()| transmit.contents.len()))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut inbox) = self.inbox.lock() else {
            return Poll::Ready(Err(io::Error::other("UDP mux inbox poisoned")));
        };
        let capacity = bufs.len().min(meta.len());
        if capacity == 0 {
            return Poll::Ready(Ok(0));
        }
        let first = match inbox.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "UDP mux stopped",
                )))
            }
            Poll::Ready(Some(datagram)) => datagram,
        };
        let mut filled = 0;
        let mut next = Some(first);
        while let Some((bytes, from)) = next.take() {
            let len = bytes.len().min(bufs[filled].len());
            bufs[filled][..len].copy_from_slice(&bytes[..len]);
            let mut m = RecvMeta::default();
            m.addr = from;
            m.len = len;
            m.stride = len.max(1);
            meta[filled] = m;
            filled += 1;
            if filled < capacity {
                next = inbox.try_recv().ok();
            }
        }
        Poll::Ready(Ok(filled))
    }

    fn max_gso_segments(&self) -> usize {
        self.shared.state.max_gso_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check(username: &str) -> Vec<u8> {
        let mut attr = 0x0006u16.to_be_bytes().to_vec();
        attr.extend((username.len() as u16).to_be_bytes());
        attr.extend(username.as_bytes());
        attr.resize(attr.len().div_ceil(4) * 4, 0);
        let mut out = 0x0001u16.to_be_bytes().to_vec();
        out.extend((attr.len() as u16).to_be_bytes());
        out.extend(0x2112_A442u32.to_be_bytes());
        out.extend([5u8; 12]);
        out.extend(attr);
        out
    }

    async fn recv(socket: &MuxedSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 1500];
        let mut meta = [RecvMeta::default()];
        let polled = tokio::time::timeout(
            Duration::from_millis(300),
            std::future::poll_fn(|cx| {
                let mut bufs = [IoSliceMut::new(&mut buf)];
                socket.poll_recv(cx, &mut bufs, &mut meta)
            }),
        )
        .await;
        match polled {
            Ok(Ok(1)) => Some((buf[..meta[0].len].to_vec(), meta[0].addr)),
            _ => None,
        }
    }

    fn drops(metrics: &Metrics, reason: &str) -> u64 {
        metrics.udp_mux_drops.with_label_values(&[reason]).get()
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_by_address_and_forgets_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let reported: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let alice = mux.register("aliceUfrag", reported);
        let bob = mux.register("bobUfrag", reported);
        assert_eq!(alice.local_addr().unwrap(), reported);
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client.local_addr().unwrap();
        let server = mux.local_addr();

        // Media before any check from this address goes nowhere.
        client.send_to(b"\x80media", server).await.unwrap();
        assert!(recv(&alice).await.is_none());
        assert_eq!(drops(&metrics, "unknown_source"), 1);

        let stun = check("aliceUfrag:clientUfrag");
        client.send_to(&stun, server).await.unwrap();
        assert_eq!(recv(&alice).await, Some((stun.clone(), client_addr)));
        client.send_to(b"\x80media", server).await.unwrap();
        assert_eq!(
            recv(&alice).await,
            Some((b"\x80media".to_vec(), client_addr))
        );
        assert!(recv(&bob).await.is_none());

        // Sending goes out of the shared socket.
        let transmit = Transmit {
            destination: client_addr,
            ecn: None,
            contents: b"reply",
            segment_size: None,
            src_ip: None,
        };
        std::future::poll_fn(|cx| alice.poll_send(cx, &transmit))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"reply"[..], server));

        // A check naming bob from alice's address moves the address to bob.
        client.send_to(&check("bobUfrag:c"), server).await.unwrap();
        assert!(recv(&bob).await.is_some());
        client.send_to(b"\x80to-bob", server).await.unwrap();
        assert_eq!(recv(&bob).await.map(|d| d.0), Some(b"\x80to-bob".to_vec()));
        assert!(recv(&alice).await.is_none());

        // Once bob's socket is gone, nothing routes to it any more.
        drop(bob);
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send_to(b"\x80late", server).await.unwrap();
        client.send_to(&check("bobUfrag:c"), server).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(drops(&metrics, "unknown_source"), 3);
    }

    #[tokio::test]
    async fn a_rebind_keeps_the_learnt_addresses_and_the_old_socket_stops_receiving() {
        let metrics = Arc::new(Metrics::new());
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let reported: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let first = mux.register("carol", reported);
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&check("carol:x"), mux.local_addr())
            .await
            .unwrap();
        assert!(recv(&first).await.is_some());

        let second = mux.register("carol", reported);
        drop(first); // its unregister must not remove the newer registration
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .send_to(b"\x80after", mux.local_addr())
            .await
            .unwrap();
        assert_eq!(
            recv(&second).await.map(|d| d.0),
            Some(b"\x80after".to_vec())
        );
    }
}
