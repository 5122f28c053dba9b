//! Where media flows: one shared UDP port, a port range, announced public addresses
//! (webrtc-rs test peers against a real server).

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use common::media::{candidate_addr, MediaPeer, TrackKey};
use common::{spawn_server, test_config, yoom_command, TestServer, STEP};
use yoom::load::{run as run_load, LoadArgs, Target};

/// Media scenarios share two cores: run them one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn video(publisher: &MediaPeer) -> TrackKey {
    (publisher.id.clone(), "video")
}

/// The addresses of the server's candidates so far, waiting (bounded) for the first: they come
/// in the answer or trickle in just after it, depending on how fast the server gathers.
async fn announced(peer: &MediaPeer) -> BTreeSet<SocketAddr> {
    let deadline = std::time::Instant::now() + STEP;
    let candidates = loop {
        let seen = peer.server_candidates.lock().unwrap().clone();
        if !seen.is_empty() {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server announced no candidate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    candidates
        .iter()
        .map(|c| candidate_addr(c).unwrap_or_else(|| panic!("unparsable candidate {c}")))
        .collect()
}

/// UDP sockets the process `pid` has open, from `ss`.
fn udp_sockets_of(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-H", "-u", "-a", "-n", "-p"])
        .output()
        .expect("ss (iproute2) runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_members_in_three_rooms_share_one_udp_port() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (mut child, addr) =
        spawn_server(yoom_command().args(["serve", "--bind", "127.0.0.1", "--port", "0"]));
    let url = format!("ws://{addr}/ws");
    let mut members = Vec::new();
    for (room, size) in [("a", 4), ("b", 3), ("c", 3)] {
        let mut publisher = MediaPeer::join(&url, room, "pub").await;
        publisher.publish(50).await;
        let mut subscribers = Vec::new();
        for i in 1..size {
            subscribers.push(MediaPeer::join(&url, room, &format!("sub{i}")).await);
        }
        members.push((publisher, subscribers));
    }
    for (publisher, subscribers) in &members {
        for s in subscribers {
            s.wait_received(&video(publisher), STEP, |r| r.packets > 20)
                .await;
        }
    }

    let mut ports = BTreeSet::new();
    for (publisher, subscribers) in &members {
        for peer in std::iter::once(publisher).chain(subscribers) {
            ports.extend(announced(peer).await.iter().map(|a| (a.ip(), a.port())));
        }
    }
    assert_eq!(ports.len(), 1, "all candidates name one address: {ports:?}");
    let (ip, port) = ports.into_iter().next().unwrap();
    assert_eq!(ip, IpAddr::from([127, 0, 0, 1]));
    // 10 members, 13 peer connections on the server, one UDP socket.
    let sockets = udp_sockets_of(child.id());
    assert_eq!(sockets.len(), 1, "{sockets:#?}");
    assert!(
        sockets[0].contains(&format!("127.0.0.1:{port} ")),
        "{sockets:#?}"
    );

    for (publisher, subscribers) in members {
        publisher.leave().await;
        for s in subscribers {
            s.leave().await;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `n` consecutive UDP ports free on loopback right now.
fn free_port_range(n: u16) -> RangeInclusive<u16> {
    for _ in 0..100 {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let first = probe.local_addr().unwrap().port();
        drop(probe);
        let Some(last) = first.checked_add(n - 1) else {
            continue;
        };
        if (first..=last).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return first..=last;
        }
    }
    panic!("no {n} free consecutive ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_range_is_leased_out_refused_when_exhausted_and_returned() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let range = free_port_range(4);
    let server = TestServer::with_config(yoom::Config {
        port_range: Some(range.clone()),
        ..test_config()
    })
    .await;
    let url = server.ws_url();
    // Two publishers who also receive each other: four connections, every port in use.
    let mut alice = MediaPeer::join(&url, "r", "alice").await;
    alice.publish(50).await;
    let mut bob = MediaPeer::join(&url, "r", "bob").await;
    bob.publish(50).await;
    alice
        .wait_received(&video(&bob), STEP, |r| r.packets > 10)
        .await;
    bob.wait_received(&video(&alice), STEP, |r| r.packets > 10)
        .await;
    for peer in [&alice, &bob] {
        for addr in announced(peer).await {
            assert!(range.contains(&addr.port()), "{addr} outside {range:?}");
        }
    }

    // A third member cannot get a port for receiving: told so, nothing else breaks.
    let mut carol = MediaPeer::join(&url, "r", "carol").await;
    let error = carol.recv_type("error").await;
    assert_eq!(error["code"], "no_capacity", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("port"),
        "{error}"
    );
    let before = bob.received(&video(&alice)).packets;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bob.received(&video(&alice)).packets > before,
        "alice → bob stopped"
    );

    // Alice leaves: her two ports come back and carol's subscription goes through on one.
    alice.leave().await;
    carol
        .wait_received(&video(&bob), STEP, |r| r.packets > 10)
        .await;
    for addr in announced(&carol).await {
        assert!(range.contains(&addr.port()), "{addr} outside {range:?}");
    }
    carol.leave().await;
    bob.leave().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_ips_are_what_candidates_announce() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let public: IpAddr = "203.0.113.7".parse().unwrap();
    let server = TestServer::with_config(yoom::Config {
        public_ips: vec![public],
        ..test_config()
    })
    .await;
    let mut peer = MediaPeer::join(&server.ws_url(), "r", "nat").await;
    peer.publish(10).await;
    // Trickled candidates follow the answer; give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addrs = announced(&peer).await;
    assert!(
        addrs.iter().all(|a| a.ip() == public),
        "every candidate announces {public}: {addrs:?}"
    );
    assert!(
        !peer.publish_answer_sdp.contains("127.0.0.1 "),
        "the bound address leaks into the answer"
    );
    peer.leave().await;
    server.shutdown().await;
}

async fn hundred_members(config: yoom::Config) -> yoom::load::Report {
    let server = TestServer::with_config(yoom::Config {
        max_room_members: 200,
        ..config
    })
    .await;
    let args = LoadArgs {
        url: format!("http://{}", server.addr),
        rooms: 1,
        publishers: 1,
        subscribers: 99,
        duration: 4,
        join_rate: 50.0,
        video_kbps: 300,
        packet_bytes: 1200,
        audio: false,
        server_pid: None,
        media_ip: "127.0.0.1".parse().unwrap(),
        json: true,
        target: Target::Yoom,
        janus_url: None,
    };
    let report = tokio::time::timeout(Duration::from_secs(90), run_load(args))
        .await
        .expect("load run ends")
        .expect("load run succeeds");
    server.shutdown().await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_members_on_one_port_fare_as_well_as_on_a_port_each() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let shared = hundred_members(test_config()).await;
    let range = free_port_range(210);
    let separate = hundred_members(yoom::Config {
        port_range: Some(range),
        ..test_config()
    })
    .await;
    for (mode, report) in [("one port", &shared), ("port range", &separate)] {
        assert_eq!(report.members, 100, "{mode}");
        assert_eq!(report.members_failed, 0, "{mode}: {report:?}");
        assert_eq!(report.video.subscribers_without_video, 0, "{mode}");
        assert!(
            report.video.loss_percent < 0.5,
            "{mode}: {:.2} % loss",
            report.video.loss_percent
        );
    }
    eprintln!(
        "loss: one port {:.3} %, port range {:.3} %; delay p99: {:?} vs {:?} ms",
        shared.video.loss_percent,
        separate.video.loss_percent,
        shared.video.delay_ms_p99,
        separate.video.delay_ms_p99
    );
}

/// A real STUN server: Debian's coturn in STUN-only mode on a free loopback port (installed by
/// tests/support/browser-deps.sh when missing). Killed on drop.
struct StunServer {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StunServer {
    fn start() -> StunServer {
        let deps = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/browser-deps.sh");
        let installed = std::process::Command::new("bash")
            .arg(deps)
            .status()
            .expect("run browser-deps.sh");
        assert!(installed.success(), "coturn could not be installed");
        let port = free_port_range(1).into_inner().0;
        let dir = std::env::temp_dir().join(format!("yoom-stun-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("turnserver.conf");
        std::fs::write(
            &conf,
            format!(
                "listening-ip=127.0.0.1\nlistening-port={port}\nstun-only\nno-tls\nno-dtls\n\
                 no-cli\npidfile={}\nuserdb={}\nlog-file=stdout\n",
                dir.join("turnserver.pid").display(),
                dir.join("turndb.sqlite").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("turnserver")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start turnserver");
        // Ready once it answers a Binding Request.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let request = yoom::sfu::transport::stun::binding_request([7; 12]);
        let mut buf = [0u8; 512];
        let deadline = std::time::Instant::now() + STEP;
        loop {
            probe.send_to(&request, ("127.0.0.1", port)).unwrap();
            if let Ok(n) = probe.recv(&mut buf) {
                if yoom::sfu::transport::stun::binding_response_address(&buf[..n], &[7; 12])
                    .is_some()
                {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "coturn does not answer STUN"
            );
        }
        StunServer {
            child,
            port,
            _dir: TempDir(dir),
        }
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_address_is_discovered_from_a_real_stun_server_or_start_up_fails() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let stun = StunServer::start();
    let url = format!("stun:127.0.0.1:{}", stun.port);
    let (mut child, addr, log) = common::spawn_server_with_log(
        yoom_command()
            .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
            .args(["--stun-urls", &url, "--discover-public-ip", "true"]),
    );
    let discovered = log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("public address discovered") && l.contains("127.0.0.1"));
    assert!(discovered, "{:#?}", log.lock().unwrap());
    let mut peer = MediaPeer::join(&format!("ws://{addr}/ws"), "r", "p").await;
    peer.publish(10).await;
    assert!(announced(&peer)
        .await
        .iter()
        .all(|a| a.ip() == IpAddr::from([127, 0, 0, 1])));
    peer.leave().await;
    let _ = child.kill();
    let _ = child.wait();

    // Nobody answers on a port nothing listens on: start-up fails, naming the setting.
    let silent = format!("stun:127.0.0.1:{}", free_port_range(1).into_inner().0);
    let started = std::time::Instant::now();
    let out = yoom_command()
        .args(["serve", "--bind", "127.0.0.1", "--port", "0"])
        .args(["--stun-urls", &silent, "--discover-public-ip", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rtc.discover_public_ip"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
