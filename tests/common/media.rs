//! A webrtc-rs client peer that speaks Yoom's protocol like a browser: one WebSocket, a publish
//! connection it offers on, a subscribe connection the server offers on, trickle ICE both ways.
//! It publishes synthetic VP8 and Opus RTP whose payload carries a sequence marker, and counts
//! what it receives per publisher (msid) and kind.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};
use yoom::load::member::local_track;
use yoom::sfu::peer::{build_peer_connection, EventForwarder, PeerEvent, PeerOptions};

use super::relay::{Blackout, LossyRelay};
use super::STEP;
use std::net::SocketAddr;

pub const VIDEO_SSRC: u32 = 0x1000_0001;
pub const AUDIO_SSRC: u32 = 0x1000_0002;
/// First payload byte of a test packet; the VP8 descriptor bit S=1 keeps it a plausible frame.
const TAG: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Publish,
    Subscribe,
}

/// What a subscriber received from one publisher's track.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub packets: u64,
    pub markers: Vec<u32>,
    pub ssrcs: Vec<u32>,
    pub payload_types: Vec<u8>,
    pub corrupt: u64,
    pub first_at: Option<Instant>,
    pub first_seq: Option<u16>,
    pub last_seq: u16,
    pub last_ssrc: u32,
}

/// (publisher member id = msid, "video"|"audio")
pub type TrackKey = (String, &'static str);

pub struct MediaPeer {
    pub id: String,
    out_tx: mpsc::UnboundedSender<Value>,
    pub messages: mpsc::UnboundedReceiver<Value>,
    pub received: Arc<Mutex<HashMap<TrackKey, Received>>>,
    /// Remote tracks currently attached, by key (to send PLIs from the subscriber side).
    pub remote_tracks: Arc<Mutex<HashMap<TrackKey, Arc<dyn TrackRemote>>>>,
    pub plis_received: Arc<AtomicUsize>,
    pub pli_times: Arc<Mutex<Vec<Instant>>>,
    pub offers_received: Arc<AtomicUsize>,
    pub last_offer_sdp: Arc<Mutex<String>>,
    pub video_sent: Arc<AtomicU32>,
    /// Packets the subscribe relay dropped (when `subscribe_drop_every` is set).
    pub relay_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// Cuts the subscribe relay (with `subscribe_relay` or `subscribe_drop_every`) for a while.
    pub subscribe_blackout: Arc<Blackout>,
    /// The server's answer to this peer's publish offer.
    pub publish_answer_sdp: String,
    /// Every ICE candidate the server announced (in SDPs and trickled), as sent.
    pub server_candidates: Arc<Mutex<Vec<String>>>,
    sending: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    publish_pc: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    subscribe_pc: Arc<Mutex<Option<Arc<dyn PeerConnection>>>>,
    publish_events: Option<mpsc::UnboundedSender<(Side, PeerEvent)>>,
}

#[derive(Clone)]
pub struct PeerConfig {
    /// Delay before answering a subscribe offer (to provoke coalescing).
    pub answer_delay: Duration,
    /// Route the subscribe connection through a relay that drops every n-th RTP packet sent to
    /// this peer.
    pub subscribe_drop_every: Option<u64>,
    /// Route the subscribe connection through a relay (lossless unless `subscribe_drop_every`
    /// is set) whose `subscribe_blackout` switch cuts it.
    pub subscribe_relay: bool,
    /// Subscribe offers to drop unanswered (as a client that lost them would).
    pub ignore_offers: usize,
    /// Rewrites the first subscribe answer before it is sent (the peer itself applies the
    /// real one), as a buggy client would.
    pub tamper_first_answer: Option<fn(&str) -> String>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            answer_delay: Duration::ZERO,
            subscribe_drop_every: None,
            subscribe_relay: false,
            ignore_offers: 0,
            tamper_first_answer: None,
        }
    }
}

