//! One simulated member of the load tool: Yoom's signaling over a WebSocket, a publish
//! connection sending synthetic VP8-like video and Opus-sized audio, and a subscribe connection
//! whose tracks are measured without decoding.
//!
//! Payload layout (big endian): `[0]` 0x10 (a VP8 descriptor with S=1), `[1]` flags (bit 0:
//! keyframe), `[2..6]` per-track sequence number, `[6..14]` send time in µs since the Unix
//! epoch. The rest is filler up to the packet size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use crate::load::stats::TrackStats;
use crate::sfu::codecs::supported_codecs;
use crate::sfu::peer::{build_peer_connection, EventForwarder, PeerEvent, PeerOptions};

const PAYLOAD_TAG: u8 = 0x10;
const FLAG_KEYFRAME: u8 = 1;
const HEADER_BYTES: usize = 14;
const VIDEO_FPS: u32 = 30;
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(3);
/// A keyframe is this many times the size (in packets) of a delta frame.
const KEYFRAME_SIZE_FACTOR: u32 = 3;
const AUDIO_PPS: u32 = 50;
const AUDIO_PAYLOAD_BYTES: usize = 120;

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What one member does.
#[derive(Debug, Clone)]
pub struct MemberPlan {
    pub ws_url: String,
    pub room: String,
    pub name: String,
    pub publish: bool,
    pub video_kbps: u32,
    pub video_packet_bytes: usize,
    pub audio: bool,
    pub udp_ip: std::net::IpAddr,
}

/// Counters shared by every member of a run (for live progress).
#[derive(Default)]
pub struct RunCounters {
    pub connected: AtomicU64,
    pub video_packets_received: AtomicU64,
    /// Every packet (video and audio) subscribers received.
    pub packets_received: AtomicU64,
    pub video_packets_sent: AtomicU64,
    pub plis_received: AtomicU64,
    pub failed: AtomicU64,
}

/// A subscriber's measurements of one publisher's track.
pub type TrackKey = (String, RtpCodecKind);

pub struct MemberHandle {
    pub tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl MemberHandle {
    pub(crate) fn new(
        tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
        stop: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> MemberHandle {
        MemberHandle { tracks, stop, task }
    }

    /// Stops sending and closes the member; returns its error, if it failed.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow!("member task panicked: {e}")),
            Err(_) => Err(anyhow!("member did not stop in time")),
        }
    }
}

pub fn spawn_member(plan: MemberPlan, counters: Arc<RunCounters>) -> MemberHandle {
    let tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(run_member(plan, counters, tracks.clone(), stop.clone()));
    MemberHandle { tracks, stop, task }
}

