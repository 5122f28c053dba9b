//! `yoom load`: drives a Yoom server with simulated members (webrtc-rs peers in this process)
//! and reports what a user choosing an SFU asks: loss, delay, time to first frame, and the
//! server's CPU per forwarded packet.

pub mod janus;
pub mod member;
pub mod stats;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::member::{spawn_member, MemberHandle, MemberPlan, RunCounters};
use crate::load::stats::{summarize, Summary, TrackStats};
use crate::proc_stat::ProcessSample;

/// Target of the step-3 benchmark: server CPU per forwarded packet.
const CPU_TARGET_US_PER_PACKET: f64 = 6.0;
const LOSS_TARGET_PERCENT: f64 = 0.5;
/// After every member connected, joining still costs (late DTLS handshakes, keyframes for the
/// last joiners) for about this long; the steady-state window starts after it.
const STEADY_SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Base URL of the Yoom server
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Rooms to create
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Publishing members per room (they also receive each other)
    #[arg(long, default_value_t = 1)]
    pub publishers: u32,
    /// Receive-only members per room
    #[arg(long, default_value_t = 5)]
    pub subscribers: u32,
    /// Seconds to measure once everyone has joined
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Members joining per second
    #[arg(long, default_value_t = 20.0)]
    pub join_rate: f64,
    /// Video bitrate per publisher (30 fps, keyframe every 3 s)
    #[arg(long, default_value_t = 1500)]
    pub video_kbps: u32,
    /// Size of one video packet's payload in bytes
    #[arg(long, default_value_t = 1200)]
    pub packet_bytes: usize,
    /// Also publish Opus-sized audio (50 packets/s)
    #[arg(long)]
    pub audio: bool,
    /// PID of the server, for CPU and memory from /proc (else from its /metrics)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Local address the simulated members' media binds to
    #[arg(long, default_value = "127.0.0.1")]
    pub media_ip: IpAddr,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Which SFU to load: yoom (at --url) or janus (at --janus-url)
    #[arg(long, value_enum, default_value = "yoom")]
    pub target: Target,
    /// Janus HTTP API (with --target janus), e.g. http://127.0.1.1:8088/janus
    #[arg(long, alias = "janus-api")]
    pub janus_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberError {
    pub error: String,
    pub members: u64,
}

