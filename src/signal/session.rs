//! One task per WebSocket: reads frames (size limit, rate limit, idle timeout), turns them into
//! registry calls, and runs a writer task that drains the connection's bounded outbox.
//!
//! The reader never writes to the socket itself: every outgoing frame, replies included, goes
//! through the outbox, so a single writer keeps frames in order and a slow socket only ever
//! blocks its own writer.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};
use webrtc::peer_connection::RTCIceCandidateInit;

use crate::app::App;
use crate::auth;
use crate::config::AuthMode;
use crate::ids::{MemberId, MemberName, RoomId};
use crate::protocol::{
    parse_client_message, ClientMessage, ErrorCode, IceCandidate, PcKind, ProtocolError, Ref,
    ServerMessage, PROTOCOL_VERSION,
};
use crate::room::outbox::{CloseReason, Outbound, Outbox, OutboxReceiver};
use crate::sfu::member::{
    spawn_member_media, MediaCommand, MediaErrorKind, MediaHandle, MediaSignal, Role,
};
use crate::signal::rate_limit::{RateLimiter, Verdict};

/// How long the writer waits for one frame to go out while closing, so that a dead peer cannot
/// hold a task (and shutdown) hostage.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a session closed for flooding or a broken frame keeps reading (and dropping) the
/// client's input so that its bye and close frame are not lost to a TCP reset.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves one upgraded WebSocket until it closes.
pub async fn run(socket: WebSocket, app: App, remote: SocketAddr) {
    let id = MemberId::next();
    let span = info_span!("session", member = %id, room = tracing::field::Empty, remote = %remote);
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
    let (signals_tx, mut signals_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        app: app.clone(),
        id: id.clone(),
        outbox: outbox.clone(),
        media: None,
        can_publish: true,
        signals_tx,
    };

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
            Some(signal) = signals_rx.recv() => session.on_media_signal(signal).await,
            frame = stream.next() => {
                let frame = match frame.map(|read| read.map_err(|e| violation(&e))) {
                    Some(Ok(frame)) => frame,
                    Some(Err(Some((error, reason)))) => {
                        send_error(&app, &outbox, None, error);
                        outbox.close(reason);
                        break reason;
                    }
                    // After a close the server queued (kick, shutdown), that is the reason.
                    _ => break outbox.close_reason().unwrap_or(CloseReason::Normal),
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
                    // The client's close, or its answer to one the server queued.
                    Message::Close(_) => break outbox.close_reason().unwrap_or(CloseReason::Normal),
                    // Pongs (and pings, answered by the library) only prove liveness.
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                match limiter.check(Instant::now()) {
                    Verdict::Allow => session.handle_text(text.as_str()).await,
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
    session.stop_media().await;
    if reason != CloseReason::Normal {
        metrics
            .ws_disconnects_total
            .with_label_values(&[reason.label()])
            .inc();
    }
    if reason == CloseReason::Shutdown && outbox.close_reason().is_none() {
        // Registry::close_all has usually queued bye + close already; this covers a session
        // that saw the token first.
        outbox.send(
            ServerMessage::Bye { reason: "shutdown" }
                .to_json(None)
                .into(),
        );
        outbox.close(CloseReason::Shutdown);
    }
    // The writer ends when the last handle to the queue is gone (the session holds one).
    drop(session);
    drop(outbox);
    if matches!(reason, CloseReason::RateLimited | CloseReason::InvalidUtf8) {
        // The client was still talking when the server gave up on it. Closing a socket with
        // unread input sends a TCP reset, which can overtake (and discard) the bye and close
        // frame just written; so read and drop what still comes until the client answers the
        // close, for a bounded time. (Not after a frame over the limit: reading on would
        // buffer that very frame.)
        let linger = async { while let Some(Ok(_)) = stream.next().await {} };
        let _ = tokio::join!(writer, tokio::time::timeout(CLOSE_LINGER, linger));
    } else {
        let _ = writer.await;
    }
    metrics.ws_connections.dec();
    info!(reason = reason.label(), "connection closed");
}

/// A read error that is the client breaking the WebSocket rules in a way the contract names:
/// what to tell it and why to close (1007 or 1009, RFC 6455 §7.4.1). `None` for a socket that
/// is simply gone, or any other error: those end the session quietly.
fn violation(e: &axum::Error) -> Option<(ProtocolError, CloseReason)> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
    match std::error::Error::source(e)?.downcast_ref::<WsError>()? {
        WsError::Utf8(_) => Some((
            ProtocolError::new(
                ErrorCode::BadJson,
                "a text frame must be valid UTF-8: closing the connection",
            ),
            CloseReason::InvalidUtf8,
        )),
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => Some((
            ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame of {size} bytes exceeds the {max_size} byte limit of the connection: \
                     closing the connection"
                ),
            ),
            CloseReason::TooLarge,
        )),
        _ => None,
    }
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

struct Session {
    app: App,
    id: MemberId,
    outbox: Outbox,
    /// The member's media while it is in a room.
    media: Option<MediaHandle>,
    /// Whether the member may publish (a join token may say no).
    can_publish: bool,
    signals_tx: mpsc::UnboundedSender<MediaSignal>,
}

impl Session {
    async fn handle_text(&mut self, text: &str) {
        let incoming = parse_client_message(text);
        let reference = incoming.reference;
        let message = match incoming.message {
            Ok(m) => m,
            Err(e) => {
                self.app
                    .metrics
                    .ws_messages_total
                    .with_label_values(&["invalid"])
                    .inc();
                send_error(&self.app, &self.outbox, reference.as_ref(), e);
                return;
            }
        };
        self.app
            .metrics
            .ws_messages_total
            .with_label_values(&[message.type_name()])
            .inc();
        debug!(r#type = message.type_name(), "message");
        if let Err(e) = self.dispatch(reference.as_ref(), message).await {
            send_error(&self.app, &self.outbox, reference.as_ref(), e);
        }
    }

    async fn dispatch(
        &mut self,
        reference: Option<&Ref>,
        message: ClientMessage,
    ) -> Result<(), ProtocolError> {
        let registry = self.app.registry.clone();
        let id = &self.id;
        match message {
            ClientMessage::ListRooms => registry.list_rooms(id, reference),
            ClientMessage::SetName { name } => registry.set_name(id, name, reference),
            ClientMessage::Join { room, name, token } => {
                let (name, can_publish) = self.authorize(&room, name, token.as_deref())?;
                let joined = registry.join(id, room, name, self.app.ice_servers(id), reference)?;
                self.can_publish = can_publish;
                if joined.moved || self.media.is_none() {
                    tracing::Span::current().record("room", joined.room.as_str());
                    self.stop_media().await;
                    let handle = spawn_member_media(
                        self.app.media.clone(),
                        self.id.clone(),
                        joined.room,
                        joined.media,
                        self.signals_tx.clone(),
                    );
                    self.media = Some(handle);
                }
            }
            ClientMessage::Leave => {
                registry.leave(id, reference)?;
                self.stop_media().await;
            }
            ClientMessage::Chat { text } => registry.chat(id, text, reference)?,
            ClientMessage::Mute { kind, muted } => registry.mute(id, kind, muted, reference),
            ClientMessage::Offer { pc, sdp } => {
                if pc != PcKind::Publish {
                    return Err(ProtocolError::field(
                        "`pc`: clients offer on \"publish\" only; the server offers on \"subscribe\"",
                    ));
                }
                if !self.can_publish {
                    return Err(ProtocolError::new(
                        ErrorCode::Unauthorized,
                        "this member's join token does not allow publishing",
                    ));
                }
                self.media()?.send(MediaCommand::PublishOffer {
                    sdp,
                    tag: reference.cloned(),
                });
            }
            ClientMessage::Answer { pc, sdp } => {
                if pc != PcKind::Subscribe {
                    return Err(ProtocolError::field(
                        "`pc`: clients answer on \"subscribe\" only; the server answers \"publish\" offers",
                    ));
                }
                self.media()?.send(MediaCommand::SubscribeAnswer {
                    sdp,
                    tag: reference.cloned(),
                });
            }
            ClientMessage::Candidate { pc, candidate } => {
                let candidate = RTCIceCandidateInit {
                    candidate: candidate.candidate,
                    sdp_mid: candidate.sdp_mid,
                    sdp_mline_index: candidate.sdp_mline_index,
                    username_fragment: candidate.username_fragment,
                    url: None,
                };
                self.media()?.send(MediaCommand::Candidate {
                    role: role(pc),
                    candidate,
                    tag: reference.cloned(),
                });
            }
        }
        Ok(())
    }

    fn media(&self) -> Result<&MediaHandle, ProtocolError> {
        self.media.as_ref().ok_or_else(|| {
            ProtocolError::new(ErrorCode::NotInRoom, "join a room before sending media")
        })
    }

    /// In token mode, checks the join token for `room`: its `name` claim becomes the member's
    /// name and `can_publish` what it may do. Otherwise everyone may join and publish.
    fn authorize(
        &self,
        room: &RoomId,
        name: Option<MemberName>,
        token: Option<&str>,
    ) -> Result<(Option<MemberName>, bool), ProtocolError> {
        let config = &self.app.config;
        let (AuthMode::Token, Some(secret)) = (config.auth_mode, &config.auth_secret) else {
            return Ok((name, true));
        };
        let unauthorized =
            |why: &str| ProtocolError::new(ErrorCode::Unauthorized, format!("`token`: {why}"));
        let token = token.ok_or_else(|| unauthorized("this server requires a join token"))?;
        let claims = auth::verify(token, secret.expose(), room.as_str(), SystemTime::now())
            .map_err(|e| unauthorized(&e.to_string()))?;
        let name = MemberName::parse(&claims.name)
            .map_err(|e| unauthorized(&format!("its name is not usable: {e}")))?;
        Ok((Some(name), claims.can_publish))
    }

    async fn stop_media(&mut self) {
        if let Some(media) = self.media.take() {
            media.close().await;
        }
    }

    /// Relays what the member's media actor wants said to the client.
    async fn on_media_signal(&mut self, signal: MediaSignal) {
        let message = match signal {
            MediaSignal::Answer { role, sdp, tag } => {
                let m = ServerMessage::Answer {
                    pc: pc_kind(role),
                    sdp,
                };
                self.outbox.send(m.to_json(tag.as_ref()).into());
                return;
            }
            MediaSignal::Offer { role, sdp } => ServerMessage::Offer {
                pc: pc_kind(role),
                sdp,
            },
            MediaSignal::Candidate { role, candidate } => ServerMessage::Candidate {
                pc: pc_kind(role),
                candidate: IceCandidate {
                    candidate: candidate.candidate,
                    // webrtc-rs reports an empty mid; every m-line is bundled on the first
                    // transport, so the m-line index is what identifies it for the browser.
                    sdp_mid: candidate.sdp_mid.filter(|m| !m.is_empty()),
                    sdp_mline_index: Some(candidate.sdp_mline_index.unwrap_or(0)),
                    username_fragment: candidate.username_fragment.filter(|u| !u.is_empty()),
                },
            },
            MediaSignal::Ack { tag } => {
                self.outbox
                    .send(ServerMessage::Ack.to_json(tag.as_ref()).into());
                return;
            }
            MediaSignal::Error { tag, kind, message } => {
                let error = match kind {
                    MediaErrorKind::BadRequest => ProtocolError::field(message),
                    MediaErrorKind::NoCapacity => {
                        ProtocolError::new(ErrorCode::NoCapacity, message)
                    }
                    MediaErrorKind::Unavailable => {
                        ProtocolError::new(ErrorCode::Unavailable, message)
                    }
                };
                send_error(&self.app, &self.outbox, tag.as_ref(), error);
                return;
            }
            MediaSignal::Failed { role } => {
                warn!(
                    pc = role.as_str(),
                    "media connection failed; removing the member from its room"
                );
                self.stop_media().await;
                self.app.registry.remove_from_room(&self.id, "media_failed");
                return;
            }
        };
        self.outbox.send(message.to_json(None).into());
    }
}

fn role(pc: PcKind) -> Role {
    match pc {
        PcKind::Publish => Role::Publish,
        PcKind::Subscribe => Role::Subscribe,
    }
}

fn pc_kind(role: Role) -> PcKind {
    match role {
        Role::Publish => PcKind::Publish,
        Role::Subscribe => PcKind::Subscribe,
    }
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
