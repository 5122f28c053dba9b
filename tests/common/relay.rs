//! A UDP relay on 127.0.0.1 between a test peer and the server's media socket that drops chosen
//! server→client RTP packets: real loss on loopback (the kernel here has no netem). It can also
//! black the link out entirely, both ways, for a while: a network outage.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

pub struct LossyRelay {
    /// Where the client should send (stands in for the server's address).
    pub client_facing: SocketAddr,
    pub dropped: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A switch that makes a relay drop every datagram in both directions (STUN, DTLS, RTP and
/// RTCP alike) until a deadline. Shared between the test and the relay it controls.
#[derive(Debug, Default)]
pub struct Blackout {
    until: Mutex<Option<Instant>>,
    /// Datagrams dropped by blackouts so far, both directions.
    pub dropped: AtomicU64,
}

impl Blackout {
    /// Drops everything from now for `duration`.
    pub fn start(&self, duration: Duration) {
        *self.until.lock().unwrap() = Some(Instant::now() + duration);
    }

    pub fn active(&self) -> bool {
        self.until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Counts and reports whether a datagram must be dropped now.
    fn swallows(&self) -> bool {
        let active = self.active();
        if active {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        active
    }
}

/// Whether a datagram is RTP (not STUN, DTLS or RTCP): version 2 and a payload type outside the
/// RTCP range (RFC 5761 demultiplexing).
fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

impl LossyRelay {
    /// Relays to `server`, dropping every `drop_every`-th RTP packet going to the client.
    pub async fn start(server: SocketAddr, drop_every: u64) -> LossyRelay {
        Self::start_with(server, Some(drop_every), Arc::default()).await
    }

    /// Relays to `server`, dropping every `drop_every`-th RTP packet going to the client (none
    /// when `None`) and everything while `blackout` is on.
    pub async fn start_with(
        server: SocketAddr,
        drop_every: Option<u64>,
        blackout: Arc<Blackout>,
    ) -> LossyRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let up = {
            let (front, back, client, blackout) = (
                front.clone(),
                back.clone(),
                client.clone(),
                blackout.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if blackout.swallows() {
                        continue;
                    }
                    let _ = back.send_to(&buf[..n], server).await;
                }
            })
        };
        let down = {
            let (front, back, client, dropped) =
                (front.clone(), back.clone(), client.clone(), dropped.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut rtp_seen: u64 = 0;
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    if blackout.swallows() {
                        continue;
                    }
                    if let (true, Some(every)) = (is_rtp(&buf[..n]), drop_every) {
                        rtp_seen += 1;
                        if rtp_seen.is_multiple_of(every) {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    let to = *client.lock().unwrap();
                    if let Some(to) = to {
                        let _ = front.send_to(&buf[..n], to).await;
                    }
                }
            })
        };
        LossyRelay {
            client_facing: front.local_addr().unwrap(),
            dropped,
            tasks: vec![up, down],
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
