//! The admin API on the wire (docs/api.md): off without a token, 401 with a wrong one, and
//! list / kick / mute / close each verified by what members see.

mod common;

use std::time::Duration;

use common::media::{MediaPeer, TrackKey};
use common::{http_request, test_config, Event, TestServer, STEP};
use serde_json::{json, Value};

const TOKEN: &str = "test-admin-token-0123456789";

async fn admin_server() -> TestServer {
    TestServer::with_config(yoom::Config {
        admin_token: Some(yoom::config::Secret::new(TOKEN)),
        ..test_config()
    })
    .await
}

async fn api(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let body = body.map(|b| b.to_string());
    let (status, _, text) = http_request(
        server.addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_deref(),
    )
    .await;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, value)
}

#[tokio::test]
async fn without_a_token_the_admin_api_and_page_do_not_exist() {
    let server = TestServer::start().await;
    for path in [
        "/api/rooms",
        "/api/rooms/x",
        "/admin",
        "/admin.html",
        "/admin.js",
        "/admin.css",
    ] {
        let (status, _, _) = http_request(
            server.addr,
            "GET",
            path,
            &[("Authorization", "Bearer anything")],
            None,
        )
        .await;
        assert_eq!(status, 404, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused() {
    let server = admin_server().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer test-admin-token-012345678"),
        Some(TOKEN),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (status, head, body) =
            http_request(server.addr, "GET", "/api/rooms", &headers, None).await;
        assert_eq!(status, 401, "{auth:?}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error":"unauthorized"})
        );
    }
    let (status, page) = server.get("/admin").await;
    assert_eq!(status, 200);
    assert_eq!(server.get("/admin.js").await.0, 200);
    // The scheme name is case-insensitive.
    let lower = format!("bearer {TOKEN}");
    let (status, _, _) = http_request(
        server.addr,
        "GET",
        "/api/rooms",
        &[("Authorization", &lower)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<html") || page.contains("<!doctype"),
        "{page}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_are_listed_and_a_kicked_member_is_gone_for_everyone() {
    let server = admin_server().await;
    let mut alice = server.member("ops", "alice").await;
    let mut bob = server.member("ops", "bob").await;
    alice.recv_type("member_joined").await;
    let _carol = server.member("lobbyless", "carol").await;

    let (status, rooms) = api(&server, "GET", "/api/rooms", None).await;
    assert_eq!(status, 200);
    let ops = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "ops")
        .cloned()
        .unwrap_or_else(|| panic!("{rooms}"));
    assert_eq!(ops["members"], 2);
    let (status, room) = api(&server, "GET", "/api/rooms/ops", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = room["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(room["members"][1]["id"], bob.id.as_str());
    assert!(room["members"][0]["tracks"].as_array().unwrap().is_empty());
    assert_eq!(api(&server, "GET", "/api/rooms/nope", None).await.0, 404);

    let path = format!("/api/rooms/ops/members/{}", bob.id);
    let (status, _) = api(&server, "DELETE", &path, None).await;
    assert_eq!(status, 204);
    let kicked = bob.recv_type("error").await;
    assert_eq!(kicked["code"], "kicked", "{kicked}");
    match bob.next_event(STEP).await {
        Event::Closed(code) => assert_eq!(code, Some(4001)),
        other => panic!("expected the socket to close, got {other:?}"),
    }
    let left = alice.recv_type("member_left").await;
    assert_eq!(left["id"], bob.id.as_str());
    // Like a browser, bob answers the close; only then does the server count the kick.
    bob.close().await;
    let (_, room) = api(&server, "GET", "/api/rooms/ops", None).await;
    assert_eq!(room["members"].as_array().unwrap().len(), 1);
    assert_eq!(api(&server, "DELETE", &path, None).await.0, 404);
    // Counted when bob's session has finished closing.
    let deadline = std::time::Instant::now() + STEP;
    while server
        .metric("yoom_ws_disconnects_total{reason=\"kicked\"}")
        .await
        != 1.0
    {
        assert!(std::time::Instant::now() < deadline, "kick not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn closing_a_room_sends_everyone_back_to_the_lobby() {
    let server = admin_server().await;
    let mut a = server.member("doomed", "a").await;
    let mut b = server.member("doomed", "b").await;
    let (status, _) = api(&server, "DELETE", "/api/rooms/doomed", None).await;
    assert_eq!(status, 204);
    for c in [&mut a, &mut b] {
        let left = c.recv_type("left").await;
        assert_eq!(left["room"], "doomed");
        assert_eq!(left["reason"], "room_closed");
    }
    let (_, rooms) = api(&server, "GET", "/api/rooms", None).await;
    assert!(rooms["rooms"].as_array().unwrap().is_empty(), "{rooms}");
    // Still connected: they can chat in a room again.
    a.send(json!({"type":"join","room":"next"})).await;
    a.recv_type("joined").await;
    assert_eq!(
        api(&server, "DELETE", "/api/rooms/doomed", None).await.0,
        404
    );
    server.shutdown().await;
}

/// One member's entry in a `GET /api/rooms/{room}` answer.
fn member_of(room: &Value, id: &str) -> Value {
    room["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {room}"))
}

fn video(publisher: &MediaPeer) -> TrackKey {
    (publisher.id.clone(), "video")
}

fn audio(publisher: &MediaPeer) -> TrackKey {
    (publisher.id.clone(), "audio")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_muted_track_stops_arriving_and_resumes() {
    let server = admin_server().await;
    let url = server.ws_url();
    let mut publisher = MediaPeer::join(&url, "m", "pub").await;
    let subscriber = MediaPeer::join(&url, "m", "sub").await;
    publisher.publish(100).await;
    subscriber
        .wait_received(&video(&publisher), STEP, |r| r.packets > 20)
        .await;

    let (status, room) = api(&server, "GET", "/api/rooms/m", None).await;
    assert_eq!(status, 200);
    let pub_json = member_of(&room, &publisher.id);
    let tracks = pub_json["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "{pub_json}");
    let v = tracks.iter().find(|t| t["kind"] == "video").unwrap();
    assert_eq!(v["codec"], "video/VP8");
    assert!(v["packets"].as_u64().unwrap() > 20, "{v}");
    assert_eq!(v["subscribers"], 1);
    assert_eq!(v["server_muted"], false);

    let path = format!("/api/rooms/m/members/{}/mute", publisher.id);
    let (status, body) = api(
        &server,
        "POST",
        &path,
        Some(json!({"kind":"video","muted":true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"id": publisher.id, "kind": "video", "muted": true})
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let video_before = subscriber.received(&video(&publisher)).packets;
    let audio_before = subscriber.received(&audio(&publisher)).packets;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        subscriber.received(&video(&publisher)).packets,
        video_before,
        "video still arrives while server-muted"
    );
    assert!(
        subscriber.received(&audio(&publisher)).packets > audio_before + 10,
        "audio must keep flowing"
    );
    let (_, room) = api(&server, "GET", "/api/rooms/m", None).await;
    let member = member_of(&room, &publisher.id);
    assert_eq!(member["video_muted"], true);
    assert_eq!(member["server_video_muted"], true);
    let v = member["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "video")
        .cloned()
        .unwrap();
    assert_eq!(v["server_muted"], true);
    assert!(
        server
            .metric("yoom_forward_drops_total{reason=\"server_muted\"}")
            .await
            > 0.0
    );

    let (status, _) = api(
        &server,
        "POST",
        &path,
        Some(json!({"kind":"video","muted":false})),
    )
    .await;
    assert_eq!(status, 200);
    subscriber
        .wait_received(&video(&publisher), STEP, |r| r.packets > video_before + 20)
        .await;

    for bad in [
        json!({"kind":"smell","muted":true}),
        json!({"kind":"video"}),
        json!([1]),
    ] {
        let (status, body) = api(&server, "POST", &path, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].as_str().is_some(), "{body}");
    }
    let (status, _) = api(
        &server,
        "POST",
        "/api/rooms/m/members/nobody/mute",
        Some(json!({"kind":"audio","muted":true})),
    )
    .await;
    assert_eq!(status, 404);
    publisher.leave().await;
    subscriber.leave().await;
    server.shutdown().await;
}
