//! `yoom healthcheck` (the container's HEALTHCHECK) against a real server, a closed port, a
//! wrong path and a server that never answers.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{TestServer, STEP};

/// Runs `yoom healthcheck ARGS` with only the given `YOOM_*` variables set.
async fn healthcheck(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_yoom"));
    cmd.arg("healthcheck").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("YOOM_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(vars.iter().copied()).kill_on_drop(true);
    tokio::time::timeout(STEP, cmd.output())
        .await
        .expect("healthcheck exits in time")
        .expect("run yoom healthcheck")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_running_server_is_healthy() {
    let server = TestServer::start().await;
    let url = format!("http://{}/healthz", server.addr);
    let out = healthcheck(&["--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Without --url the address comes from YOOM_BIND and YOOM_PORT, as in the container.
    let port = server.addr.port().to_string();
    let out = healthcheck(&[], &[("YOOM_BIND", "0.0.0.0"), ("YOOM_PORT", &port)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn a_closed_port_is_unhealthy() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
        // Dropped here: nothing listens on `port` any more.
    };
    let url = format!("http://127.0.0.1:{port}/healthz");
    let out = healthcheck(&["--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&url), "the message names the URL: {err}");
}

#[tokio::test]
async fn another_status_is_unhealthy() {
    let server = TestServer::start().await;
    let url = format!("http://{}/no-such-page", server.addr);
    let out = healthcheck(&["--url", &url], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
    server.shutdown().await;
}

#[tokio::test]
async fn a_silent_server_times_out_in_about_two_seconds() {
    // Accepts connections (the kernel does, from the backlog) but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", listener.local_addr().unwrap());
    let started = Instant::now();
    let out = healthcheck(&["--url", &url], &[]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no answer"), "{}", stderr(&out));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn a_bad_url_or_env_is_unhealthy_with_a_message() {
    for (args, vars) in [
        (vec!["--url", "https://127.0.0.1/healthz"], vec![]),
        (vec![], vec![("YOOM_PORT", "not-a-port")]),
    ] {
        let out = healthcheck(&args, &vars).await;
        assert_eq!(out.status.code(), Some(1), "{args:?} {vars:?}");
        assert!(!stderr(&out).is_empty());
    }
}
