//! Test harness: a real server on 127.0.0.1:0 and WebSocket clients that speak the protocol.
#![allow(dead_code)]

pub mod media;
pub mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yoom::Config;

/// Every await in tests is bounded by this, so a hang fails fast instead of stalling CI.
pub const STEP: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), yoom::ServeError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with_config(test_config()).await
    }

    pub async fn with_config(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(yoom::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// A client past `hello` and the initial `rooms`.
    pub async fn ready_client(&self) -> Client {
        let mut c = self.client().await;
        let hello = c.recv_type("hello").await;
        c.id = hello["id"].as_str().unwrap().to_owned();
        c.recv_type("rooms").await;
        c
    }

    /// A client that joined `room` as `name`.
    pub async fn member(&self, room: &str, name: &str) -> Client {
        let mut c = self.ready_client().await;
        c.send(json!({"type":"join","room":room,"name":name})).await;
        c.recv_type("joined").await;
        c
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(STEP, task)
                .await
                .expect("server stops in time")
                .unwrap()
                .unwrap();
        }
        started.elapsed()
    }

    /// Value of one metric line (exact name including labels) from /metrics.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(self.addr, series).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The real `yoom` binary, run from an empty directory (so the repo's config/yoom.toml is not
/// picked up by accident) with no inherited `YOOM_*` settings.
pub fn yoom_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_yoom"));
    cmd.current_dir(std::env::temp_dir());
    for (key, _) in std::env::vars() {
        if key.starts_with("YOOM_") {
            cmd.env_remove(key);
        }
    }
    // Tests run side by side: no two servers may want the default media port.
    cmd.env("YOOM_UDP_PORT", "0");
    cmd
}

/// Starts `yoom serve` and returns it with the address from its "listening on" log line.
pub fn spawn_server(cmd: &mut std::process::Command) -> (std::process::Child, SocketAddr) {
    let (child, addr, _) = spawn_server_with_log(cmd);
    (child, addr)
}

/// Like [`spawn_server`], also collecting every line the server writes to stderr.
pub fn spawn_server_with_log(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .env("NO_COLOR", "1")
        .spawn()
        .expect("spawn yoom");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = log.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(url) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = match rx.recv_timeout(STEP) {
        Ok(url) => url.parse().unwrap(),
        Err(_) => {
            // Not left running after the test fails.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server logs its address; it wrote: {:#?}",
                log.lock().unwrap()
            )
        }
    };
    (child, addr, log)
}

pub fn test_config() -> Config {
    Config {
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        // Tests run side by side: each server shares media on its own free UDP port.
        udp_port: 0,
        ..Config::default()
    }
}

pub struct Client {
    pub id: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// A client over an already opened WebSocket (e.g. one made with custom headers).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            id: String::new(),
            ws,
        }
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client {
            id: String::new(),
            ws,
        }
    }

    /// A client whose socket receive buffer is tiny, so that not reading fills the server's
    /// queue for it after a few kilobytes instead of megabytes.
    pub async fn connect_with_tiny_buffer(addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = tokio::time::timeout(STEP, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        Client {
            id: String::new(),
            ws,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(STEP, self.ws.send(Message::text(text)))
            .await
            .expect("send in time")
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        tokio::time::timeout(STEP, self.ws.send(m))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// Next JSON message; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next_event(STEP).await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Next message, close or nothing within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Timeout,
                Ok(n) => n,
            };
            match next {
                None => return Event::Closed(None),
                Some(Err(e)) => return Event::Error(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    return Event::Json(
                        serde_json::from_str(t.as_str()).expect("server sends JSON"),
                    )
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Skips messages until one of type `ty` arrives.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// Skips messages until one matching `pred` arrives.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
    }

    /// Sends `v` with `ref` and returns the reply carrying that ref.
    pub async fn request(&mut self, mut v: Value, reference: Value) -> Value {
        v["ref"] = reference.clone();
        self.send(v).await;
        self.recv_until(|m| m["ref"] == reference).await
    }

    /// Asserts that nothing but (optionally) `rooms` updates arrives for `wait`.
    pub async fn expect_quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Event::Timeout => return,
                Event::Json(v) if v["type"] == "rooms" => continue,
                other => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(STEP, self.ws.close(None)).await;
    }
}

#[derive(Debug)]
pub enum Event {
    Json(Value),
    Closed(Option<u16>),
    Error(String),
    Timeout,
}

/// Value of one metric line (exact name including labels) from the server at `addr`'s
/// /metrics; 0 when the series is absent.
pub async fn metric_at(addr: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_request(addr, "GET", path, &[], None).await;
    (status, body)
}

/// One HTTP/1.1 request; returns the status, the header block and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    (status, head, body)
}
