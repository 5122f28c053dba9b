//! The per-packet, per-subscriber send path without the kernel: through webrtc-rs' sans-IO
//! core (`rtc`), as Yoom sent until its own outbound streams, and through those streams.
//!
//! Each subscriber connection is built as the server builds it (Yoom's codecs, send-only
//! interceptors, wire statistics, SRTP keys captured) and connected through ICE and DTLS to a
//! client peer, with datagrams handed over in memory. Then one 1,200-byte video packet is sent
//! per iteration, in two ways:
//! - `rtc`: `RTCRtpSender::write_rtp` + `poll_write` through the chain Yoom used until then
//!   (NACK responder and sender reports added back): the packet is moved through every
//!   handler, kept by the NACK responder, counted, encrypted and queued;
//! - `outbound stream`: `OutboundStream::send` and the send batch's flush, what the server
//!   does now: marshal into the batch's buffer, encrypt there in place with the captured keys,
//!   hand the datagram to the socket (here one that keeps it in memory, one `poll_send` per
//!   datagram where the server's kernel socket takes a `sendmmsg`), keep the packet for NACKs,
//!   count it.
//!
//! With 100 connections written in turn the figures include what touching 100 connections'
//! state costs the caches. Before timing, each way's datagram must decrypt at the client.
//! docs/benchmarks.md puts these next to the server's whole cost per packet.
//! Run: `cargo bench --bench rtc_send_path`.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput,
};
use rtc::interceptor::{NackResponderBuilder, SenderReportBuilder, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use webrtc::runtime::{AsyncUdpSocket, RecvMeta, Transmit};
use yoom::metrics::Metrics;
use yoom::sfu::codecs::{media_engine_and_interceptors, supported_codecs, MediaDirection};
use yoom::sfu::outbound_stream::{OutboundStream, Route};
use yoom::sfu::send_batch::SendBatch;
use yoom::sfu::send_connection::host_candidate;
use yoom::sfu::srtp_keys::{capturable_profiles, KeyCapture};
use yoom::sfu::wire_stats::{ConnectionStats, Side, WireStatsConfig};

const PAYLOAD_LEN: usize = 1_200;

/// A server-side subscribe connection and the client it is connected to.
struct Pair {
    server: RTCPeerConnection,
    client: RTCPeerConnection,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: u8,
    connected: [bool; 2],
    capture: Arc<KeyCapture>,
    /// Set once connected.
    outbound: Option<(Arc<OutboundStream>, Arc<Route>, Arc<MemorySocket>)>,
    /// RTP packets the client accepted.
    received: usize,
    /// Reused, as a track's ingress task reuses its batch.
    batch: SendBatch,
}

/// A socket that keeps the last datagram sent, so the bench can check it and no kernel time
/// is counted.
#[derive(Debug)]
struct MemorySocket {
    addr: SocketAddr,
    last: Mutex<Vec<u8>>,
}

impl AsyncUdpSocket for MemorySocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn poll_send(
        &self,
        _cx: &mut Context<'_>,
        transmit: &Transmit<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let mut last = self.last.lock().expect("lock");
        last.clear();
        last.extend_from_slice(transmit.contents);
        Poll::Ready(Ok(transmit.contents.len()))
    }

    fn poll_recv(
        &self,
        _cx: &mut Context<'_>,
        _bufs: &mut [IoSliceMut<'_>],
        _meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
}

fn peer(
    direction: MediaDirection,
    metrics: &Arc<Metrics>,
    capture: Option<&Arc<KeyCapture>>,
) -> RTCPeerConnection {
    let wire_stats = (direction == MediaDirection::SendOnly).then(|| {
        WireStatsConfig {
            side: Side::Subscribe,
            metrics: metrics.clone(),
            shared: Arc::new(ConnectionStats::default()),
        }
        .build()
    });
    let (engine, mut registry) =
        media_engine_and_interceptors(direction, wire_stats).expect("codecs and interceptors");
    let mut settings = SettingEngineBuilder::new();
    if let Some(capture) = capture {
        // The chain Yoom's subscribe connections had while `rtc` sent their media.
        registry = registry
            .with(Slot::NackResponder, NackResponderBuilder::new().build())
            .with(Slot::SenderReport, SenderReportBuilder::new().build());
        settings = settings
            .with_crypto_provider(capture.clone())
            .with_srtp_protection_profiles(capturable_profiles());
    }
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings.build())
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("peer connection")
}

impl Pair {
    /// The server offers (it controls ICE on subscribe connections, as Yoom's do) one video
    /// track with a VP8 encoding.
    fn new(index: u16, metrics: &Arc<Metrics>) -> Pair {
        let server_addr = SocketAddr::from(([10, 0, 0, 1], 7882));
        let client_addr = SocketAddr::from(([10, 0, 1, 1], 20_000 + index));
        let capture = KeyCapture::new().expect("crypto provider");
        let mut server = peer(MediaDirection::SendOnly, metrics, Some(&capture));
        let mut client = peer(MediaDirection::Both, metrics, None);
        let (vp8, _) = supported_codecs()
            .into_iter()
            .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
            .expect("VP8 is supported");
        let ssrc = 0x1000_0000 + u32::from(index);
        let sender = server
            .add_track(MediaStreamTrack::new(
                format!("publisher-{index}"),
                format!("video-{index}"),
                format!("publisher-{index}-video"),
                RtpCodecKind::Video,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: vp8.rtp_codec.clone(),
                    ..Default::default()
                }],
            ))
            .expect("add track");
        server
            .add_local_candidate(host_candidate(server_addr).expect("host candidate"))
            .expect("server candidate");
        client
            .add_local_candidate(host_candidate(client_addr).expect("host candidate"))
            .expect("client candidate");
        let offer = server.create_offer(None).expect("offer");
        server
            .set_local_description(Instant::now(), offer.clone())
            .expect("server local description");
        client
            .set_remote_description(Instant::now(), offer)
            .expect("client remote description");
        let answer = client.create_answer(None).expect("answer");
        client
            .set_local_description(Instant::now(), answer.clone())
            .expect("client local description");
        server
            .set_remote_description(Instant::now(), answer)
            .expect("server remote description");
        Pair {
            server,
            client,
            server_addr,
            client_addr,
            sender,
            ssrc,
            payload_type: vp8.payload_type,
            connected: [false; 2],
            capture,
            outbound: None,
            received: 0,
            batch: SendBatch::new(),
        }
    }

    /// Hands every pending datagram to the other side, handles due timers and notes when both
    /// sides are connected.
    fn drive(&mut self, now: Instant) {
        while let Some(datagram) = self.server.poll_write() {
            deliver(
                &mut self.client,
                &datagram.message,
                self.client_addr,
                self.server_addr,
                now,
            );
        }
        while let Some(datagram) = self.client.poll_write() {
            deliver(
                &mut self.server,
                &datagram.message,
                self.server_addr,
                self.client_addr,
                now,
            );
        }
        for (side, pc) in [&mut self.server, &mut self.client].into_iter().enumerate() {
            while let Some(event) = pc.poll_event() {
                if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                    assert_ne!(state, RTCPeerConnectionState::Failed, "connection failed");
                    self.connected[side] |= state == RTCPeerConnectionState::Connected;
                }
            }
            while let Some(message) = pc.poll_read() {
                if side == 1 && matches!(message.message, RTCMessage::RtpPacket(..)) {
                    self.received += 1;
                }
            }
            if pc.poll_timeout().is_some_and(|due| due <= now) {
                pc.handle_timeout(now).expect("timeout");
            }
        }
    }

    fn connected(&self) -> bool {
        self.connected == [true; 2]
    }

    /// The server's outbound stream for the track, on a route to the client with the keys
    /// captured from the handshake.
    fn open_outbound(&mut self) {
        let socket = Arc::new(MemorySocket {
            addr: self.server_addr,
            last: Mutex::new(Vec::new()),
        });
        let route = Arc::new(Route {
            keys: self.capture.local_keys().expect("SRTP keys captured"),
            socket: socket.clone(),
            // Not a kernel socket: the batch hands each datagram to `poll_send`.
            fd: None,
            ipv6_socket: false,
            peer: self.client_addr,
        });
        let stream = OutboundStream::new(self.sender, true);
        stream.set_route(Some(route.clone()));
        self.outbound = Some((stream, route, socket));
    }

    /// One packet through the server's outbound stream: returns the datagram's length.
    fn send_outbound(&mut self, packet: &rtp::Packet, metrics: &Metrics) -> usize {
        let mut packet = packet.clone();
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        let (stream, _, socket) = self.outbound.as_ref().expect("outbound stream");
        stream
            .send(packet, &mut self.batch, metrics)
            .expect("outbound send");
        self.batch.flush(metrics);
        let sent = socket.last.lock().expect("lock").len();
        sent
    }

    /// Hands the outbound stream's last datagram to the client.
    fn deliver_outbound(&mut self) {
        let datagram = {
            let (_, _, socket) = self.outbound.as_ref().expect("outbound stream");
            let last = socket.last.lock().expect("lock");
            last.clone()
        };
        deliver(
            &mut self.client,
            &datagram,
            self.client_addr,
            self.server_addr,
            Instant::now(),
        );
        self.drive(Instant::now());
    }

    /// One packet through the server's `rtc` core: returns the SRTP datagram's length, and
    /// hands the datagram to the client if `deliver_it`.
    fn send(&mut self, packet: &rtp::Packet, now: Instant, deliver_it: bool) -> usize {
        let mut packet = packet.clone();
        packet.header.ssrc = self.ssrc;
        packet.header.payload_type = self.payload_type;
        self.server
            .rtp_sender(self.sender)
            .expect("sender")
            .write_rtp(now, packet)
            .expect("write_rtp");
        let mut sent = 0;
        while let Some(datagram) = self.server.poll_write() {
            sent += datagram.message.len();
            if deliver_it {
                deliver(
                    &mut self.client,
                    &datagram.message,
                    self.client_addr,
                    self.server_addr,
                    now,
                );
            }
        }
        if deliver_it {
            self.drive(now);
        }
        sent
    }
}

