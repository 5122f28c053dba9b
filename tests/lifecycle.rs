//! Connection lifecycle: slow consumers, idle timeout, pings, graceful shutdown.

mod common;

use std::time::Duration;

use common::{test_config, Event, TestServer, STEP};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_nobody_waits_for_it() {
    let config = yoom::Config {
        outbound_queue_len: 16,
        rate_limit_per_sec: 100_000,
        rate_limit_burst: 100_000,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut sender = server.member("r", "sender").await;
    let mut reader = server.member("r", "reader").await;
    let mut stalled = common::Client::connect_with_tiny_buffer(server.addr).await;
    stalled.id = stalled.recv_type("hello").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stalled
        .send(json!({"type":"join","room":"r","name":"stalled"}))
        .await;
    stalled.recv_type("joined").await;
    let stalled_id = stalled.id.clone();

    // Chat until the server gives up on the stalled member (its socket buffers fill first,
    // then its queue), then once more; the reader must have got every single chat meanwhile.
    // The sender reads its own echoes as it goes, so that it is not a slow consumer itself.
    let text = "z".repeat(2000);
    const MAX_CHATS: usize = 20_000;
    let send_all = async {
        let mut sent = 0;
        let mut stalled_gone = false;
        while !stalled_gone {
            assert!(sent < MAX_CHATS, "the stalled member was never dropped");
            for _ in 0..10 {
                sender.send(json!({"type":"chat","text":text})).await;
            }
            sent += 10;
            let mut echoes = 0;
            while echoes < 10 {
                let m = sender.recv().await;
                match m["type"].as_str() {
                    Some("chat") => echoes += 1,
                    Some("member_left") if m["id"] == stalled_id.as_str() => stalled_gone = true,
                    _ => {}
                }
            }
        }
        sender.send(json!({"type":"chat","text":"done"})).await;
        sent
    };
    let read_all = async {
        let (mut got, mut stalled_left) = (0, false);
        loop {
            let m = reader.recv().await;
            if m["type"] == "chat" {
                if m["text"] == "done" {
                    break;
                }
                got += 1;
            } else if m["type"] == "member_left" && m["id"] == stalled_id.as_str() {
                stalled_left = true;
            }
        }
        assert!(stalled_left);
        got
    };
    let (sent, got) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(send_all, read_all)
    })
    .await
    .expect("the reader gets everything although one member never reads");
    assert_eq!(got, sent);
    assert!(
        server
            .metric("yoom_ws_disconnects_total{reason=\"slow_consumer\"}")
            .await
            >= 1.0
    );
    drop(stalled);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_idle_timeout() {
    let config = yoom::Config {
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut watcher = server.member("r", "w").await;
    // A client that stops reading never answers pings (pongs are sent while reading).
    let silent = server.member("r", "s").await;
    let silent_id = silent.id.clone();
    let left = tokio::time::timeout(Duration::from_secs(5), watcher.recv_type("member_left"))
        .await
        .expect("silent member dropped within the idle timeout");
    assert_eq!(left["id"], silent_id.as_str());
    // The watcher answered every ping (its reads drive tungstenite's automatic pong).
    watcher.expect_quiet(Duration::from_millis(1500)).await;
    let r = watcher
        .request(json!({"type":"list_rooms"}), json!(1))
        .await;
    assert_eq!(
        r["type"], "rooms",
        "a client answering pings stays connected"
    );
    assert_eq!(
        server
            .metric("yoom_ws_disconnects_total{reason=\"idle\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn shutdown_says_bye_and_closes_every_socket() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(server.member("r", &format!("m{i}")).await);
    }
    let took = server.shutdown().await;
    assert!(took < Duration::from_secs(5), "run returned after {took:?}");
    for c in &mut clients {
        let mut saw_bye = false;
        loop {
            match c.next_event(STEP).await {
                Event::Json(m) if m["type"] == "bye" => {
                    assert_eq!(m["reason"], "shutdown");
                    saw_bye = true;
                }
                Event::Json(_) => {}
                Event::Closed(code) => {
                    assert_eq!(code, Some(1001), "going away");
                    break;
                }
                other => panic!("expected bye and close, got {other:?}"),
            }
        }
        assert!(saw_bye);
    }
}
