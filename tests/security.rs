//! Who gets in: join tokens, the Origin check, per-address and room limits; and secrets that
//! must never leave the server (logs, API, help output).

mod common;

use std::time::{Duration, SystemTime};

use common::media::publish_offer_sdp;
use common::{
    http_request, spawn_server_with_log, test_config, yoom_command, Client, TestServer, STEP,
};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use yoom::config::{AuthMode, Secret};

const AUTH_SECRET: &str = "join-token-secret-0123456789abcdefgh";

async fn token_server() -> TestServer {
    TestServer::with_config(yoom::Config {
        auth_mode: AuthMode::Token,
        auth_secret: Some(Secret::new(AUTH_SECRET)),
        ..test_config()
    })
    .await
}

/// A token minted by the real `yoom token` command.
fn cli_token(room: &str, name: &str, extra: &[&str]) -> String {
    let out = yoom_command()
        .args(["token", "--room", room, "--name", name])
        .args(extra)
        .env("YOOM_AUTH_SECRET", AUTH_SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn join_with(client: &mut Client, room: &str, token: Option<&str>) -> serde_json::Value {
    let mut msg = json!({"type":"join","room":room,"name":"ignored","ref":"j"});
    if let Some(t) = token {
        msg["token"] = json!(t);
    }
    client.send(msg).await;
    client
        .recv_until(|m| m["type"] == "joined" || m["type"] == "error")
        .await
}

#[tokio::test]
async fn in_token_mode_only_a_valid_token_for_the_room_gets_in() {
    let server = token_server().await;
    let mut c = server.ready_client().await;

    let refused = join_with(&mut c, "team", None).await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert_eq!(refused["ref"], "j");

    let other_room = cli_token("other", "alice", &[]);
    let refused = join_with(&mut c, "team", Some(&other_room)).await;
    assert_eq!(refused["code"], "unauthorized");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("another room"),
        "{refused}"
    );

    let expired = yoom::auth::mint(
        &yoom::auth::claims_for(
            "team",
            "alice",
            Duration::from_secs(60),
            true,
            SystemTime::now() - Duration::from_secs(3600),
        ),
        AUTH_SECRET,
    );
    let refused = join_with(&mut c, "team", Some(&expired)).await;
    assert_eq!(refused["code"], "unauthorized");
    assert!(
        refused["message"].as_str().unwrap().contains("expired"),
        "{refused}"
    );

    let forged = yoom::auth::mint(
        &yoom::auth::claims_for(
            "team",
            "alice",
            Duration::from_secs(60),
            true,
            SystemTime::now(),
        ),
        "somebody-elses-secret-0123456789abcdef",
    );
    let refused = join_with(&mut c, "team", Some(&forged)).await;
    assert_eq!(refused["code"], "unauthorized");
    let garbage = join_with(&mut c, "team", Some("not-a-token")).await;
    assert_eq!(garbage["code"], "unauthorized");

    // The token's name wins over the one in the message.
    let good = cli_token("team", "alice", &["--ttl", "10m"]);
    let joined = join_with(&mut c, "team", Some(&good)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["self"]["name"], "alice");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_only_token_may_not_publish() {
    let server = token_server().await;
    let mut c = server.ready_client().await;
    let token = cli_token("stage", "viewer", &["--no-publish"]);
    let joined = join_with(&mut c, "stage", Some(&token)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    // A real offer, so that only the token can be the reason for refusing it.
    let offer = publish_offer_sdp().await;
    c.send(json!({"type":"offer","pc":"publish","sdp":offer,"ref":7}))
        .await;
    let refused = c.recv_type("error").await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    assert_eq!(refused["ref"], 7);
    assert_eq!(server.metric("yoom_peer_connections").await, 0.0);
    server.shutdown().await;
}

async fn ws_with_origin(server: &TestServer, origin: &str) -> Result<Client, u16> {
    open_ws(server, Some(origin)).await
}

/// Opens /ws, with an `Origin` header if given; the HTTP status when refused.
async fn open_ws(server: &TestServer, origin: Option<&str>) -> Result<Client, u16> {
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_open_the_socket() {
    let server = TestServer::start().await;
    assert_eq!(
        ws_with_origin(&server, "https://evil.example").await.err(),
        Some(403)
    );
    assert_eq!(ws_with_origin(&server, "null").await.err(), Some(403));
    let own = format!("http://{}", server.addr);
    let mut ok = ws_with_origin(&server, &own).await.expect("own origin");
    ok.recv_type("hello").await;
    server.shutdown().await;

    let server = TestServer::with_config(yoom::Config {
        allowed_origins: vec!["https://meet.example.org".into()],
        ..test_config()
    })
    .await;
    assert!(ws_with_origin(&server, "https://meet.example.org")
        .await
        .is_ok());
    let own = format!("http://{}", server.addr);
    assert_eq!(ws_with_origin(&server, &own).await.err(), Some(403));
    server.shutdown().await;
}

#[tokio::test]
async fn connections_per_address_and_rooms_are_limited() {
    let server = TestServer::with_config(yoom::Config {
        max_connections_per_ip: 3,
        max_rooms: 2,
        ..test_config()
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.ready_client().await);
    }
    assert_eq!(open_ws(&server, None).await.err(), Some(429));
    // A slot frees when a connection closes.
    clients.pop().unwrap().close().await;
    let deadline = std::time::Instant::now() + STEP;
    let mut again = loop {
        if let Ok(c) = open_ws(&server, None).await {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "slot not returned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    again.recv_type("hello").await;

    for (c, room) in clients.iter_mut().zip(["one", "two"]) {
        c.send(json!({"type":"join","room":room})).await;
        c.recv_type("joined").await;
    }
    again
        .send(json!({"type":"join","room":"three","ref":1}))
        .await;
    let refused = again.recv_type("error").await;
    assert_eq!(refused["code"], "no_capacity", "{refused}");
    again.send(json!({"type":"join","room":"one"})).await;
    again.recv_type("joined").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_the_api_or_help() {
    let turn_secret = "turn-secret-NEVER-LOGGED-4711";
    let admin_token = "admin-token-NEVER-LOGGED-4711";
    let (mut child, addr, log) = spawn_server_with_log(
        yoom_command()
            .args([
                "serve",
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--log",
                "debug",
            ])
            .args(["--turn-urls", "turn:127.0.0.1:3478"])
            .env("YOOM_TURN_SECRET", turn_secret)
            .env("YOOM_ADMIN_TOKEN", admin_token)
            .env("YOOM_AUTH_MODE", "token")
            .env("YOOM_AUTH_SECRET", AUTH_SECRET),
    );
    let url = format!("ws://{addr}/ws");
    let mut c = Client::connect(&url).await;
    c.recv_type("hello").await;
    let token = cli_token("vault", "eve", &[]);
    let joined = join_with(&mut c, "vault", Some(&token)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let turn = &joined["ice_servers"][0];
    assert!(turn["username"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", c_id(&joined))));
    let bearer = format!("Bearer {admin_token}");
    let mut api_text = String::new();
    for path in ["/api/rooms", "/api/rooms/vault"] {
        let (status, _, body) =
            http_request(addr, "GET", path, &[("Authorization", &bearer)], None).await;
        assert_eq!(status, 200);
        api_text.push_str(&body);
    }
    let (_, metrics) = common::http_get(addr, "/metrics").await;
    let help = yoom_command()
        .args(["serve", "--help"])
        .env("YOOM_TURN_SECRET", turn_secret)
        .env("YOOM_ADMIN_TOKEN", admin_token)
        .env("YOOM_AUTH_SECRET", AUTH_SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    c.close().await;
    let _ = child.kill();
    let _ = child.wait();
    let logs = log.lock().unwrap().join("\n");
    assert!(logs.contains("member joined"), "debug logs were captured");
    for secret in [turn_secret, admin_token, AUTH_SECRET, token.as_str()] {
        for (what, text) in [
            ("logs", &logs),
            ("api", &api_text),
            ("metrics", &metrics),
            ("help", &help),
        ] {
            assert!(!text.contains(secret), "{what} contain a secret");
        }
    }
}

fn c_id(joined: &serde_json::Value) -> String {
    joined["self"]["id"].as_str().unwrap().to_owned()
}