pub(crate) fn peer_options(ip: std::net::IpAddr) -> PeerOptions {
    PeerOptions {
        udp_ips: vec![ip],
        ..PeerOptions::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Side {
    Publish,
    Subscribe,
}

async fn run_member(
    plan: MemberPlan,
    counters: Arc<RunCounters>,
    tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let result = member_body(&plan, &counters, tracks, stop).await;
    if result.is_err() {
        counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn member_body(
    plan: &MemberPlan,
    counters: &Arc<RunCounters>,
    tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(plan.ws_url.as_str()),
    )
    .await
    .context("WebSocket connect timed out")?
    .map_err(|e| match &e {
        tokio_tungstenite::tungstenite::Error::Http(r) if r.status().as_u16() == 429 => anyhow!(
            "WebSocket connect: 429, the server's cap on connections from one address \
             (yoom serve --max-connections-per-ip)"
        ),
        _ => anyhow::Error::new(e).context("WebSocket connect"),
    })?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<(Side, PeerEvent)>();
    let send = |v: Value| Message::text(v.to_string());

    ws_tx
        .send(send(
            json!({"type":"join","room":plan.room,"name":plan.name}),
        ))
        .await?;
    let joined_at = Instant::now();

    let mut publish_pc: Option<Arc<dyn PeerConnection>> = None;
    let mut subscribe_pc: Option<Arc<dyn PeerConnection>> = None;
    let mut pending: HashMap<Side, Vec<RTCIceCandidateInit>> = HashMap::new();
    let mut have_remote: HashMap<Side, bool> = HashMap::new();
    let mut senders: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut joined = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));

    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            frame = ws_rx.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Err(anyhow!("WebSocket: {e}")),
                    None => break Err(anyhow!("server closed the WebSocket")),
                };
                let v: Value = serde_json::from_str(text.as_str())?;
                match v["type"].as_str() {
                    Some("joined") if !joined => {
                        joined = true;
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                        if plan.publish {
                            let handler = EventForwarder::new(Side::Publish, events_tx.clone());
                            let pc = build_peer_connection(&peer_options(plan.udp_ip), handler, None).await?;
                            let (offer, tasks) = start_publishing(&pc, plan, counters, &stop).await?;
                            senders.extend(tasks);
                            publish_pc = Some(pc);
                            ws_tx.send(send(json!({"type":"offer","pc":"publish","sdp":offer}))).await?;
                        }
                    }
                    Some("answer") if v["pc"] == "publish" => {
                        let pc = publish_pc.clone().ok_or_else(|| anyhow!("answer without offer"))?;
                        let sdp = v["sdp"].as_str().unwrap_or_default().to_owned();
                        pc.set_remote_description(RTCSessionDescription::answer(sdp)?).await?;
                        have_remote.insert(Side::Publish, true);
                        for c in pending.remove(&Side::Publish).unwrap_or_default() {
                            let _ = pc.add_ice_candidate(c).await;
                        }
                    }
                    Some("offer") if v["pc"] == "subscribe" => {
                        let pc = match &subscribe_pc {
                            Some(pc) => pc.clone(),
                            None => {
                                let handler = EventForwarder::new(Side::Subscribe, events_tx.clone());
                                let pc = build_peer_connection(&peer_options(plan.udp_ip), handler, None).await?;
                                subscribe_pc = Some(pc.clone());
                                pc
                            }
                        };
                        let sdp = v["sdp"].as_str().unwrap_or_default().to_owned();
                        pc.set_remote_description(RTCSessionDescription::offer(sdp)?).await?;
                        have_remote.insert(Side::Subscribe, true);
                        for c in pending.remove(&Side::Subscribe).unwrap_or_default() {
                            let _ = pc.add_ice_candidate(c).await;
                        }
                        let answer = pc.create_answer(None).await?;
                        pc.set_local_description(answer).await?;
                        let local = pc.local_description().await.ok_or_else(|| anyhow!("no local description"))?;
                        ws_tx.send(send(json!({"type":"answer","pc":"subscribe","sdp":local.sdp}))).await?;
                    }
                    Some("candidate") => {
                        let side = if v["pc"] == "publish" { Side::Publish } else { Side::Subscribe };
                        let c: RTCIceCandidateInit = serde_json::from_value(v["candidate"].clone())?;
                        let pc = if side == Side::Publish { publish_pc.clone() } else { subscribe_pc.clone() };
                        match pc {
                            Some(pc) if have_remote.get(&side).copied().unwrap_or(false) => {
                                let _ = pc.add_ice_candidate(c).await;
                            }
                            _ => pending.entry(side).or_default().push(c),
                        }
                    }
                    Some("error") => break Err(anyhow!("server error: {}", v["message"])),
                    Some("bye") => break Err(anyhow!("server said bye: {}", v["reason"])),
                    _ => {}
                }
            }
            Some((side, event)) = events_rx.recv() => match event {
                PeerEvent::Candidate(c) => {
                    let pc = if side == Side::Publish { "publish" } else { "subscribe" };
                    ws_tx.send(send(json!({"type":"candidate","pc":pc,"candidate":{
                        "candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index}}))).await?;
                }
                PeerEvent::Track(track) if side == Side::Subscribe => {
                    tokio::spawn(measure_track(track, tracks.clone(), counters.clone(), joined_at));
                }
                _ => {}
            },
            _ = tick.tick() => {
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
            }
        }
    };

    for task in senders {
        task.abort();
    }
    let _ = ws_tx.close().await;
    for pc in [publish_pc, subscribe_pc].into_iter().flatten() {
        let _ = pc.close().await;
    }
    outcome
}

/// A local track of one of Yoom's codecs (by MIME type) with a fixed SSRC.
pub fn local_track(
    stream: &str,
    id: &str,
    kind: RtpCodecKind,
    mime: &str,
    ssrc: u32,
) -> anyhow::Result<Arc<TrackLocalStaticRTP>> {
    let codec = supported_codecs()
        .into_iter()
        .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|(c, _)| c.rtp_codec)
        .ok_or_else(|| anyhow!("codec {mime} not supported"))?;
    Ok(Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream.into(),
        id.into(),
        id.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    ))))
}