/// Distinct errors with how many members hit each, most frequent first.
fn group_errors(errors: impl IntoIterator<Item = String>) -> Vec<MemberError> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for e in errors {
        *counts.entry(e).or_default() += 1;
    }
    let mut grouped: Vec<MemberError> = counts
        .into_iter()
        .map(|(error, members)| MemberError { error, members })
        .collect();
    grouped.sort_by_key(|e| std::cmp::Reverse(e.members));
    grouped
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Yoom,
    Janus,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub rooms: u32,
    pub publishers_per_room: u32,
    pub subscribers_per_room: u32,
    pub members: u32,
    pub members_failed: u64,
    /// Why members failed: each distinct error once, most frequent first.
    pub member_errors: Vec<MemberError>,
    pub video_streams_expected: u64,
    pub duration_s: f64,
    pub video: Summary,
    pub video_packets_sent: u64,
    pub server_cpu_s: Option<f64>,
    pub server_rss_mib: Option<f64>,
    pub server_packets_forwarded: Option<u64>,
    pub server_cpu_us_per_forwarded_packet: Option<f64>,
    /// Packets (video and audio) subscribers received: the same count for every target.
    pub packets_delivered: u64,
    pub server_cpu_us_per_delivered_packet: Option<f64>,
    /// The steady-state window: from `STEADY_SETTLE` after every member connected to the end,
    /// so the figures below leave out joining (ICE, DTLS handshakes, first keyframes).
    pub steady_s: Option<f64>,
    pub server_cpu_s_steady: Option<f64>,
    /// Server CPU in the steady window over the packets subscribers received in it.
    pub server_cpu_us_per_delivered_packet_steady: Option<f64>,
    /// The user-mode part of the figure above (`--server-pid` only): the server's own code.
    /// The rest is the kernel's, which on loopback also runs the receivers' network stack and
    /// wakes them; on a network their machines do that.
    pub server_user_cpu_us_per_delivered_packet_steady: Option<f64>,
    pub target: Target,
    pub tool_cpu_percent: f64,
    pub tool_was_bottleneck: bool,
    pub verdict: String,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    if args.rooms == 0 || args.publishers == 0 {
        bail!("--rooms and --publishers must be at least 1");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let (metrics_addr, janus) = match args.target {
        Target::Yoom => (Some(http_address(&base)?), None),
        // Janus has no Yoom metrics; CPU and memory come from --server-pid only.
        Target::Janus => {
            let url = args.janus_url.as_deref().ok_or_else(|| {
                anyhow!("--target janus needs --janus-url (e.g. http://127.0.1.1:8088/janus)")
            })?;
            (None, Some(janus::JanusApi::parse(url)?))
        }
    };
    let ws_url = format!("{}/ws", base.replacen("http", "ws", 1));
    let counters = Arc::new(RunCounters::default());

    let server_before = server_sample(&args, metrics_addr).await;
    let tool_before = ProcessSample::of_self();
    let started = Instant::now();

    let mut members: Vec<MemberHandle> = Vec::new();
    let per_room = args.publishers + args.subscribers;
    let total = args.rooms * per_room;
    let join_gap = Duration::from_secs_f64(1.0 / args.join_rate.max(0.1));
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    for r in 0..args.rooms {
        for m in 0..per_room {
            let plan = MemberPlan {
                ws_url: ws_url.clone(),
                room: format!("load-{r}"),
                name: format!(
                    "r{r}-{}{m}",
                    if m < args.publishers { "pub" } else { "sub" }
                ),
                publish: m < args.publishers,
                video_kbps: args.video_kbps,
                video_packet_bytes: args.packet_bytes,
                audio: args.audio,
                udp_ip: args.media_ip,
            };
            members.push(match &janus {
                None => spawn_member(plan, counters.clone()),
                Some(api) => janus::spawn_janus_member(
                    api.clone(),
                    r,
                    args.publishers,
                    plan,
                    counters.clone(),
                ),
            });
            tokio::time::sleep(join_gap).await;
        }
    }
    let _ = member::wait_until(Duration::from_secs(30), || {
        counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
            >= u64::from(total)
    })
    .await;
    let measure_until = Instant::now() + Duration::from_secs(args.duration);
    let steady_from = Instant::now() + STEADY_SETTLE.min(Duration::from_secs(args.duration) / 4);
    let mut steady_start: Option<(Instant, Option<ServerSample>, u64)> = None;
    let mut last_received = 0;
    while Instant::now() < measure_until {
        progress.tick().await;
        if steady_start.is_none() && Instant::now() >= steady_from {
            steady_start = Some((
                Instant::now(),
                server_sample(&args, metrics_addr).await,
                counters.packets_received.load(Ordering::Relaxed),
            ));
        }
        let received = counters.video_packets_received.load(Ordering::Relaxed);
        if !args.json {
            eprintln!(
                "[{:>4.0}s] members {}/{} · video in {:>7} pkt/s · sent {} · PLIs at publishers {}{}",
                started.elapsed().as_secs_f64(),
                counters.connected.load(Ordering::Relaxed),
                total,
                received - last_received,
                counters.video_packets_sent.load(Ordering::Relaxed),
                counters.plis_received.load(Ordering::Relaxed),
                match counters.failed.load(Ordering::Relaxed) {
                    0 => String::new(),
                    n => format!(" · {n} FAILED"),
                }
            );
        }
        last_received = received;
    }
    let server_after = server_sample(&args, metrics_addr).await;
    let delivered_at_end = counters.packets_received.load(Ordering::Relaxed);
    let steady_s = steady_start
        .as_ref()
        .map(|(at, _, _)| at.elapsed().as_secs_f64());
    let tool_after = ProcessSample::of_self();
    let elapsed = started.elapsed();

    let mut video_tracks: Vec<TrackStats> = Vec::new();
    let mut errors = Vec::new();
    for m in members {
        let tracks = m.tracks.clone();
        if let Err(e) = m.finish().await {
            errors.push(format!("{e:#}"));
        }
        let tracks = tracks.lock().unwrap_or_else(|p| p.into_inner());
        video_tracks.extend(
            tracks
                .iter()
                .filter(|((_, kind), _)| *kind == RtpCodecKind::Video)
                .map(|(_, s)| s.clone()),
        );
    }
    let expected_streams = u64::from(args.rooms)
        * (u64::from(args.subscribers) * u64::from(args.publishers)
            + u64::from(args.publishers) * u64::from(args.publishers - 1));
    let video = summarize(video_tracks.iter(), expected_streams);

    let cpu_s = match (&server_before, &server_after) {
        (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
        _ => None,
    };
    let forwarded = match (&server_before, &server_after) {
        (Some(a), Some(b)) => match (a.packets_forwarded, b.packets_forwarded) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        },
        _ => None,
    };
    let cpu_per_packet = match (cpu_s, forwarded) {
        (Some(c), Some(f)) if f > 0 => Some(c * 1e6 / f as f64),
        _ => None,
    };
    let delivered = counters.packets_received.load(Ordering::Relaxed);
    let cpu_per_delivered = match cpu_s {
        Some(c) if delivered > 0 => Some(c * 1e6 / delivered as f64),
        _ => None,
    };
    // What a server counter grew by over the steady window.
    let steady_delta =
        |value: fn(&ServerSample) -> Option<f64>| match (&steady_start, &server_after) {
            (Some((_, Some(a), _)), Some(b)) => Some(value(b)? - value(a)?),
            _ => None,
        };
    let cpu_s_steady = steady_delta(|s| Some(s.cpu_seconds));
    let per_delivered_steady = |cpu_s: Option<f64>| match (cpu_s, &steady_start) {
        (Some(c), Some((_, _, from))) if delivered_at_end > *from => {
            Some(c * 1e6 / (delivered_at_end - from) as f64)
        }
        _ => None,
    };
    let cpu_per_delivered_steady = per_delivered_steady(cpu_s_steady);
    let user_cpu_per_delivered_steady = per_delivered_steady(steady_delta(|s| s.user_seconds));
    let tool_cpu_s = tool_after.cpu_seconds - tool_before.cpu_seconds;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let tool_cpu_percent = 100.0 * tool_cpu_s / elapsed.as_secs_f64();
    // With the server pinned elsewhere the tool may use every other core; near that, the tool
    // and not the server limits what was measured.
    let tool_was_bottleneck = tool_cpu_percent >= 90.0 * (cores - 1.0).max(1.0);
    let mut failures = Vec::new();
    if video.loss_percent >= LOSS_TARGET_PERCENT {
        failures.push(format!(
            "loss {:.2}% ≥ {LOSS_TARGET_PERCENT}%",
            video.loss_percent
        ));
    }
    if video.subscribers_without_video > 0 {
        failures.push(format!(
            "{} streams never arrived",
            video.subscribers_without_video
        ));
    }
    // The target is a steady-state cost; the whole run's (joins included) is reported beside it.
    let judged = cpu_per_delivered_steady
        .map(|c| (c, "per delivered packet in steady state"))
        .or(cpu_per_packet.map(|c| (c, "per forwarded packet")))
        .or(cpu_per_delivered.map(|c| (c, "per delivered packet")));
    if let Some((c, what)) = judged {
        if c > CPU_TARGET_US_PER_PACKET {
            failures.push(format!(
                "{c:.2} µs server CPU {what} > the {CPU_TARGET_US_PER_PACKET} µs target"
            ));
        }
    }
    let verdict = if failures.is_empty() {
        format!(
            "PASS: {} streams, loss {:.3}%{}",
            video.tracks,
            video.loss_percent,
            cpu_per_delivered_steady.map_or(String::new(), |c| format!(
                ", {c:.2} µs server CPU per delivered packet in steady state"
            ))
        )
    } else {
        format!("FAIL: {}", failures.join("; "))
    } + if tool_was_bottleneck {
        " (WARNING: the load tool itself was near its CPU limit; the server may be able to do more)"
    } else {
        ""
    };
    Ok(Report {
        rooms: args.rooms,
        publishers_per_room: args.publishers,
        subscribers_per_room: args.subscribers,
        members: total,
        members_failed: counters.failed.load(Ordering::Relaxed),
        member_errors: group_errors(errors),
        video_streams_expected: expected_streams,
        duration_s: elapsed.as_secs_f64(),
        video,
        video_packets_sent: counters.video_packets_sent.load(Ordering::Relaxed),
        server_cpu_s: cpu_s,
        server_rss_mib: server_after
            .as_ref()
            .and_then(|s| s.rss_bytes)
            .map(|b| b as f64 / 1048576.0),
        server_packets_forwarded: forwarded,
        server_cpu_us_per_forwarded_packet: cpu_per_packet,
        packets_delivered: delivered,
        server_cpu_us_per_delivered_packet: cpu_per_delivered,
        steady_s,
        server_cpu_s_steady: cpu_s_steady,
        server_cpu_us_per_delivered_packet_steady: cpu_per_delivered_steady,
        server_user_cpu_us_per_delivered_packet_steady: user_cpu_per_delivered_steady,
        target: args.target,
        tool_cpu_percent,
        tool_was_bottleneck,
        verdict,
    })
}

