//! One task per WebSocket: reads frames (size limit, rate limit, idle timeout), turns them into
//! registry calls, and runs a writer task that drains the connection's bounded outbox.
//!
//! The reader never writes to the socket itself: every outgoing frame, replies included, goes
//! through the outbox, so a single writer keeps frames in order and a slow socket only ever
//! blocks its own writer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tracing::{debug, info, info_span, Instrument};

use crate::app::App;
use crate::ids::MemberId;
use crate::protocol::{
    parse_client_message, ClientMessage, ErrorCode, ProtocolError, Ref, ServerMessage,
    PROTOCOL_VERSION,
};
use crate::room::outbox::{CloseReason, Outbound, Outbox, OutboxReceiver};
use crate::signal::rate_limit::{RateLimiter, Verdict};

/// How long the writer waits for one frame to go out while closing, so that a dead peer cannot
/// hold a task (and shutdown) hostage.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves one upgraded WebSocket until it closes.
pub async fn run(socket: WebSocket, app: App, remote: SocketAddr) {
    let id = MemberId::next();
    let span = info_span!("session", member = %id, remote = %remote);
    serve(socket, app, id).instrument(span).await
}

async fn serve(socket: WebSocket, app: App, id: MemberId) {
    let metrics = &app.metrics;
    metrics.ws_connections_total.inc();
    metrics.ws_connections.inc();
    info!("connection opened");

    let (sink, mut stream) = socket.split();
    let (outbox, outbox_rx) = Outbox::new(app.config.outbound_queue_len);
    let writer = tokio::spawn(write_loop(sink, outbox_rx).in_current_span());

    let hello = ServerMessage::Hello {
        id: id.clone(),
        protocol: PROTOCOL_VERSION,
        server: format!("yoom/{}", env!("CARGO_PKG_VERSION")),
    };
    outbox.send(hello.to_json(None).into());
    app.registry.connect(&id, outbox.clone());

    let mut limiter = RateLimiter::new(
        app.config.rate_limit_per_sec,
        app.config.rate_limit_burst,
        Instant::now(),
    );
    let mut ping = tokio::time::interval(app.config.ping_interval);
    ping.reset(); // the first tick would fire at once
    let idle = tokio::time::sleep(app.config.idle_timeout);
    tokio::pin!(idle);

    let reason = loop {
        tokio::select! {
            () = outbox.killed() => break outbox.close_reason().unwrap_or(CloseReason::Normal),
            () = app.shutdown.cancelled() => break CloseReason::Shutdown,
            () = &mut idle => {
                outbox.close(CloseReason::IdleTimeout);
                break CloseReason::IdleTimeout;
            }
            _ = ping.tick() => {
                outbox.ping();
            }
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else {
                    break CloseReason::Normal;
                };
                idle.as_mut().reset(tokio::time::Instant::now() + app.config.idle_timeout);
                let text = match frame {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        if limiter.check(Instant::now()) == Verdict::Disconnect {
                            break flood(&outbox);
                        }
                        send_error(&app, &outbox, None, ProtocolError::new(
                            ErrorCode::BadJson,
                            "binary frames are not accepted: send JSON text frames",
                        ));
                        continue;
                    }
                    Message::Close(_) => break CloseReason::Normal,
                    // Pongs (and pings, answered by the library) only prove liveness.
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                match limiter.check(Instant::now()) {
                    Verdict::Allow => handle_text(&app, &id, &outbox, text.as_str()),
                    Verdict::Refuse => {
                        let reference = parse_client_message(text.as_str()).reference;
                        send_error(&app, &outbox, reference.as_ref(), ProtocolError::new(
                            ErrorCode::RateLimited,
                            format!("more than {} messages per second: slow down", app.config.rate_limit_per_sec),
                        ));
                    }
                    Verdict::Disconnect => break flood(&outbox),
                }
            }
        }
    };

    app.registry.disconnect(&id);
    if reason != CloseReason::Normal {
        metrics
            .ws_disconnects_total
            .with_label_values(&[reason.label()])
            .inc();
    }
    if reason == CloseReason::Shutdown && !outbox.is_killed() {
        // Registry::close_all has usually queued bye + close already; this covers a session
        // that saw the token first.
        outbox.send(
            ServerMessage::Bye { reason: "shutdown" }
                .to_json(None)
                .into(),
        );
        outbox.close(CloseReason::Shutdown);
    }
    drop(outbox);
    let _ = writer.await;
    metrics.ws_connections.dec();
    info!(reason = reason.label(), "connection closed");
}

