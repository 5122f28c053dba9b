//! The signaling contract of PROTOCOL.md, message by message, against a real server.

mod common;

use std::time::Duration;

use common::{test_config, Event, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_comes_first_then_the_room_list() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let hello = c.recv().await;
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["protocol"], 1);
    assert!(hello["server"].as_str().unwrap().starts_with("yoom/"));
    let id = hello["id"].as_str().unwrap();
    assert!(!id.is_empty());
    let rooms = c.recv().await;
    assert_eq!(rooms, json!({"type":"rooms","rooms":[]}));

    let mut d = server.client().await;
    let other = d.recv_type("hello").await;
    assert_ne!(other["id"], hello["id"], "member ids are unique");
}

#[tokio::test]
async fn ref_is_echoed_on_replies_acks_and_errors() {
    let server = TestServer::start().await;
    let mut c = server.ready_client().await;
    let r = c.request(json!({"type":"list_rooms"}), json!(7)).await;
    assert_eq!(r["type"], "rooms");
    let r = c
        .request(json!({"type":"set_name","name":"ann"}), json!("a-1"))
        .await;
    assert_eq!(r, json!({"type":"ack","ref":"a-1"}));
    let r = c
        .request(json!({"type":"chat","text":"hi"}), json!(9))
        .await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "not_in_room");
    let r = c
        .request(json!({"type":"join","room":"r"}), json!(10))
        .await;
    assert_eq!(r["type"], "joined");
    let r = c
        .request(json!({"type":"chat","text":"hi"}), json!(11))
        .await;
    assert_eq!(r["type"], "chat", "the sender's own copy answers its chat");
    let r = c
        .request(
            json!({"type":"mute","kind":"audio","muted":true}),
            json!(12),
        )
        .await;
    assert_eq!(r["type"], "ack");
    let r = c.request(json!({"type":"leave"}), json!(13)).await;
    assert_eq!(r["type"], "ack");
    let r = c.request(json!({"type":"frobnicate"}), json!(14)).await;
    assert_eq!(r["code"], "unknown_type");
    // A ref that is neither an integer nor a short string is itself an invalid field.
    c.send(json!({"type":"list_rooms","ref":"x".repeat(65)}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "invalid_field");
    assert!(e["message"].as_str().unwrap().contains("ref"));
}

