//! Smoke test of `yoom load`: a tiny scenario against a real server; asserts only that media
//! flowed and was counted (speed targets live in the benchmarks, not in tests).

mod common;

use common::{test_config, TestServer};
use yoom::load::{run, LoadArgs};

fn tiny_scenario(server: &TestServer, subscribers: u32) -> LoadArgs {
    LoadArgs {
        url: format!("http://{}", server.addr),
        rooms: 1,
        publishers: 2,
        subscribers,
        duration: 3,
        join_rate: 20.0,
        video_kbps: 600,
        packet_bytes: 1200,
        audio: true,
        server_pid: None,
        media_ip: "127.0.0.1".parse().unwrap(),
        json: true,
        target: yoom::load::Target::Yoom,
        janus_url: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_scenario_flows_and_is_counted() {
    let server = TestServer::start().await;
    let args = tiny_scenario(&server, 2);
    let report = tokio::time::timeout(std::time::Duration::from_secs(60), run(args))
        .await
        .expect("load run ends")
        .expect("load run succeeds");
    assert_eq!(report.members, 4);
    assert_eq!(report.members_failed, 0);
    assert!(report.member_errors.is_empty(), "{report:?}");
    // 2 subscribers × 2 publishers + each publisher receiving the other.
    assert_eq!(report.video_streams_expected, 6);
    assert_eq!(report.video.tracks, 6);
    assert!(report.video.packets_received > 100, "{report:?}");
    assert!(report.video_packets_sent > 50);
    assert!(report.server_packets_forwarded.unwrap_or(0) > 100);
    assert!(report.video.delay_ms_p50.is_some());
    assert!(report.packets_delivered >= report.video.packets_received);
    // The steady-state window (after joining settled) was measured separately.
    assert!(report.steady_s.is_some_and(|s| s > 1.0), "{report:?}");
    assert!(report.server_cpu_us_per_delivered_packet_steady.is_some());
    // Yoom's metrics do not split user and system time; only `--server-pid` does.
    assert!(report
        .server_user_cpu_us_per_delivered_packet_steady
        .is_none());
    let mut table = Vec::new();
    yoom::load::print_report(&report, false, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("server CPU per forwarded packet"), "{table}");
    assert!(
        table.lines().last().unwrap().starts_with("PASS")
            || table.lines().last().unwrap().starts_with("FAIL")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_the_server_refuses_are_counted_with_the_reason() {
    let server = TestServer::with_config(yoom::Config {
        max_connections_per_ip: 3,
        ..test_config()
    })
    .await;
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        run(tiny_scenario(&server, 2)),
    )
    .await
    .expect("load run ends")
    .expect("load run succeeds");
    assert_eq!(report.members, 4);
    assert_eq!(report.members_failed, 1, "{report:?}");
    assert_eq!(report.member_errors.len(), 1, "{report:?}");
    assert_eq!(report.member_errors[0].members, 1);
    assert!(
        report.member_errors[0]
            .error
            .contains("--max-connections-per-ip"),
        "{report:?}"
    );
    let mut table = Vec::new();
    yoom::load::print_report(&report, false, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains("1 × WebSocket connect: 429"), "{table}");
    assert!(table.lines().last().unwrap().starts_with("FAIL"), "{table}");
}