fn deliver(
    to: &mut RTCPeerConnection,
    datagram: &[u8],
    to_addr: SocketAddr,
    from_addr: SocketAddr,
    now: Instant,
) {
    to.handle_read(TaggedBytesMut {
        now,
        transport: TransportContext {
            local_addr: to_addr,
            peer_addr: from_addr,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message: BytesMut::from(datagram),
    })
    .expect("handle_read");
}

/// `n` connected pairs, driven together (ICE paces its checks in real time).
fn connected_pairs(n: u16) -> Vec<Pair> {
    let metrics = Arc::new(Metrics::new());
    let mut pairs: Vec<Pair> = (0..n).map(|i| Pair::new(i, &metrics)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pairs.iter().all(Pair::connected) {
        assert!(
            Instant::now() < deadline,
            "pairs did not connect within 30 s"
        );
        let now = Instant::now();
        for pair in &mut pairs {
            pair.drive(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the handshake's last messages and the first reports settle.
    for _ in 0..50 {
        let now = Instant::now();
        for pair in &mut pairs {
            pair.drive(now);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    pairs
}

fn video_packet(seq: u16) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: seq.is_multiple_of(4),
            sequence_number: seq,
            timestamp: u32::from(seq / 4) * 3_000,
            ..Default::default()
        },
        payload: Bytes::from(vec![0x5a; PAYLOAD_LEN]),
    }
}

fn send_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("send path");
    g.throughput(Throughput::Elements(1));
    let metrics = Metrics::new();
    for n in [1u16, 100] {
        let mut pairs = connected_pairs(n);
        let now = Instant::now();
        for pair in &mut pairs {
            // A protected packet is the payload plus the RTP header and the auth tag, and the
            // client must accept it, whichever way it was protected.
            let sent = pair.send(&video_packet(0), now, true);
            assert!(
                sent > PAYLOAD_LEN + 12,
                "no SRTP datagram came out ({sent} bytes)"
            );
            assert_eq!(pair.received, 1, "the client did not accept rtc's packet");
            pair.open_outbound();
            let sent = pair.send_outbound(&video_packet(1), &metrics);
            assert!(sent > PAYLOAD_LEN + 12, "outbound datagram of {sent} bytes");
            pair.deliver_outbound();
            assert_eq!(
                pair.received, 2,
                "the client did not accept the outbound packet"
            );
        }
        in_turn(
            &mut g,
            format!("write_rtp + poll_write of one packet, {n} connection(s) in turn"),
            &mut pairs,
            |pair, packet| pair.send(packet, Instant::now(), false),
        );
        in_turn(
            &mut g,
            format!("outbound stream send of one packet, {n} connection(s) in turn"),
            &mut pairs,
            |pair, packet| pair.send_outbound(packet, &metrics),
        );
    }
    g.finish();
}

/// Times `send` on the pairs in turn. Every pair gets the same sequence numbers, as
/// subscribers of one publisher do; the next number starts when all have had the packet.
fn in_turn(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: String,
    pairs: &mut [Pair],
    mut send: impl FnMut(&mut Pair, &rtp::Packet) -> usize,
) {
    let mut seq = 0u16;
    let mut next = 0usize;
    let mut packet = video_packet(0);
    g.bench_function(name, |b| {
        b.iter(|| {
            if next == 0 {
                seq = seq.wrapping_add(1);
                packet = video_packet(seq);
            }
            let sent = send(&mut pairs[next], &packet);
            next = (next + 1) % pairs.len();
            black_box(sent)
        })
    });
}

criterion_group!(benches, send_path);
criterion_main!(benches);
