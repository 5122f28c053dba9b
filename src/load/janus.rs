//! The same simulated members against a Janus VideoRoom (HTTP API), so both SFUs are measured
//! by one tool with one method. Each member has its own Janus session; publishers `join` +
//! `configure` with their offer, subscribers `join` with every publisher's feed and `start` with
//! their answer. SDP is exchanged with candidates included (no trickle).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use webrtc::peer_connection::{PeerConnection, RTCSessionDescription};

use crate::load::member::{
    measure_track, peer_options, start_publishing, MemberHandle, MemberPlan, RunCounters, TrackKey,
};
use crate::load::stats::TrackStats;
use crate::sfu::peer::{build_peer_connection, EventForwarder, PeerEvent};

/// Room id used for every load room (`base + room index`).
const ROOM_BASE: u64 = 7_000;

/// Where Janus' HTTP API answers: `--janus-url http://127.0.1.1:8088/janus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JanusApi {
    addr: SocketAddr,
    /// The API's base path (Janus' `base_path`, `/janus` unless configured otherwise).
    base: Arc<str>,
}

impl JanusApi {
    /// Accepts `http://host:port[/base]` (the base path defaults to `/janus`) or a bare
    /// `host:port`.
    pub fn parse(url: &str) -> anyhow::Result<JanusApi> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => bail!("--janus-url must be http:// (got {scheme}://)"),
            None => url,
        };
        let (host, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        use std::net::ToSocketAddrs;
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("--janus-url: cannot resolve {host:?} (want host:port)"))?
            .next()
            .ok_or_else(|| anyhow!("--janus-url: no address for {host}"))?;
        let path = path.trim_end_matches('/');
        let base = if path.is_empty() { "/janus" } else { path };
        Ok(JanusApi {
            addr,
            base: base.into(),
        })
    }

    fn path(&self, tail: &str) -> String {
        format!("{}{tail}", self.base)
    }
}

/// A Janus member: `publishers` is how many feeds a subscriber waits for in its room.
pub fn spawn_janus_member(
    api: JanusApi,
    room_index: u32,
    publishers: u32,
    plan: MemberPlan,
    counters: Arc<RunCounters>,
) -> MemberHandle {
    let tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (t, s) = (tracks.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let room = ROOM_BASE + u64::from(room_index);
        let r = janus_member(api, room, publishers, &plan, &counters, t, s).await;
        if r.is_err() {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    });
    MemberHandle::new(tracks, stop, task)
}

struct Session {
    api: JanusApi,
    id: u64,
    events: mpsc::UnboundedReceiver<Value>,
    poller: tokio::task::JoinHandle<()>,
}

static TRANSACTION: AtomicU64 = AtomicU64::new(1);

/// POSTs `body` to the API path `tail` (after the base path).
async fn post(api: &JanusApi, tail: &str, mut body: Value) -> anyhow::Result<Value> {
    body["transaction"] = json!(format!("t{}", TRANSACTION.fetch_add(1, Ordering::Relaxed)));
    let text = http(api.addr, "POST", &api.path(tail), Some(body.to_string())).await?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("Janus said: {text}"))?;
    if v["janus"] == "error" {
        bail!("Janus error: {}", v["error"]);
    }
    Ok(v)
}

