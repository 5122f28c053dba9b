//! `/metrics` while real media flows (webrtc-rs peers): counters rise, gauges match the room,
//! wire-level RTCP is counted, and everything live returns to 0 when the room empties.

mod common;

use std::time::{Duration, Instant};

use common::media::{MediaPeer, PeerConfig, TrackKey};
use common::{spawn_server_with_log, yoom_command, TestServer, STEP};

fn video(publisher: &MediaPeer) -> TrackKey {
    (publisher.id.clone(), "video")
}

async fn wait_metric(
    server: &TestServer,
    series: &str,
    ok: impl Fn(f64) -> bool,
    within: Duration,
) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = server.metric(series).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} = {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_with_media_is_counted_and_everything_returns_to_zero() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "metrics", "pub").await;
    let clean = MediaPeer::join(&url, "metrics", "clean").await;
    // Every 20th packet towards this subscriber is lost: NACKs come in, retransmissions go out.
    let lossy = MediaPeer::join_with(
        &url,
        "metrics",
        "lossy",
        PeerConfig {
            subscribe_drop_every: Some(20),
            ..PeerConfig::default()
        },
    )
    .await;
    publisher.publish(100).await;
    for s in [&clean, &lossy] {
        s.wait_received(&video(&publisher), STEP, |r| r.packets > 100)
            .await;
    }

    assert_eq!(server.metric("yoom_room_total").await, 1.0);
    assert_eq!(server.metric("yoom_participant_total").await, 3.0);
    assert_eq!(server.metric("yoom_published_tracks").await, 2.0);
    // The publisher has nothing to receive: no subscribe connection for it.
    assert_eq!(server.metric("yoom_peer_connections").await, 3.0);
    assert_eq!(
        server.metric("yoom_connection_total{pc=\"publish\"}").await,
        1.0
    );
    assert_eq!(
        server
            .metric("yoom_connection_total{pc=\"subscribe\"}")
            .await,
        2.0
    );

    // Counters rise while media flows.
    let forwarded = server.metric("yoom_packets_forwarded_total").await;
    let bytes = server.metric("yoom_bytes_forwarded_total").await;
    let out = "yoom_packet_total{direction=\"outgoing\",transmission=\"original\"}";
    let incoming = "yoom_packet_total{direction=\"incoming\",transmission=\"original\"}";
    let out_bytes = "yoom_packet_bytes{direction=\"outgoing\",transmission=\"original\"}";
    let (out_before, in_before) = (server.metric(out).await, server.metric(incoming).await);
    let out_bytes_before = server.metric(out_bytes).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.metric("yoom_packets_forwarded_total").await > forwarded + 50.0);
    assert!(server.metric("yoom_bytes_forwarded_total").await > bytes + 1_000.0);
    assert!(server.metric(out).await > out_before + 50.0);
    assert!(server.metric(incoming).await > in_before + 25.0);
    // Wire bytes include the RTP header: more than the payload bytes forwarded.
    let wire_bytes = server.metric(out_bytes).await - out_bytes_before;
    assert!(wire_bytes > 1_000.0, "{wire_bytes}");

    // The lossy subscriber's NACKs are counted and answered with retransmissions.
    wait_metric(
        &server,
        "yoom_nack_total{direction=\"incoming\"}",
        |v| v > 0.0,
        STEP,
    )
    .await;
    wait_metric(
        &server,
        "yoom_packet_total{direction=\"outgoing\",transmission=\"retransmit\"}",
        |v| v > 0.0,
        STEP,
    )
    .await;
    // Keyframe requests for the joiners went out to the publisher.
    assert!(
        server
            .metric("yoom_pli_total{direction=\"outgoing\"}")
            .await
            >= 1.0
    );
    // Receiver reports give round-trip time and jitter.
    wait_metric(&server, "yoom_rtt_ms_count", |v| v > 0.0, STEP).await;
    wait_metric(&server, "yoom_jitter_us_count", |v| v > 0.0, STEP).await;
    assert!(server.metric("yoom_forward_latency_us_count").await > 0.0);
    assert_eq!(
        server
            .metric("yoom_join_to_first_video_seconds_count")
            .await,
        2.0,
        "one first video packet per subscriber"
    );
    assert!(
        server
            .metric("yoom_negotiation_seconds_count{pc=\"publish\"}")
            .await
            >= 1.0
    );
    assert!(
        server
            .metric("yoom_negotiation_seconds_count{pc=\"subscribe\"}")
            .await
            >= 2.0
    );
    // No label carries a room or member id.
    let (_, text) = server.get("/metrics").await;
    for id in [&publisher.id, &clean.id, &lossy.id] {
        assert!(!text.contains(id.as_str()), "member id {id} in /metrics");
    }
    assert!(!text.contains("\"metrics\""), "room name in /metrics");

    publisher.leave().await;
    clean.leave().await;
    lossy.leave().await;
    for gauge in [
        "yoom_room_total",
        "yoom_participant_total",
        "yoom_published_tracks",
        "yoom_peer_connections",
        "yoom_media_tasks",
    ] {
        wait_metric(&server, gauge, |v| v == 0.0, Duration::from_secs(10)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_bind_moves_metrics_to_their_own_listener() {
    let (mut child, addr, log) = spawn_server_with_log(yoom_command().args([
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-bind",
        "127.0.0.1:0",
    ]));
    let metrics_addr: std::net::SocketAddr = {
        let lines = log.lock().unwrap();
        let line = lines
            .iter()
            .find_map(|l| l.split("metrics on http://").nth(1).map(str::to_owned))
            .unwrap_or_else(|| panic!("no metrics address logged: {lines:#?}"));
        line.trim().trim_end_matches("/metrics").parse().unwrap()
    };
    let (status, body) = common::http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE yoom_packet_total counter"), "{body}");
    let (status, _) = common::http_get(addr, "/metrics").await;
    assert_eq!(status, 404, "metrics must not stay on the public listener");
    let (status, _) = common::http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
    let _ = child.kill();
    let _ = child.wait();

    // A metrics address that is taken stops start-up with exit 2.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = yoom_command()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
        .args(["--metrics-bind", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("metrics.bind"), "{err}");
}