fn flood(outbox: &Outbox) -> CloseReason {
    outbox.send(
        ServerMessage::Bye {
            reason: "rate_limited",
        }
        .to_json(None)
        .into(),
    );
    outbox.close(CloseReason::RateLimited);
    CloseReason::RateLimited
}

fn handle_text(app: &App, id: &MemberId, outbox: &Outbox, text: &str) {
    let incoming = parse_client_message(text);
    let reference = incoming.reference;
    let message = match incoming.message {
        Ok(m) => m,
        Err(e) => {
            app.metrics
                .ws_messages_total
                .with_label_values(&["invalid"])
                .inc();
            send_error(app, outbox, reference.as_ref(), e);
            return;
        }
    };
    app.metrics
        .ws_messages_total
        .with_label_values(&[message.type_name()])
        .inc();
    debug!(r#type = message.type_name(), "message");
    if let Err(e) = dispatch(app, id, reference.as_ref(), message) {
        send_error(app, outbox, reference.as_ref(), e);
    }
}

fn dispatch(
    app: &App,
    id: &MemberId,
    reference: Option<&Ref>,
    message: ClientMessage,
) -> Result<(), ProtocolError> {
    let registry = &app.registry;
    match message {
        ClientMessage::ListRooms => registry.list_rooms(id, reference),
        ClientMessage::SetName { name } => registry.set_name(id, name, reference),
        ClientMessage::Join { room, name } => {
            registry.join(id, room, name, app.ice_servers(), reference)?
        }
        ClientMessage::Leave => registry.leave(id, reference)?,
        ClientMessage::Chat { text } => registry.chat(id, text, reference)?,
        ClientMessage::Mute { kind, muted } => registry.mute(id, kind, muted, reference),
        ClientMessage::Offer { .. }
        | ClientMessage::Answer { .. }
        | ClientMessage::Candidate { .. } => {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                "media is not enabled on this server",
            ))
        }
    }
    Ok(())
}

fn send_error(app: &App, outbox: &Outbox, reference: Option<&Ref>, error: ProtocolError) {
    app.metrics
        .signal_errors_total
        .with_label_values(&[error.code.as_str()])
        .inc();
    debug!(code = error.code.as_str(), message = %error.message, "error sent");
    outbox.send(ServerMessage::from(error).to_json(reference).into());
}

async fn write_loop<S>(mut sink: S, mut outbox: OutboxReceiver)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let close = loop {
        let item = tokio::select! {
            biased;
            () = outbox.signal.killed() => break None,
            item = outbox.rx.recv() => item,
        };
        let message = match item {
            Some(Outbound::Text(frame)) => Message::Text(frame),
            Some(Outbound::Ping) => Message::Ping(Default::default()),
            Some(Outbound::Close(reason)) => break Some(reason),
            None => break Some(CloseReason::Normal),
        };
        let sent = tokio::select! {
            () = outbox.signal.killed() => break None,
            sent = sink.send(message) => sent,
        };
        if sent.is_err() {
            return;
        }
    };
    let reason = close
        .or(outbox.signal.close_reason())
        .unwrap_or(CloseReason::SlowConsumer);
    let frame = CloseFrame {
        code: reason.code(),
        reason: reason.label().into(),
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.close()).await;
}