/// Adds the tracks, creates the offer, and starts the sender tasks (they send nothing useful
/// until the connection is up; webrtc-rs drops what it cannot encrypt yet).
pub(crate) async fn start_publishing(
    pc: &Arc<dyn PeerConnection>,
    plan: &MemberPlan,
    counters: &Arc<RunCounters>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(String, Vec<tokio::task::JoinHandle<()>>)> {
    let video = local_track(
        &plan.name,
        "camera",
        RtpCodecKind::Video,
        "video/VP8",
        0x5000_0001,
    )?;
    let video_sender = pc.add_track(video.clone() as Arc<dyn TrackLocal>).await?;
    let mut audio_parts = None;
    if plan.audio {
        let audio = local_track(
            &plan.name,
            "mic",
            RtpCodecKind::Audio,
            "audio/opus",
            0x5000_0002,
        )?;
        let sender = pc.add_track(audio.clone() as Arc<dyn TrackLocal>).await?;
        audio_parts = Some((audio, sender));
    }
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp;
    let pt = |codecs: &[rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters]| {
        codecs.first().map(|c| c.payload_type)
    };
    let video_pt = pt(&video_sender.get_parameters().await?.rtp_parameters.codecs)
        .ok_or_else(|| anyhow!("no video payload type"))?;

    let keyframe_wanted = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    {
        let (video, wanted, counters) = (video.clone(), keyframe_wanted.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(event) = video.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event {
                    if packets.iter().any(|p| {
                        p.as_any().is::<PictureLossIndication>()
                            || p.as_any().is::<FullIntraRequest>()
                    }) {
                        counters.plis_received.fetch_add(1, Ordering::Relaxed);
                        wanted.store(true, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let packets_per_second = (plan.video_kbps as usize * 1000
        / 8
        / plan.video_packet_bytes.max(HEADER_BYTES + 1))
    .max(1) as u32;
    tasks.push(tokio::spawn(send_video(
        video,
        video_pt,
        packets_per_second,
        plan.video_packet_bytes,
        keyframe_wanted,
        counters.clone(),
        stop.clone(),
    )));
    if let Some((audio, sender)) = audio_parts {
        let audio_pt = pt(&sender.get_parameters().await?.rtp_parameters.codecs)
            .ok_or_else(|| anyhow!("no audio payload type"))?;
        tasks.push(tokio::spawn(send_audio(audio, audio_pt, stop.clone())));
    }
    Ok((sdp, tasks))
}

fn payload(buf: &mut BytesMut, seq: u32, keyframe: bool, size: usize) -> Bytes {
    buf.clear();
    buf.put_u8(PAYLOAD_TAG);
    buf.put_u8(if keyframe { FLAG_KEYFRAME } else { 0 });
    buf.put_u32(seq);
    buf.put_u64(now_us());
    buf.put_bytes(0x5a, size.saturating_sub(HEADER_BYTES));
    buf.split().freeze()
}

async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    pt: u8,
    packets_per_second: u32,
    packet_bytes: usize,
    keyframe_wanted: Arc<AtomicBool>,
    counters: Arc<RunCounters>,
    stop: Arc<AtomicBool>,
) {
    let per_frame = (packets_per_second / VIDEO_FPS).max(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / VIDEO_FPS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = BytesMut::with_capacity(packet_bytes * 64);
    let (mut seq, mut rtp_seq, mut ts): (u32, u16, u32) = (0, 1, 0);
    let mut last_keyframe = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let keyframe = keyframe_wanted.swap(false, Ordering::Relaxed)
            || last_keyframe.elapsed() >= KEYFRAME_INTERVAL;
        if keyframe {
            last_keyframe = Instant::now();
        }
        let packets = if keyframe {
            per_frame * KEYFRAME_SIZE_FACTOR
        } else {
            per_frame
        };
        for i in 0..packets {
            let pkt = rtp::Packet {
                header: rtp::Header {
                    version: 2,
                    marker: i + 1 == packets,
                    payload_type: pt,
                    sequence_number: rtp_seq,
                    timestamp: ts,
                    ssrc: 0x5000_0001,
                    ..Default::default()
                },
                payload: payload(&mut buf, seq, keyframe, packet_bytes),
            };
            if track.write_rtp(pkt).await.is_err() {
                return;
            }
            counters.video_packets_sent.fetch_add(1, Ordering::Relaxed);
            seq += 1;
            rtp_seq = rtp_seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(90_000 / VIDEO_FPS);
    }
}

async fn send_audio(track: Arc<TrackLocalStaticRTP>, pt: u8, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / AUDIO_PPS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = BytesMut::with_capacity(AUDIO_PAYLOAD_BYTES * 64);
    let (mut seq, mut rtp_seq, mut ts): (u32, u16, u32) = (0, 1, 0);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let pkt = rtp::Packet {
            header: rtp::Header {
                version: 2,
                payload_type: pt,
                sequence_number: rtp_seq,
                timestamp: ts,
                ssrc: 0x5000_0002,
                ..Default::default()
            },
            payload: payload(&mut buf, seq, false, AUDIO_PAYLOAD_BYTES),
        };
        if track.write_rtp(pkt).await.is_err() {
            return;
        }
        seq += 1;
        rtp_seq = rtp_seq.wrapping_add(1);
        ts = ts.wrapping_add(960);
    }
}

pub(crate) async fn measure_track(
    track: Arc<dyn TrackRemote>,
    tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
    counters: Arc<RunCounters>,
    joined_at: Instant,
) {
    // Stream and track id together: Janus may give several publishers' tracks one stream id.
    let key: TrackKey = (
        format!("{}/{}", track.stream_id().await, track.track_id().await),
        track.kind().await,
    );
    let video = key.1 == RtpCodecKind::Video;
    tracks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key.clone())
        .or_default();
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(pkt) = event else {
            continue;
        };
        let p = &pkt.payload;
        if p.len() < HEADER_BYTES || p[0] != PAYLOAD_TAG {
            continue;
        }
        let keyframe = p[1] & FLAG_KEYFRAME != 0;
        let seq = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        let sent = u64::from_be_bytes([p[6], p[7], p[8], p[9], p[10], p[11], p[12], p[13]]);
        let now = now_us();
        let since_join = joined_at.elapsed().as_micros() as u64;
        if let Some(stats) = tracks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
        {
            stats.record(seq, keyframe, sent, now, since_join);
        }
        if video {
            counters
                .video_packets_received
                .fetch_add(1, Ordering::Relaxed);
        }
        counters.packets_received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Fails unless `cond` becomes true within `within`.
pub async fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