async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(api).await?;
    let body = body.unwrap_or_default();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("bad HTTP answer from Janus"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Session {
    async fn create(api: JanusApi) -> anyhow::Result<Session> {
        let v = post(&api, "", json!({"janus":"create"})).await?;
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id"))?;
        let (tx, events) = mpsc::unbounded_channel();
        let (addr, poll_path) = (api.addr, api.path(&format!("/{id}?maxev=10")));
        let poller = tokio::spawn(async move {
            loop {
                let Ok(text) = http(addr, "GET", &poll_path, None).await else {
                    break;
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    break;
                };
                let list = match v {
                    Value::Array(list) => list,
                    other => vec![other],
                };
                for e in list {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Session {
            api,
            id,
            events,
            poller,
        })
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let v = post(
            &self.api,
            &format!("/{}", self.id),
            json!({"janus":"attach","plugin":"janus.plugin.videoroom"}),
        )
        .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id"))
    }

    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut m = json!({"janus":"message","body":body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        post(&self.api, &format!("/{}/{handle}", self.id), m).await
    }

    /// Waits for an asynchronous plugin event on `handle` satisfying `pred`.
    async fn event(&mut self, handle: u64, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = tokio::time::timeout(left, self.events.recv())
                .await
                .context("timed out waiting for a Janus event")?
                .ok_or_else(|| anyhow!("Janus session ended"))?;
            if e["sender"].as_u64() == Some(handle) && pred(&e) {
                if let Some(err) = e["plugindata"]["data"].get("error") {
                    bail!("videoroom error: {err}");
                }
                return Ok(e);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn ensure_room(session: &Session, handle: u64, room: u64) -> anyhow::Result<()> {
    let v = session
        .message(handle, json!({"request":"exists","room":room}), None)
        .await?;
    if v["plugindata"]["data"]["exists"] == true {
        return Ok(());
    }
    let v = session
        .message(
            handle,
            json!({"request":"create","room":room,"publishers":64,"bitrate":0,
                   "videocodec":"vp8","audiocodec":"opus","permanent":false}),
            None,
        )
        .await?;
    match v["plugindata"]["data"]["error_code"].as_u64() {
        None | Some(427) => Ok(()), // 427: created meanwhile by another member
        Some(_) => bail!("cannot create room: {}", v["plugindata"]["data"]),
    }
}

/// Builds a connection, waits for its candidates, and returns it with its events.
async fn gathered_local_sdp(
    pc: &Arc<dyn PeerConnection>,
    events: &mut mpsc::UnboundedReceiver<((), PeerEvent)>,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(((), PeerEvent::GatheringComplete))) => break,
            Ok(Some(_)) => continue,
            _ => bail!("ICE gathering did not complete"),
        }
    }
    Ok(pc
        .local_description()
        .await
        .ok_or_else(|| anyhow!("no local description"))?
        .sdp)
}

async fn janus_member(
    api: JanusApi,
    room: u64,
    publishers: u32,
    plan: &MemberPlan,
    counters: &Arc<RunCounters>,
    tracks: Arc<Mutex<HashMap<TrackKey, TrackStats>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut session = Session::create(api.clone()).await?;
    let joined_at = Instant::now();
    let mut pcs: Vec<Arc<dyn PeerConnection>> = Vec::new();
    let mut tasks = Vec::new();
    let mut own_feed: Option<u64> = None;

    let control = session.attach().await?;
    ensure_room(&session, control, room).await?;

    if plan.publish {
        let handle = control;
        session
            .message(
                handle,
                json!({"request":"join","ptype":"publisher","room":room,"display":plan.name}),
                None,
            )
            .await?;
        let joined = session
            .event(handle, |e| e["plugindata"]["data"]["videoroom"] == "joined")
            .await?;
        own_feed = joined["plugindata"]["data"]["id"].as_u64();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let pc = build_peer_connection(
            &peer_options(plan.udp_ip),
            EventForwarder::new((), events_tx),
            None,
        )
        .await?;
        let (_, senders) = start_publishing(&pc, plan, counters, &stop).await?;
        tasks.extend(senders);
        let offer = gathered_local_sdp(&pc, &mut events).await?;
        session
            .message(
                handle,
                json!({"request":"configure","audio":plan.audio,"video":true}),
                Some(json!({"type":"offer","sdp":offer})),
            )
            .await?;
        let answer = session.event(handle, |e| e.get("jsep").is_some()).await?;
        let sdp = answer["jsep"]["sdp"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
            .await?;
        pcs.push(pc);
    }
    counters.connected.fetch_add(1, Ordering::Relaxed);

    // Subscribe to every other publisher's feed once all are there.
    let lister = if plan.publish {
        session.attach().await?
    } else {
        control
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let feeds: Vec<u64> = loop {
        let v = session
            .message(
                lister,
                json!({"request":"listparticipants","room":room}),
                None,
            )
            .await?;
        let feeds: HashSet<u64> = v["plugindata"]["data"]["participants"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["publisher"] == true)
            .filter_map(|p| p["id"].as_u64())
            .filter(|id| Some(*id) != own_feed)
            .collect();
        let want = publishers as usize - usize::from(plan.publish);
        if feeds.len() >= want {
            break feeds.into_iter().collect();
        }
        if Instant::now() > deadline {
            bail!("only {} of {want} publishers appeared", feeds.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !feeds.is_empty() {
        let handle = session.attach().await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        session
            .message(
                handle,
                json!({"request":"join","ptype":"subscriber","room":room,"streams":streams}),
                None,
            )
            .await?;
        let offer = session.event(handle, |e| e.get("jsep").is_some()).await?;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let pc = build_peer_connection(
            &peer_options(plan.udp_ip),
            EventForwarder::new((), events_tx),
            None,
        )
        .await?;
        let sdp = offer["jsep"]["sdp"].as_str().unwrap_or_default().to_owned();
        pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        pc.set_local_description(answer).await?;
        // Tracks arrive as events while we wait for gathering; keep them.
        let mut early = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, events.recv()).await {
                Ok(Some(((), PeerEvent::GatheringComplete))) => break,
                Ok(Some(((), PeerEvent::Track(t)))) => early.push(t),
                Ok(Some(_)) => continue,
                _ => bail!("ICE gathering did not complete"),
            }
        }
        let local = pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?;
        session
            .message(
                handle,
                json!({"request":"start","room":room}),
                Some(json!({"type":"answer","sdp":local.sdp})),
            )
            .await?;
        for t in early {
            tasks.push(tokio::spawn(measure_track(
                t,
                tracks.clone(),
                counters.clone(),
                joined_at,
            )));
        }
        let (tracks, counters) = (tracks.clone(), counters.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(((), event)) = events.recv().await {
                if let PeerEvent::Track(t) = event {
                    tokio::spawn(measure_track(
                        t,
                        tracks.clone(),
                        counters.clone(),
                        joined_at,
                    ));
                }
            }
        }));
        pcs.push(pc);
    }

    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for t in tasks {
        t.abort();
    }
    for pc in pcs {
        let _ = pc.close().await;
    }
    let _ = post(
        &api,
        &format!("/{}", session.id),
        json!({"janus":"destroy"}),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_janus_url_names_the_api_address_and_base_path() {
        let api = JanusApi::parse("http://127.0.1.1:8088/janus").unwrap();
        assert_eq!(api.addr, "127.0.1.1:8088".parse::<SocketAddr>().unwrap());
        assert_eq!(api.path("/42/7"), "/janus/42/7");
        // The base path defaults to Janus' own default, and a trailing slash is ignored.
        assert_eq!(
            JanusApi::parse("http://127.0.0.1:8088").unwrap().path(""),
            "/janus"
        );
        assert_eq!(
            JanusApi::parse("http://127.0.0.1:8088/api/v1/")
                .unwrap()
                .path("/1"),
            "/api/v1/1"
        );
        // The bare address `--janus-api` used to take still works.
        assert_eq!(JanusApi::parse("127.0.1.1:8088").unwrap(), api);
    }

    #[test]
    fn a_janus_url_that_cannot_be_used_says_why() {
        let https = JanusApi::parse("https://127.0.0.1:8089/janus").unwrap_err();
        assert!(https.to_string().contains("http://"), "{https}");
        let no_port = JanusApi::parse("http://127.0.0.1/janus").unwrap_err();
        assert!(no_port.to_string().contains("host:port"), "{no_port}");
    }

    #[test]
    fn chunked_answers_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
