//! The sending end of one client connection: a bounded queue drained by that connection's
//! writer task, plus a kill switch.
//!
//! Everyone who talks to a client (the room registry fanning out chat, the lobby broadcaster,
//! the client's own session) only ever `try_send`s here, so a client that stops reading can
//! never make anyone else wait: when its queue is full it is disconnected instead.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Serialized JSON text, shared by every recipient of one broadcast (cloning is a refcount).
pub type Frame = Utf8Bytes;

/// What the writer task sends on the socket.
#[derive(Debug)]
pub enum Outbound {
    Text(Frame),
    Ping,
    /// Close the socket with this code and reason after everything queued before it.
    Close(CloseReason),
}

/// Why the server ended a connection; also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    Shutdown,
    SlowConsumer,
    RateLimited,
    IdleTimeout,
    /// An administrator removed the member.
    Kicked,
    /// The client sent a text frame that is not UTF-8 (RFC 6455 §8.1: fail the connection).
    InvalidUtf8,
    /// The client sent a frame over the WebSocket read limit.
    TooLarge,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Shutdown => "shutdown",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::IdleTimeout => "idle",
            CloseReason::Kicked => "kicked",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::TooLarge => "too_large",
        }
    }

    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Shutdown => 1001,
            CloseReason::SlowConsumer | CloseReason::RateLimited | CloseReason::IdleTimeout => 1008,
            // Application range (4000–4999): "removed by an administrator".
            CloseReason::Kicked => 4001,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::TooLarge => 1009,
        }
    }
}

#[derive(Debug)]
struct Shared {
    kill: CancellationToken,
    reason: OnceLock<CloseReason>,
}

/// Cloneable handle to one connection's outbound queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
}

/// Receiving side, owned by the connection's writer task.
pub struct OutboxReceiver {
    pub rx: mpsc::Receiver<Outbound>,
    pub signal: CloseSignal,
}

/// The writer's view of the kill switch.
pub struct CloseSignal(Arc<Shared>);

impl CloseSignal {
    /// Resolves when the connection has been killed.
    pub async fn killed(&self) {
        self.0.kill.cancelled().await
    }

    /// Why the connection was killed or closed, if it was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.reason.get().copied()
    }
}

/// Result of queuing a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The queue was full: the connection has been killed as too slow.
    Overflow,
    /// The connection is already closing.
    Closed,
}

impl Outbox {
    pub fn new(capacity: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            kill: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        let outbox = Outbox {
            tx,
            shared: shared.clone(),
        };
        (
            outbox,
            OutboxReceiver {
                rx,
                signal: CloseSignal(shared),
            },
        )
    }

    pub fn send(&self, frame: Frame) -> Sent {
        self.push(Outbound::Text(frame))
    }

    pub fn ping(&self) -> Sent {
        self.push(Outbound::Ping)
    }

    /// Queues a close after what is already queued; if even that does not fit, kills at once.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        if self.tx.try_send(Outbound::Close(reason)).is_err() {
            self.shared.kill.cancel();
        }
    }

    /// Ends the connection now, dropping whatever is still queued.
    pub fn kill(&self, reason: CloseReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.kill.cancel();
    }

    pub fn is_killed(&self) -> bool {
        self.shared.kill.is_cancelled()
    }

    /// Resolves when the connection has been killed.
    pub async fn killed(&self) {
        self.shared.kill.cancelled().await
    }

    /// The first reason given to `close` or `kill`, if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason.get().copied()
    }

    fn push(&self, item: Outbound) -> Sent {
        if self.shared.kill.is_cancelled() {
            return Sent::Closed;
        }
        match self.tx.try_send(item) {
            Ok(()) => Sent::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kill(CloseReason::SlowConsumer);
                Sent::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_kills_only_that_connection() {
        let (slow, _slow_rx) = Outbox::new(2);
        let (fast, mut fast_rx) = Outbox::new(2);
        for _ in 0..2 {
            assert_eq!(slow.send(Frame::from_static("x")), Sent::Queued);
        }
        assert_eq!(slow.send(Frame::from_static("x")), Sent::Overflow);
        assert!(slow.is_killed());
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(slow.send(Frame::from_static("x")), Sent::Closed);
        assert_eq!(fast.send(Frame::from_static("y")), Sent::Queued);
        assert!(!fast.is_killed());
        assert!(matches!(fast_rx.rx.try_recv(), Ok(Outbound::Text(t)) if t.as_str() == "y"));
    }
}