/// Replaces the address of an ICE candidate line/string with `to`; returns the old address.
fn redirect_candidate(candidate: &str, to: SocketAddr) -> (String, Option<SocketAddr>) {
    let mut parts: Vec<String> = candidate.split(' ').map(str::to_owned).collect();
    if parts.len() < 6 {
        return (candidate.to_owned(), None);
    }
    let old = format!("{}:{}", parts[4], parts[5]).parse().ok();
    parts[4] = to.ip().to_string();
    parts[5] = to.port().to_string();
    (parts.join(" "), old)
}

fn record_candidates(into: &Mutex<Vec<String>>, sdp: &str) {
    let found = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(str::to_owned);
    into.lock().unwrap().extend(found);
}

/// The `address:port` of a candidate string.
pub fn candidate_addr(candidate: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = candidate.split(' ').collect();
    format!("{}:{}", parts.get(4)?, parts.get(5)?).parse().ok()
}

fn options() -> PeerOptions {
    PeerOptions {
        udp_ips: vec!["127.0.0.1".parse().unwrap()],
        ..PeerOptions::default()
    }
}

impl MediaPeer {
    /// Connects, joins `room` as `name` and is ready to subscribe.
    pub async fn join(ws_url: &str, room: &str, name: &str) -> MediaPeer {
        Self::join_with(ws_url, room, name, PeerConfig::default()).await
    }

    pub async fn join_with(ws_url: &str, room: &str, name: &str, cfg: PeerConfig) -> MediaPeer {
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(ws_url))
            .await
            .unwrap()
            .unwrap();
        let (mut ws_tx, mut ws_rx) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Value>();
        let (msg_tx, messages) = mpsc::unbounded_channel::<Value>();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<(Side, PeerEvent)>();

        let mut peer = MediaPeer {
            id: String::new(),
            out_tx: out_tx.clone(),
            messages,
            received: Default::default(),
            remote_tracks: Default::default(),
            plis_received: Default::default(),
            pli_times: Default::default(),
            offers_received: Default::default(),
            last_offer_sdp: Default::default(),
            video_sent: Default::default(),
            relay_dropped: Default::default(),
            subscribe_blackout: Default::default(),
            publish_answer_sdp: String::new(),
            server_candidates: Default::default(),
            sending: Arc::new(AtomicBool::new(true)),
            tasks: Vec::new(),
            publish_pc: Default::default(),
            subscribe_pc: Default::default(),
            publish_events: None,
        };

        // Writer.
        peer.tasks.push(tokio::spawn(async move {
            while let Some(v) = out_rx.recv().await {
                if ws_tx.send(Message::text(v.to_string())).await.is_err() {
                    break;
                }
            }
            let _ = ws_tx.close().await;
        }));