#[tokio::test]
async fn malformed_input_gets_the_right_error_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut c = server.ready_client().await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_json"),
        ("[1,2,3]", "bad_json"),
        ("42", "bad_json"),
        ("{}", "unknown_type"),
        (r#"{"type":17}"#, "unknown_type"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "invalid_field"),
        (r#"{"type":"join","room":""}"#, "invalid_field"),
        (r#"{"type":"join","room":"a\u0007b"}"#, "invalid_field"),
        (r#"{"type":"set_name","name":[]}"#, "invalid_field"),
        (r#"{"type":"mute","kind":"audio"}"#, "invalid_field"),
        (r#"{"type":"chat"}"#, "invalid_field"),
    ];
    for (input, code) in cases {
        c.send_text(input).await;
        let e = c.recv_type("error").await;
        assert_eq!(e["code"], *code, "input {input}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    // Binary frames are refused too.
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(c.recv_type("error").await["code"], "bad_json");
    // invalid_field names the field.
    c.send(json!({"type":"join","room":"x".repeat(65)})).await;
    let e = c.recv_type("error").await;
    assert!(e["message"].as_str().unwrap().contains("room"), "{e}");
    c.send(json!({"type":"set_name","name":"n".repeat(33)}))
        .await;
    let e = c.recv_type("error").await;
    assert!(e["message"].as_str().unwrap().contains("name"), "{e}");

    let r = c
        .request(json!({"type":"join","room":"still-here"}), json!(1))
        .await;
    assert_eq!(r["type"], "joined", "the connection still works");
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut c = server.member("big", "bo").await;
    let mut other = server.member("big", "al").await;
    let text = format!(
        r#"{{"type":"chat","ref":5,"text":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    assert!(text.len() > 64 * 1024);
    c.send_text(&text).await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "too_large");
    let r = c
        .request(json!({"type":"chat","text":"after"}), json!(6))
        .await;
    assert_eq!(r["text"], "after");
    let m = other.recv_type("chat").await;
    assert_eq!(m["text"], "after", "the big frame was never delivered");
}

#[tokio::test]
async fn join_announces_members_both_ways() {
    let server = TestServer::start().await;
    let mut alice = server.ready_client().await;
    alice
        .send(json!({"type":"join","room":"team","name":"alice"}))
        .await;
    let joined = alice.recv_type("joined").await;
    assert_eq!(joined["room"], "team");
    assert_eq!(joined["self"]["id"], alice.id.as_str());
    assert_eq!(joined["self"]["name"], "alice");
    assert_eq!(joined["self"]["audio_muted"], false);
    assert_eq!(joined["self"]["video_muted"], false);
    assert_eq!(joined["members"], json!([]));
    assert!(joined["ice_servers"].is_array());

    let mut bob = server.ready_client().await;
    bob.send(json!({"type":"set_name","name":"bob"})).await;
    bob.recv_type("ack").await;
    bob.send(json!({"type":"join","room":"  team  "})).await;
    let joined = bob.recv_type("joined").await;
    assert_eq!(joined["room"], "team", "room names are trimmed");
    assert_eq!(joined["self"]["name"], "bob");
    let members = joined["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["id"], alice.id.as_str());
    assert_eq!(members[0]["name"], "alice");

    let mj = alice.recv_type("member_joined").await;
    assert_eq!(mj["member"]["id"], bob.id.as_str());
    assert_eq!(mj["member"]["name"], "bob");
}

#[tokio::test]
async fn unnamed_members_are_anonymous() {
    let server = TestServer::start().await;
    let mut c = server.ready_client().await;
    c.send(json!({"type":"join","room":"anon"})).await;
    assert_eq!(c.recv_type("joined").await["self"]["name"], "Anonymous");
}

#[tokio::test]
async fn leave_and_close_both_announce_member_left() {
    let server = TestServer::start().await;
    let mut a = server.member("r", "a").await;
    let mut b = server.member("r", "b").await;
    let c = server.member("r", "c").await;
    let (b_id, c_id) = (b.id.clone(), c.id.clone());

    let ack = b.request(json!({"type":"leave"}), json!(1)).await;
    assert_eq!(ack["type"], "ack");
    let left = a.recv_type("member_left").await;
    assert_eq!(left["id"], b_id.as_str());

    // A dropped socket leaves at once, without any leave message.
    drop(c);
    let left = a.recv_type("member_left").await;
    assert_eq!(left["id"], c_id.as_str());

    let r = b.request(json!({"type":"leave"}), json!(2)).await;
    assert_eq!(r["code"], "not_in_room");
}

#[tokio::test]
async fn join_while_in_a_room_moves_the_member() {
    let server = TestServer::start().await;
    let mut a = server.member("one", "a").await;
    let mut b = server.member("one", "b").await;
    let mut watcher = server.member("two", "w").await;
    b.send(json!({"type":"join","room":"two"})).await;
    let joined = b.recv_type("joined").await;
    assert_eq!(joined["room"], "two");
    assert_eq!(a.recv_type("member_left").await["id"], b.id.as_str());
    assert_eq!(
        watcher.recv_type("member_joined").await["member"]["id"],
        b.id.as_str()
    );
    // Joining the room one is already in changes nothing for the others.
    let again = b
        .request(json!({"type":"join","room":"two"}), json!(3))
        .await;
    assert_eq!(again["type"], "joined");
    assert_eq!(again["members"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn rename_and_mute_are_broadcast_as_member_updated() {
    let server = TestServer::start().await;
    let mut a = server.member("r", "a").await;
    let mut b = server.member("r", "b").await;
    b.send(json!({"type":"set_name","name":"  Bea  "})).await;
    let up = a.recv_type("member_updated").await;
    assert_eq!(up["member"]["id"], b.id.as_str());
    assert_eq!(up["member"]["name"], "Bea");

    b.send(json!({"type":"mute","kind":"audio","muted":true}))
        .await;
    let up = a.recv_type("member_updated").await;
    assert_eq!(up["member"]["audio_muted"], true);
    assert_eq!(up["member"]["video_muted"], false);
    b.send(json!({"type":"mute","kind":"video","muted":true}))
        .await;
    let up = a.recv_type("member_updated").await;
    assert_eq!(up["member"]["audio_muted"], true);
    assert_eq!(up["member"]["video_muted"], true);

    // A late joiner sees the current state.
    let mut c = server.ready_client().await;
    c.send(json!({"type":"join","room":"r"})).await;
    let joined = c.recv_type("joined").await;
    let bea = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == b.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(bea["name"], "Bea");
    assert_eq!(bea["video_muted"], true);
}

#[tokio::test]
async fn chat_reaches_every_member_including_the_sender() {
    let server = TestServer::start().await;
    let mut a = server.member("r", "ann").await;
    let mut b = server.member("r", "ben").await;
    let mut outsider = server.member("elsewhere", "olga").await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    a.send(json!({"type":"chat","text":"hello\nworld"})).await;
    for c in [&mut a, &mut b] {
        let m = c.recv_type("chat").await;
        assert_eq!(m["text"], "hello\nworld");
        assert_eq!(m["from"]["name"], "ann");
        let ts = m["ts"].as_u64().unwrap();
        assert!(ts >= before && ts < before + 10_000, "ts is unix ms");
    }
    outsider.expect_quiet(Duration::from_millis(300)).await;

    let e = a
        .request(json!({"type":"chat","text":"x".repeat(2001)}), json!(1))
        .await;
    assert_eq!(e["code"], "invalid_field");
    let ok = a
        .request(json!({"type":"chat","text":"é".repeat(2000)}), json!(2))
        .await;
    assert_eq!(
        ok["type"], "chat",
        "2000 characters (not bytes) are allowed"
    );
}

#[tokio::test]
async fn lobby_sees_room_counts_change_live() {
    let server = TestServer::start().await;
    let mut lobby = server.ready_client().await;
    let expect = |rooms: Value| move |m: &Value| m["type"] == "rooms" && m["rooms"] == rooms;

    let a = server.member("beta", "a").await;
    lobby
        .recv_until(expect(json!([{"room":"beta","count":1}])))
        .await;
    let _b = server.member("beta", "b").await;
    let _c = server.member("alpha", "c").await;
    lobby
        .recv_until(expect(json!([
            {"room":"alpha","count":1},
            {"room":"beta","count":2}
        ])))
        .await;
    drop(a);
    lobby
        .recv_until(expect(json!([
            {"room":"alpha","count":1},
            {"room":"beta","count":1}
        ])))
        .await;
    drop(_c);
    lobby
        .recv_until(expect(json!([{"room":"beta","count":1}])))
        .await;
    let r = lobby.request(json!({"type":"list_rooms"}), json!(1)).await;
    assert_eq!(r["rooms"], json!([{"room":"beta","count":1}]));
}

#[tokio::test]
async fn a_full_room_refuses_joins() {
    let config = yoom::Config {
        max_room_members: 2,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let _a = server.member("small", "a").await;
    let _b = server.member("small", "b").await;
    let mut c = server.member("other", "c").await;
    let e = c
        .request(json!({"type":"join","room":"small"}), json!(1))
        .await;
    assert_eq!(e["code"], "room_full");
    // c stays where it was.
    let r = c
        .request(json!({"type":"chat","text":"still in other"}), json!(2))
        .await;
    assert_eq!(r["type"], "chat");
    assert_eq!(
        server
            .metric("yoom_participant_join_total{state=\"room_full\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn flooding_is_rate_limited_without_affecting_others() {
    let config = yoom::Config {
        rate_limit_per_sec: 20,
        rate_limit_burst: 20,
        ..test_config()
    };
    let server = TestServer::with_config(config).await;
    let mut flooder = server.member("r", "f").await;
    let mut calm = server.member("r", "c").await;
    for i in 0..30 {
        flooder.send(json!({"type":"list_rooms","ref":i})).await;
    }
    let limited = flooder
        .recv_until(|m| m["type"] == "error" && m["code"] == "rate_limited")
        .await;
    assert!(
        limited["ref"].is_number(),
        "the refused message's ref is echoed"
    );
    let r = calm
        .request(json!({"type":"chat","text":"fine"}), json!(1))
        .await;
    assert_eq!(r["type"], "chat");

    // Ignoring rate_limited and keeping on flooding gets the connection closed.
    for i in 0..200 {
        flooder.send(json!({"type":"list_rooms","ref":i})).await;
    }
    let mut saw_bye = false;
    loop {
        match flooder.next_event(common::STEP).await {
            Event::Json(m) if m["type"] == "bye" => {
                assert_eq!(m["reason"], "rate_limited");
                saw_bye = true;
            }
            Event::Json(_) => continue,
            Event::Closed(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
    assert!(saw_bye);
    assert_eq!(
        calm.recv_type("member_left").await["id"],
        flooder.id.as_str()
    );
}

#[tokio::test]
async fn healthz_metrics_and_the_web_client_are_served() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await, (200, "ok".to_owned()));
    let (status, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<html")
            || body.contains("<!doctype html")
            || body.contains("<!DOCTYPE html")
    );
    let (status, _) = server.get("/app.js").await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/no-such-file.js").await;
    assert_eq!(status, 404);
    let _m = server.member("r", "m").await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("yoom_ws_connections 1"), "{body}");
    assert!(body.contains("yoom_room_total 1"), "{body}");
    assert!(body.contains("yoom_participant_total 1"), "{body}");
}