/// Prints the report as a table (or JSON).
pub fn print_report(report: &Report, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    }
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2} {unit}"));
    let v = &report.video;
    let rows = [
        (
            "scenario",
            format!(
                "{} room(s) × {} publisher(s) + {} subscriber(s)",
                report.rooms, report.publishers_per_room, report.subscribers_per_room
            ),
        ),
        (
            "members (failed)",
            format!("{} ({})", report.members, report.members_failed),
        ),
        (
            "member errors",
            if report.member_errors.is_empty() {
                "none".to_owned()
            } else {
                report
                    .member_errors
                    .iter()
                    .map(|e| format!("{} × {}", e.members, e.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        (
            "video streams received / expected",
            format!("{} / {}", v.tracks, report.video_streams_expected),
        ),
        (
            "video packets sent / received",
            format!("{} / {}", report.video_packets_sent, v.packets_received),
        ),
        (
            "loss",
            format!(
                "{:.3} % ({} of {})",
                v.loss_percent, v.packets_lost, v.packets_expected
            ),
        ),
        ("out of order", v.out_of_order.to_string()),
        ("jitter (mean)", format!("{:.2} ms", v.jitter_ms_mean)),
        (
            "one-way delay p50 / p95 / p99",
            format!(
                "{} / {} / {}",
                opt(v.delay_ms_p50, "ms"),
                opt(v.delay_ms_p95, "ms"),
                opt(v.delay_ms_p99, "ms")
            ),
        ),
        (
            "join → first video packet p50 / p95",
            format!(
                "{} / {}",
                opt(v.first_video_packet_ms_p50, "ms"),
                opt(v.first_video_packet_ms_p95, "ms")
            ),
        ),
        (
            "join → first keyframe p50 / p95",
            format!(
                "{} / {}",
                opt(v.first_keyframe_ms_p50, "ms"),
                opt(v.first_keyframe_ms_p95, "ms")
            ),
        ),
        ("server CPU", opt(report.server_cpu_s, "s")),
        ("server RSS", opt(report.server_rss_mib, "MiB")),
        (
            "server packets forwarded",
            report
                .server_packets_forwarded
                .map_or("n/a".into(), |n| n.to_string()),
        ),
        (
            "server CPU per forwarded packet",
            opt(report.server_cpu_us_per_forwarded_packet, "µs"),
        ),
        (
            "… per delivered packet, steady state",
            format!(
                "{} (last {})",
                opt(report.server_cpu_us_per_delivered_packet_steady, "µs"),
                opt(report.steady_s, "s")
            ),
        ),
        (
            "… of which the server's own code (user)",
            opt(report.server_user_cpu_us_per_delivered_packet_steady, "µs"),
        ),
        ("load tool CPU", format!("{:.0} %", report.tool_cpu_percent)),
    ];
    for (k, val) in rows {
        writeln!(out, "{k:<38} {val}")?;
    }
    writeln!(out, "{}", report.verdict)
}

struct ServerSample {
    cpu_seconds: f64,
    /// Only from /proc (`--server-pid`): Yoom's metrics do not split user and system time.
    user_seconds: Option<f64>,
    rss_bytes: Option<u64>,
    packets_forwarded: Option<u64>,
}

/// `metrics_addr`: where Yoom's `/metrics` answers (`None` for another SFU).
async fn server_sample(args: &LoadArgs, metrics_addr: Option<SocketAddr>) -> Option<ServerSample> {
    let metrics = match metrics_addr {
        Some(addr) => http_get(addr, "/metrics").await.ok(),
        None => None,
    };
    let metric = |name: &str| -> Option<f64> {
        metrics.as_ref()?.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    };
    let packets_forwarded = metric("yoom_packets_forwarded_total").map(|v| v as u64);
    if let Some(pid) = args.server_pid {
        let s = ProcessSample::of_pid(pid).ok()?;
        return Some(ServerSample {
            cpu_seconds: s.cpu_seconds,
            user_seconds: Some(s.user_seconds),
            rss_bytes: Some(s.rss_bytes),
            packets_forwarded,
        });
    }
    Some(ServerSample {
        cpu_seconds: metric("yoom_process_cpu_seconds_total")?,
        user_seconds: None,
        rss_bytes: metric("yoom_process_resident_memory_bytes").map(|v| v as u64),
        packets_forwarded,
    })
}

fn http_address(base: &str) -> anyhow::Result<SocketAddr> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("--url must start with http:// (got {base})"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("no address for {host}"))
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_errors_are_grouped_most_frequent_first() {
        let grouped = group_errors(
            [
                "429 Too Many Requests",
                "ICE failed",
                "429 Too Many Requests",
            ]
            .map(String::from),
        );
        assert_eq!(
            grouped,
            vec![
                MemberError {
                    error: "429 Too Many Requests".into(),
                    members: 2
                },
                MemberError {
                    error: "ICE failed".into(),
                    members: 1
                },
            ]
        );
        assert!(group_errors(Vec::new()).is_empty());
    }
}
