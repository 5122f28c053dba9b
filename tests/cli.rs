//! The `yoom` binary as an operator runs it: flags, env, config errors, signals.

mod common;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{spawn_server, yoom_command as yoom, Client, Event, STEP};

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_reads_well() {
    let out = yoom().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("serve"), "{text}");
    let out = yoom().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--bind",
        "--config",
        "--log",
        "YOOM_PORT",
        "--web-dir",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
}

#[test]
fn bad_config_names_the_key_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("yoom-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[rooms]\nmax_members = 0\n", "rooms.max_members"),
        ("[server]\nprot = 3000\n", "prot"),
        ("[server]\nbind = \"not-an-ip\"\n", "server.bind"),
        ("[log]\nformat = \"xml\"\n", "format"),
        ("[signaling\n", "invalid config file"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = yoom()
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text} → {err}");
        assert!(
            err.contains(needle),
            "error for {text:?} should name {needle}: {err}"
        );
    }
    let out = yoom()
        .args(["serve", "--config", "/nonexistent/yoom.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = yoom()
        .args(["serve"])
        .env("YOOM_MAX_ROOM_MEMBERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad env value");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = yoom()
        .args(["serve", "--bind", "127.0.0.1", "--port", &port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn a_busy_media_port_or_an_address_not_on_this_host_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = taken.local_addr().unwrap().port().to_string();
    let out = yoom()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
        .args(["--udp-port", &udp_port])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "cannot bind media UDP socket 127.0.0.1:{udp_port}"
        )),
        "{err}"
    );

    // 192.0.2.1 (TEST-NET-1) is on no interface here: unusable in either mode.
    for mode in [&["--udp-port", "0"][..], &["--port-range", "50000-50010"]] {
        let out = yoom()
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .args(["--media-ips", "192.0.2.1"])
            .args(mode)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{mode:?}: {err}");
        assert!(err.contains("192.0.2.1"), "{mode:?}: {err}");
    }

    let out = yoom()
        .args(["serve", "--turn-urls", "turn:turn.example.org:3478"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("turn.secret"), "{err}");
    let out = yoom()
        .args(["serve", "--turn-urls", "https://turn.example.org"])
        .env("YOOM_TURN_SECRET", "x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("turn.urls"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_settings_apply_and_sigterm_closes_clients_and_exits_quickly() {
    let (mut child, addr) = spawn_server(
        yoom()
            .args(["serve", "--bind", "127.0.0.1"])
            .env("YOOM_PORT", "0")
            .env("YOOM_MAX_ROOM_MEMBERS", "1"),
    );
    let url = format!("ws://{addr}/ws");
    let mut a = Client::connect(&url).await;
    a.send(serde_json::json!({"type":"join","room":"solo"}))
        .await;
    a.recv_type("joined").await;
    let mut b = Client::connect(&url).await;
    b.send(serde_json::json!({"type":"join","room":"solo","ref":1}))
        .await;
    let e = b.recv_type("error").await;
    assert_eq!(e["code"], "room_full", "YOOM_MAX_ROOM_MEMBERS=1 applies");

    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for c in [&mut a, &mut b] {
        let mut saw_bye = false;
        loop {
            match c.next_event(STEP).await {
                Event::Json(m) if m["type"] == "bye" => saw_bye = true,
                Event::Json(_) => {}
                Event::Closed(code) => {
                    assert_eq!(code, Some(1001));
                    break;
                }
                other => panic!("expected bye and close, got {other:?}"),
            }
        }
        assert!(saw_bye);
    }
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