        // Driver: server messages and both connections' events.
        let (publish_pc, subscribe_pc) = (peer.publish_pc.clone(), peer.subscribe_pc.clone());
        let (received, remote_tracks) = (peer.received.clone(), peer.remote_tracks.clone());
        let (offers, last_offer) = (peer.offers_received.clone(), peer.last_offer_sdp.clone());
        let server_candidates = peer.server_candidates.clone();
        let out = out_tx.clone();
        let events_for_sub = events_tx.clone();
        let relay_dropped = peer.relay_dropped.clone();
        let blackout = peer.subscribe_blackout.clone();
        peer.tasks.push(tokio::spawn(async move {
            let mut pending: HashMap<Side, Vec<RTCIceCandidateInit>> = HashMap::new();
            let mut have_remote: HashMap<Side, bool> = HashMap::new();
            let mut relay: Option<LossyRelay> = None;
            let drop_every = cfg.subscribe_drop_every;
            let relayed = cfg.subscribe_relay || drop_every.is_some();
            let mut to_ignore = cfg.ignore_offers;
            let mut tamper = cfg.tamper_first_answer;
            loop {
                tokio::select! {
                    frame = ws_rx.next() => {
                        let Some(Ok(Message::Text(t))) = frame else {
                            if matches!(frame, Some(Ok(_))) { continue }
                            break;
                        };
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        match v["type"].as_str() {
                            Some("answer") if v["pc"] == "publish" => {
                                record_candidates(&server_candidates, v["sdp"].as_str().unwrap_or_default());
                                let pc = publish_pc.lock().unwrap().clone().unwrap();
                                let answer = RTCSessionDescription::answer(v["sdp"].as_str().unwrap().to_owned()).unwrap();
                                // (the sdp stays in `v` for the test to inspect)
                                pc.set_remote_description(answer).await.unwrap();
                                have_remote.insert(Side::Publish, true);
                                for c in pending.remove(&Side::Publish).unwrap_or_default() {
                                    let _ = pc.add_ice_candidate(c).await;
                                }
                                let _ = msg_tx.send(v);
                            }
                            Some("offer") if v["pc"] == "subscribe" => {
                                offers.fetch_add(1, Ordering::SeqCst);
                                let mut sdp = v["sdp"].as_str().unwrap().to_owned();
                                record_candidates(&server_candidates, &sdp);
                                if relayed {
                                    let mut lines = Vec::new();
                                    for line in sdp.split("\r\n") {
                                        if let Some(c) = line.strip_prefix("a=") .filter(|l| l.starts_with("candidate:")) {
                                            if relay.is_none() {
                                                if let Some(server) = candidate_addr(c) {
                                                    let r = LossyRelay::start_with(server, drop_every, blackout.clone()).await;
                                                    relay_dropped_link(&relay_dropped, &r);
                                                    relay = Some(r);
                                                }
                                            }
                                            let to = relay.as_ref().unwrap().client_facing;
                                            lines.push(format!("a={}", redirect_candidate(c, to).0));
                                        } else {
                                            lines.push(line.to_owned());
                                        }
                                    }
                                    sdp = lines.join("\r\n");
                                }
                                *last_offer.lock().unwrap() = sdp.clone();
                                if to_ignore > 0 {
                                    to_ignore -= 1;
                                    continue;
                                }
                                if !cfg.answer_delay.is_zero() {
                                    tokio::time::sleep(cfg.answer_delay).await;
                                }
                                let existing = subscribe_pc.lock().unwrap().clone();
                                let pc = match existing {
                                    Some(pc) => pc,
                                    None => {
                                        let handler = EventForwarder::new(Side::Subscribe, events_for_sub.clone());
                                        let pc = build_peer_connection(&options(), handler, None).await.unwrap();
                                        *subscribe_pc.lock().unwrap() = Some(pc.clone());
                                        pc
                                    }
                                };
                                pc.set_remote_description(RTCSessionDescription::offer(sdp).unwrap()).await.unwrap();
                                have_remote.insert(Side::Subscribe, true);
                                for c in pending.remove(&Side::Subscribe).unwrap_or_default() {
                                    let _ = pc.add_ice_candidate(c).await;
                                }
                                let answer = pc.create_answer(None).await.unwrap();
                                pc.set_local_description(answer).await.unwrap();
                                let local = pc.local_description().await.unwrap();
                                let mut answer_sdp = local.sdp;
                                if relayed {
                                    // The server must only learn this peer through the relay.
                                    answer_sdp = answer_sdp
                                        .split("\r\n")
                                        .filter(|l| !l.starts_with("a=candidate:"))
                                        .collect::<Vec<_>>()
                                        .join("\r\n");
                                }
                                if let Some(tamper) = tamper.take() {
                                    answer_sdp = tamper(&answer_sdp);
                                }
                                let _ = out.send(json!({"type":"answer","pc":"subscribe","sdp":answer_sdp}));
                                let _ = msg_tx.send(json!({"type":"offer","pc":"subscribe"}));
                            }
                            Some("candidate") => {
                                let side = if v["pc"] == "publish" { Side::Publish } else { Side::Subscribe };
                                let mut c: RTCIceCandidateInit = serde_json::from_value(v["candidate"].clone()).unwrap();
                                server_candidates.lock().unwrap().push(c.candidate.clone());
                                if side == Side::Subscribe && relayed {
                                    if relay.is_none() {
                                        if let Some(server) = candidate_addr(&c.candidate) {
                                            let r = LossyRelay::start_with(server, drop_every, blackout.clone()).await;
                                            relay_dropped_link(&relay_dropped, &r);
                                            relay = Some(r);
                                        }
                                    }
                                    if let Some(r) = &relay {
                                        c.candidate = redirect_candidate(&c.candidate, r.client_facing).0;
                                    }
                                }
                                let pc = match side {
                                    Side::Publish => publish_pc.lock().unwrap().clone(),
                                    Side::Subscribe => subscribe_pc.lock().unwrap().clone(),
                                };
                                match pc {
                                    Some(pc) if *have_remote.get(&side).unwrap_or(&false) => {
                                        let _ = pc.add_ice_candidate(c).await;
                                    }
                                    _ => pending.entry(side).or_default().push(c),
                                }
                            }
                            _ => { let _ = msg_tx.send(v); }
                        }
                    }
                    Some((side, event)) = events_rx.recv() => match event {
                        PeerEvent::Candidate(_) if side == Side::Subscribe && relayed => {}
                        PeerEvent::Candidate(c) => {
                            let pc = if side == Side::Publish { "publish" } else { "subscribe" };
                            let _ = out.send(json!({"type":"candidate","pc":pc,"candidate":{
                                "candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index}}));
                        }
                        PeerEvent::Track(track) if side == Side::Subscribe => {
                            let (received, remote_tracks) = (received.clone(), remote_tracks.clone());
                            tokio::spawn(read_track(track, received, remote_tracks));
                        }
                        _ => {}
                    },
                }
            }
            let pcs: Vec<_> = [publish_pc.lock().unwrap().take(), subscribe_pc.lock().unwrap().take()]
                .into_iter()
                .flatten()
                .collect();
            for pc in pcs {
                let _ = pc.close().await;
            }
        }));

        let hello = peer.recv_type("hello").await;
        peer.id = hello["id"].as_str().unwrap().to_owned();
        peer.send(json!({"type":"join","room":room,"name":name}));
        let joined = peer.recv_type("joined").await;
        assert_eq!(joined["media"], true);
        // The publish connection is created later by `publish`; it reports to the same driver.
        peer.publish_events = Some(events_tx);
        peer
    }

    pub fn send(&self, v: Value) {
        let _ = self.out_tx.send(v);
    }

    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = tokio::time::timeout(STEP, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {ty}"))
                .expect("connection open");
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// Offers VP8 video and Opus audio on the publish connection and starts sending RTP:
    /// video at `video_pps` packets per second, audio at 50.
    pub async fn publish(&mut self, video_pps: u32) {
        let events = self.publish_events.clone().unwrap();
        let handler = EventForwarder::new(Side::Publish, events);
        let pc = build_peer_connection(&options(), handler, None)
            .await
            .unwrap();
        let video = local_track(
            &self.id,
            "cam",
            RtpCodecKind::Video,
            "video/VP8",
            VIDEO_SSRC,
        )
        .unwrap();
        let audio = local_track(
            &self.id,
            "mic",
            RtpCodecKind::Audio,
            "audio/opus",
            AUDIO_SSRC,
        )
        .unwrap();
        let video_sender = pc
            .add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        let audio_sender = pc
            .add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .unwrap();
        *self.publish_pc.lock().unwrap() = Some(pc.clone());
        let offer = pc.create_offer(None).await.unwrap();
        pc.set_local_description(offer).await.unwrap();
        let sdp = pc.local_description().await.unwrap().sdp;
        self.send(json!({"type":"offer","pc":"publish","sdp":sdp,"ref":"pub"}));
        let answer = self.recv_type("answer").await;
        assert_eq!(answer["ref"], "pub");
        self.publish_answer_sdp = answer["sdp"].as_str().unwrap().to_owned();

        let video_pt = video_sender
            .get_parameters()
            .await
            .unwrap()
            .rtp_parameters
            .codecs[0]
            .payload_type;
        let audio_pt = audio_sender
            .get_parameters()
            .await
            .unwrap()
            .rtp_parameters
            .codecs[0]
            .payload_type;

        // Count PLIs that reach this publisher.
        let (plis, times) = (self.plis_received.clone(), self.pli_times.clone());
        let v = video.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(event) = v.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                    for p in packets {
                        if p.as_any().is::<PictureLossIndication>() {
                            plis.fetch_add(1, Ordering::SeqCst);
                            times.lock().unwrap().push(Instant::now());
                        }
                    }
                }
            }
        }));
        let (sending, sent) = (self.sending.clone(), self.video_sent.clone());
        self.tasks.push(tokio::spawn(send_rtp(
            video,
            video_pt,
            VIDEO_SSRC,
            90_000 / video_pps.max(1),
            video_pps,
            sending.clone(),
            Some(sent),
        )));
        self.tasks.push(tokio::spawn(send_rtp(
            audio, audio_pt, AUDIO_SSRC, 960, 50, sending, None,
        )));
    }

    pub fn stop_sending(&self) {
        self.sending.store(false, Ordering::SeqCst);
    }

    pub fn resume_sending(&self) {
        self.sending.store(true, Ordering::SeqCst);
    }

    /// Waits until a subscribe offer newer than the `offers_before`-th sends nothing and does
    /// not mention `gone`'s stream: its tracks were withdrawn by a re-offer.
    pub async fn wait_offer_without(&self, offers_before: usize, gone: &str) {
        let sends = |sdp: &str| {
            sdp.lines()
                .any(|l| l.starts_with("a=sendonly") || l.starts_with("a=sendrecv"))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sdp = self.last_offer_sdp.lock().unwrap().clone();
            if self.offers_received.load(Ordering::SeqCst) > offers_before && !sends(&sdp) {
                assert!(!sdp.contains(&format!("a=msid:{gone} ")), "{sdp}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{gone}'s tracks are still offered:\n{sdp}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn received(&self, key: &TrackKey) -> Received {
        self.received
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for what was received from `key`.
    pub async fn wait_received(
        &self,
        key: &TrackKey,
        within: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + within;
        loop {
            let r = self.received(key);
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{key:?} not as expected in time: {} packets",
                r.packets
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a PLI for `key`'s track from this subscriber to the server.
    pub async fn send_pli(&self, key: &TrackKey) {
        let track = self.remote_tracks.lock().unwrap().get(key).cloned();
        if let Some(track) = track {
            let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
            let _ = track
                .write_rtcp(vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc: ssrc,
                })])
                .await;
        }
    }

    /// Sends a NACK from this subscriber for the `count` packets up to the last one received.
    pub async fn send_nack(&self, key: &TrackKey, count: u16) {
        let track = self
            .remote_tracks
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap();
        let r = self.received(key);
        let first = r.last_seq.wrapping_sub(count - 1);
        let mut lost_packets = 0u16;
        for i in 0..count.saturating_sub(1) {
            lost_packets |= 1 << i;
        }
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: r.last_ssrc,
            nacks: vec![NackPair {
                packet_id: first,
                lost_packets,
            }],
        };
        track.write_rtcp(vec![Box::new(nack)]).await.unwrap();
    }

    /// Closes the WebSocket (which leaves the room) and both connections.
    pub async fn leave(mut self) {
        self.stop_sending();
        drop(self.out_tx.clone());
        let pcs: Vec<_> = [
            self.publish_pc.lock().unwrap().take(),
            self.subscribe_pc.lock().unwrap().take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for pc in pcs {
            let _ = pc.close().await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn send_rtp(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    ssrc: u32,
    ts_step: u32,
    pps: u32,
    sending: Arc<AtomicBool>,
    sent: Option<Arc<AtomicU32>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / pps.max(1));
    let (mut seq, mut ts, mut marker): (u16, u32, u32) = (1, 0, 0);
    loop {
        tick.tick().await;
        if !sending.load(Ordering::SeqCst) {
            continue;
        }
        let mut payload = BytesMut::with_capacity(200);
        payload.put_u8(TAG);
        payload.put_u32(marker);
        for i in 0..100u8 {
            payload.put_u8(i ^ (marker as u8));
        }
        let pkt = rtp::Packet {
            header: rtp::Header {
                version: 2,
                marker: true,
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            },
            payload: payload.freeze(),
        };
        if track.write_rtp(pkt).await.is_err() {
            break;
        }
        if let Some(sent) = &sent {
            sent.store(marker + 1, Ordering::SeqCst);
        }
        marker += 1;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(ts_step);
    }
}

async fn read_track(
    track: Arc<dyn TrackRemote>,
    received: Arc<Mutex<HashMap<TrackKey, Received>>>,
    remote_tracks: Arc<Mutex<HashMap<TrackKey, Arc<dyn TrackRemote>>>>,
) {
    let msid = track.stream_id().await;
    let kind = if track.kind().await == RtpCodecKind::Video {
        "video"
    } else {
        "audio"
    };
    let key: TrackKey = (msid, kind);
    remote_tracks
        .lock()
        .unwrap()
        .insert(key.clone(), track.clone());
    while let Some(event) = track.poll().await {
        if let TrackRemoteEvent::OnRtpPacket(pkt) = event {
            let p = &pkt.payload;
            let mut r = received.lock().unwrap();
            let entry = r.entry(key.clone()).or_default();
            entry.packets += 1;
            entry.first_at.get_or_insert_with(Instant::now);
            entry.first_seq.get_or_insert(pkt.header.sequence_number);
            entry.last_seq = pkt.header.sequence_number;
            entry.last_ssrc = pkt.header.ssrc;
            if entry.ssrcs.last() != Some(&pkt.header.ssrc) {
                entry.ssrcs.push(pkt.header.ssrc);
            }
            if entry.payload_types.last() != Some(&pkt.header.payload_type) {
                entry.payload_types.push(pkt.header.payload_type);
            }
            if p.len() == 105 && p[0] == TAG {
                let marker = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
                let intact = (0..100u8).all(|i| p[5 + i as usize] == i ^ (marker as u8));
                if intact {
                    entry.markers.push(marker);
                } else {
                    entry.corrupt += 1;
                }
            } else {
                entry.corrupt += 1;
            }
        }
    }
    remote_tracks.lock().unwrap().remove(&key);
}

/// Shares the relay's drop counter with the peer (the relay lives in the driver task).
fn relay_dropped_link(counter: &Arc<std::sync::atomic::AtomicU64>, relay: &LossyRelay) {
    let (from, to) = (relay.dropped.clone(), counter.clone());
    tokio::spawn(async move {
        loop {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            if Arc::strong_count(&from) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A real publish offer (VP8 + Opus) from a throwaway webrtc-rs peer.
pub async fn publish_offer_sdp() -> String {
    let (events, _events_rx) = mpsc::unbounded_channel();
    let handler = EventForwarder::new(Side::Publish, events);
    let pc = build_peer_connection(&options(), handler, None)
        .await
        .unwrap();
    for (kind, mime, ssrc) in [
        (RtpCodecKind::Video, "video/VP8", VIDEO_SSRC),
        (RtpCodecKind::Audio, "audio/opus", AUDIO_SSRC),
    ] {
        let track = local_track("offer", "t", kind, mime, ssrc).unwrap();
        pc.add_track(track as Arc<dyn TrackLocal>).await.unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let sdp = pc.local_description().await.unwrap().sdp;
    let _ = pc.close().await;
    sdp
}
