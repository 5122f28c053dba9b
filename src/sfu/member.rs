//! One member's media: its publish connection (the client offers, the server answers; a
//! webrtc-rs connection) and its subscribe connection (the server offers every track the member
//! should receive; a [`SendConnection`] Yoom drives itself).
//!
//! An actor owns both connections and handles one command at a time, so negotiations on a
//! connection never overlap. Track changes that arrive while the server waits for the client's
//! answer are coalesced into the next offer: a burst of joins costs one re-offer, not one each.
//! All per-subscriber forwarding state (one [`Egress`] per forwarded track) is created here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    PeerConnection, RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RTCRtpSenderId;

use crate::ids::{MemberId, RoomId};
use crate::metrics::{GaugeGuard, Metrics};
use crate::sfu::codecs::MediaDirection;
use crate::sfu::codecs::{same_codec, supported_codecs};
use crate::sfu::egress::{Egress, FirstVideo};
use crate::sfu::forwarder::RtpMunger;
use crate::sfu::peer::{build_peer_connection, EventForwarder, PeerEvent, PeerOptions};
use crate::sfu::room::SfuRoom;
use crate::sfu::send_connection::SendConnection;
use crate::sfu::ssrc_pool::{random_ssrc, SsrcPool};
use crate::sfu::track::{KeyframeReason, PublishedTrack, TrackId};
use crate::sfu::transport::{ConnectionTransport, MediaTransport};
use crate::sfu::wire_stats::{ConnectionStats, Side, WireStatsConfig};

/// If the client has not answered a subscribe offer by then, the offer is sent again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Track changes arriving within this window go out in one offer (a publisher's audio and video
/// tracks start a few milliseconds apart; a leaving member's tracks go together).
const NEGOTIATION_DEBOUNCE: Duration = Duration::from_millis(30);
/// Remote candidates kept while waiting for a remote description; more is a misbehaving client.
const MAX_PENDING_CANDIDATES: usize = 64;
/// Media sections a publish offer may have. A browser publishes a microphone, a camera and
/// perhaps a screen; each section becomes a receiver here and, once media flows, a track in
/// every subscriber's connection, so hundreds would be one member's cost paid by the room.
pub const MAX_PUBLISH_MEDIA_SECTIONS: usize = 16;

/// Which of a member's two connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Publish,
    Subscribe,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Subscribe => "subscribe",
        }
    }
}

/// Opaque token the signaling layer attaches to a request so errors can answer it.
pub type ReplyTag = Option<serde_json::Value>;

pub enum MediaCommand {
    /// The client's offer on its publish connection.
    PublishOffer {
        sdp: String,
        tag: ReplyTag,
    },
    /// The client's answer to the server's subscribe offer.
    SubscribeAnswer {
        sdp: String,
        tag: ReplyTag,
    },
    Candidate {
        role: Role,
        candidate: RTCIceCandidateInit,
        tag: ReplyTag,
    },
    /// Another member published a track this member should receive.
    TrackAdded(Arc<PublishedTrack>),
    /// Every track the room had when this member joined: all there is, so they are offered
    /// at once rather than after the debounce that gathers a publisher's tracks.
    TracksOnJoin(Vec<Arc<PublishedTrack>>),
    TrackRemoved(TrackId),
    Close,
}

/// What the media actor asks the signaling layer to send to the client.
#[derive(Debug)]
pub enum MediaSignal {
    Answer {
        role: Role,
        sdp: String,
        tag: ReplyTag,
    },
    Offer {
        role: Role,
        sdp: String,
    },
    Candidate {
        role: Role,
        candidate: RTCIceCandidateInit,
    },
    /// A request (answer, candidate) was applied.
    Ack {
        tag: ReplyTag,
    },
    /// The client sent something unusable (bad SDP, an answer with no offer pending...), or
    /// the server cannot serve it.
    Error {
        tag: ReplyTag,
        kind: MediaErrorKind,
        message: String,
    },
    /// A connection failed for good (ICE lost for 15 s): the member should be removed.
    Failed {
        role: Role,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaErrorKind {
    /// Something in the client's request is wrong.
    BadRequest,
    /// The server is out of a resource (media ports) for this member.
    NoCapacity,
    /// Media cannot be set up right now for another reason.
    Unavailable,
}

/// Handle held by the member's signaling session.
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<MediaCommand>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl MediaHandle {
    pub fn send(&self, command: MediaCommand) {
        let _ = self.commands.send(command);
    }

    /// Closes both connections, unpublishes the member's tracks and waits for the actor to end.
    pub async fn close(mut self) {
        let _ = self.commands.send(MediaCommand::Close);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        // A handle dropped without close() (a panicking session) still ends the actor.
        let _ = self.commands.send(MediaCommand::Close);
    }
}

/// Settings shared by every member's media.
#[derive(Clone)]
pub struct MediaContext {
    pub peer_options: PeerOptions,
    pub transport: Arc<MediaTransport>,
    pub metrics: Arc<Metrics>,
}

/// Starts the media actor of `member` in `room`.
pub fn spawn_member_media(
    ctx: MediaContext,
    member: MemberId,
    room_id: RoomId,
    room: Arc<SfuRoom>,
    signals: mpsc::UnboundedSender<MediaSignal>,
) -> MediaHandle {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let subscribe_stats = Arc::new(ConnectionStats::default());
    room.join(&member, commands_tx.clone(), subscribe_stats.clone());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let span = info_span!("media", room = %room_id, member = %member);
    let actor = MemberMedia {
        task: ctx.metrics.task_guard(),
        ctx,
        member,
        room,
        signals,
        events_tx,
        ended_tx,
        publish: None,
        subscribe: None,
        published: HashMap::new(),
        wanted: BTreeMap::new(),
        forwarding: BTreeMap::new(),
        ssrcs: SsrcPool::default(),
        offer_sent_at: None,
        renegotiate: false,
        negotiate_at: None,
        subscriber_connected: Arc::new(AtomicBool::new(false)),
        subscribe_refused: false,
        subscribe_stats,
        first_video: FirstVideo::new(Instant::now()),
    };
    let done = tokio::spawn(actor.run(commands_rx, events_rx, ended_rx).instrument(span));
    MediaHandle {
        commands: commands_tx,
        done: Some(done),
    }
}

/// A member's connection: `P` is webrtc-rs' connection (publish) or Yoom's own
/// [`SendConnection`] (subscribe).
struct Connection<P> {
    pc: P,
    /// Its sockets and the addresses its candidates must announce.
    transport: Arc<ConnectionTransport>,
    has_remote_description: bool,
    pending_candidates: Vec<RTCIceCandidateInit>,
    _live: GaugeGuard,
}

/// One track forwarded to this member.
struct DownTrack {
    source: Arc<PublishedTrack>,
    sender: RTCRtpSenderId,
    ssrc: u32,
    state: DownState,
}

/// Where a down track is: until the answer decides, packets are not forwarded.
enum DownState {
    /// Offered, not answered yet. `numbering`: what the previous track on this SSRC reached,
    /// if the SSRC was reused.
    Negotiating { numbering: Option<RtpMunger> },
    /// Its egress runs.
    Forwarding(Arc<Egress>),
    /// The subscriber cannot decode the codec; nothing is sent on the SSRC.
    Skipped { numbering: Option<RtpMunger> },
}

impl DownState {
    fn take_numbering(&mut self) -> Option<RtpMunger> {
        match self {
            DownState::Negotiating { numbering } | DownState::Skipped { numbering } => {
                numbering.take()
            }
            DownState::Forwarding(_) => None,
        }
    }

    /// The numbering the next track on this SSRC continues; stops the egress if one runs.
    fn finish(self) -> Option<RtpMunger> {
        match self {
            DownState::Forwarding(egress) => Some(egress.finish()),
            DownState::Negotiating { numbering } | DownState::Skipped { numbering } => numbering,
        }
    }
}

struct MemberMedia {
    ctx: MediaContext,
    member: MemberId,
    room: Arc<SfuRoom>,
    signals: mpsc::UnboundedSender<MediaSignal>,
    events_tx: mpsc::UnboundedSender<(Role, PeerEvent)>,
    ended_tx: mpsc::UnboundedSender<TrackId>,
    publish: Option<Connection<Arc<dyn PeerConnection>>>,
    subscribe: Option<Connection<Arc<SendConnection>>>,
    /// Tracks this member publishes.
    published: HashMap<TrackId, Arc<PublishedTrack>>,
    /// Other members' tracks this member should receive.
    wanted: BTreeMap<TrackId, Arc<PublishedTrack>>,
    /// What the subscribe connection carries (or is being negotiated to carry).
    forwarding: BTreeMap<TrackId, DownTrack>,
    /// The subscribe connection's SSRCs.
    ssrcs: SsrcPool<RTCRtpSenderId>,
    /// When the outstanding subscribe offer was sent; `None` when none is outstanding.
    offer_sent_at: Option<Instant>,
    /// The wanted set changed while an offer was outstanding.
    renegotiate: bool,
    /// When to negotiate the latest track changes (debounced).
    negotiate_at: Option<tokio::time::Instant>,
    /// Whether the subscribe connection is up; egresses drop packets until it is, since
    /// webrtc-rs cannot encrypt them before DTLS completes.
    subscriber_connected: Arc<AtomicBool>,
    /// The subscribe connection could not be created and the client was told so.
    subscribe_refused: bool,
    /// Measured on the subscribe connection (RTT), read by the admin API through the room.
    subscribe_stats: Arc<ConnectionStats>,
    first_video: Arc<FirstVideo>,
    task: GaugeGuard,
}

impl MemberMedia {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<MediaCommand>,
        mut events: mpsc::UnboundedReceiver<(Role, PeerEvent)>,
        mut ended: mpsc::UnboundedReceiver<TrackId>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None | Some(MediaCommand::Close) => break,
                    Some(command) => self.handle_command(command).await,
                },
                Some((role, event)) = events.recv() => {
                    if !self.handle_event(role, event).await {
                        break;
                    }
                }
                Some(track) = ended.recv() => self.unpublish(track),
                () = sleep_until_opt(self.negotiate_at) => {
                    self.negotiate_at = None;
                    self.negotiate().await;
                }
                _ = tick.tick() => {
                    if self.offer_sent_at.is_some_and(|t| t.elapsed() > ANSWER_TIMEOUT) {
                        warn!("no answer to the subscribe offer, offering again");
                        self.resend_offer().await;
                    }
                }
            }
        }
        self.shut_down().await;
        drop(self.task);
    }

    async fn handle_command(&mut self, command: MediaCommand) {
        match command {
            MediaCommand::PublishOffer { sdp, tag } => self.on_publish_offer(sdp, tag).await,
            MediaCommand::SubscribeAnswer { sdp, tag } => self.on_subscribe_answer(sdp, tag).await,
            MediaCommand::Candidate {
                role,
                candidate,
                tag,
            } => self.on_remote_candidate(role, candidate, tag).await,
            MediaCommand::TrackAdded(track) => {
                self.wanted.insert(track.id, track);
                self.schedule_negotiation();
            }
            MediaCommand::TracksOnJoin(tracks) => {
                for track in tracks {
                    self.wanted.insert(track.id, track);
                }
                self.negotiate_at = Some(tokio::time::Instant::now());
            }
            MediaCommand::TrackRemoved(id) => {
                if self.wanted.remove(&id).is_some() {
                    self.schedule_negotiation();
                }
            }
            MediaCommand::Close => {}
        }
    }

    fn schedule_negotiation(&mut self) {
        if self.negotiate_at.is_none() {
            self.negotiate_at = Some(tokio::time::Instant::now() + NEGOTIATION_DEBOUNCE);
        }
    }

    /// Returns false when the member should stop (a connection failed for good).
    async fn handle_event(&mut self, role: Role, event: PeerEvent) -> bool {
        match event {
            PeerEvent::Candidate(mut candidate) => {
                let transport = match role {
                    Role::Publish => self.publish.as_ref().map(|c| &c.transport),
                    Role::Subscribe => self.subscribe.as_ref().map(|c| &c.transport),
                };
                if let Some(transport) = transport {
                    candidate.candidate = transport.announce_candidate(&candidate.candidate);
                }
                self.signal(MediaSignal::Candidate { role, candidate });
            }
            PeerEvent::GatheringComplete => {}
            PeerEvent::State(state) => {
                info!(pc = role.as_str(), state = %state, "connection state");
                match state {
                    RTCPeerConnectionState::Failed => {
                        self.signal(MediaSignal::Failed { role });
                        return false;
                    }
                    RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Closed
                        if role == Role::Subscribe =>
                    {
                        self.subscriber_connected.store(false, Ordering::Relaxed);
                    }
                    RTCPeerConnectionState::Connected if role == Role::Subscribe => {
                        self.subscriber_connected.store(true, Ordering::Relaxed);
                        // Packets written before the subscriber's SRTP was up are lost:
                        // start every video track with a fresh keyframe.
                        for down in self.forwarding.values() {
                            down.source.request_keyframe(KeyframeReason::NewSubscriber);
                        }
                    }
                    _ => {}
                }
            }
            PeerEvent::Track(remote) if role == Role::Publish => self.on_remote_track(remote).await,
            PeerEvent::Track(_) => {}
        }
        true
    }

    fn signal(&self, signal: MediaSignal) {
        let _ = self.signals.send(signal);
    }

    fn ack(&self, tag: ReplyTag) {
        if tag.is_some() {
            self.signal(MediaSignal::Ack { tag });
        }
    }

    fn reply_error(&self, tag: ReplyTag, message: String) {
        self.report_error(tag, MediaErrorKind::BadRequest, message);
    }

    fn report_error(&self, tag: ReplyTag, kind: MediaErrorKind, message: String) {
        warn!(%message, ?kind, "media request refused");
        self.signal(MediaSignal::Error { tag, kind, message });
    }

    /// A transport and the options for a new connection of `role`.
    fn new_connection_parts(
        &self,
        role: Role,
    ) -> Result<(Arc<ConnectionTransport>, PeerOptions), (MediaErrorKind, String)> {
        let transport = self.ctx.transport.connection().map_err(|e| {
            (
                MediaErrorKind::NoCapacity,
                format!(
                    "no media port free for the {} connection: {e}",
                    role.as_str()
                ),
            )
        })?;
        let (direction, side, shared) = match role {
            Role::Publish => (
                MediaDirection::ReceiveOnly,
                Side::Publish,
                Arc::new(ConnectionStats::default()),
            ),
            Role::Subscribe => (
                MediaDirection::SendOnly,
                Side::Subscribe,
                self.subscribe_stats.clone(),
            ),
        };
        let options = PeerOptions {
            direction,
            wire_stats: Some(WireStatsConfig {
                side,
                metrics: self.ctx.metrics.clone(),
                shared,
            }),
            ..self.ctx.peer_options.clone()
        };
        Ok((transport, options))
    }

    fn connection_created<P>(
        &self,
        role: Role,
        pc: P,
        transport: Arc<ConnectionTransport>,
    ) -> Connection<P> {
        self.ctx
            .metrics
            .connection_total
            .with_label_values(&[role.as_str()])
            .inc();
        Connection {
            pc,
            transport,
            has_remote_description: false,
            pending_candidates: Vec::new(),
            _live: GaugeGuard::new(self.ctx.metrics.peer_connections.clone()),
        }
    }

    fn unavailable(role: Role, error: impl std::fmt::Display) -> (MediaErrorKind, String) {
        warn!(pc = role.as_str(), error = %error, "cannot create peer connection");
        (
            MediaErrorKind::Unavailable,
            "media is unavailable right now".to_string(),
        )
    }

    /// The member's publish connection, created on first use.
    async fn publish_connection(
        &mut self,
    ) -> Result<&mut Connection<Arc<dyn PeerConnection>>, (MediaErrorKind, String)> {
        if self.publish.is_none() {
            let role = Role::Publish;
            let (transport, options) = self.new_connection_parts(role)?;
            let handler = EventForwarder::new(role, self.events_tx.clone());
            let pc = build_peer_connection(&options, handler, Some(&transport))
                .await
                .map_err(|e| Self::unavailable(role, e))?;
            self.publish = Some(self.connection_created(role, pc, transport));
        }
        self.publish
            .as_mut()
            .ok_or((MediaErrorKind::Unavailable, "no connection".to_string()))
    }

    /// The member's subscribe connection, created on first use.
    fn subscribe_connection(
        &mut self,
    ) -> Result<&mut Connection<Arc<SendConnection>>, (MediaErrorKind, String)> {
        if self.subscribe.is_none() {
            let role = Role::Subscribe;
            let (transport, options) = self.new_connection_parts(role)?;
            let pc = SendConnection::open(
                &options,
                &transport,
                self.events_tx.clone(),
                self.ctx.metrics.clone(),
            )
            .map_err(|e| Self::unavailable(role, e))?;
            self.subscribe = Some(self.connection_created(role, Arc::new(pc), transport));
        }
        self.subscribe
            .as_mut()
            .ok_or((MediaErrorKind::Unavailable, "no connection".to_string()))
    }

    async fn on_publish_offer(&mut self, sdp: String, tag: ReplyTag) {
        let started = Instant::now();
        let offer = match RTCSessionDescription::offer(sdp) {
            Ok(o) => o,
            Err(e) => return self.reply_error(tag, format!("`sdp`: not a valid offer: {e}")),
        };
        if let Err(message) = check_publish_offer(&offer) {
            return self.reply_error(tag, message);
        }
        let conn = match self.publish_connection().await {
            Ok(conn) => conn,
            Err((kind, message)) => return self.report_error(tag, kind, message),
        };
        let pc = conn.pc.clone();
        if let Err(e) = pc.set_remote_description(offer).await {
            return self.reply_error(tag, format!("`sdp`: offer refused: {e}"));
        }
        flush_publish_candidates(conn).await;
        let answer = match pc.create_answer(None).await {
            Ok(a) => a,
            Err(e) => {
                return self.reply_error(tag, format!("`sdp`: cannot answer this offer: {e}"))
            }
        };
        if let Err(e) = pc.set_local_description(answer).await {
            return self.reply_error(tag, format!("`sdp`: cannot apply the answer: {e}"));
        }
        let transport = conn.transport.clone();
        match pc.local_description().await {
            Some(local) => {
                self.ctx
                    .metrics
                    .negotiation_seconds
                    .with_label_values(&["publish"])
                    .observe(started.elapsed().as_secs_f64());
                self.signal(MediaSignal::Answer {
                    role: Role::Publish,
                    sdp: transport.announce_sdp(&local.sdp),
                    tag,
                })
            }
            None => self.reply_error(tag, "no local description after answering".into()),
        }
    }

    async fn on_remote_track(&mut self, remote: Arc<dyn TrackRemote>) {
        let kind = remote.kind().await;
        let ssrc = remote.ssrcs().await.first().copied();
        let codec = match ssrc {
            Some(ssrc) => remote.codec(ssrc).await,
            None => None,
        };
        let Some(codec) = codec else {
            warn!("published track without a negotiated codec, ignored");
            return;
        };
        let track = PublishedTrack::start(
            self.member.clone(),
            remote,
            kind,
            codec,
            self.ctx.metrics.clone(),
            self.ended_tx.clone(),
        );
        info!(track = %track.id, kind = ?kind, codec = %track.codec.mime_type, "track published");
        self.published.insert(track.id, track.clone());
        self.room.publish(track);
    }

    fn unpublish(&mut self, id: TrackId) {
        if self.published.remove(&id).is_some() {
            info!(track = %id, "track ended");
            self.room.unpublish(id);
        }
    }

    async fn on_remote_candidate(
        &mut self,
        role: Role,
        candidate: RTCIceCandidateInit,
        tag: ReplyTag,
    ) {
        let known = match role {
            Role::Publish => self.publish.is_some(),
            Role::Subscribe => self.subscribe.is_some(),
        };
        if !known {
            return self.reply_error(
                tag,
                format!(
                    "`pc`: no {} connection to add a candidate to",
                    role.as_str()
                ),
            );
        }
        // Checked here too so that a candidate kept for later is refused as promptly as one
        // applied at once (a kept one is otherwise only dropped, with a log line, later).
        if let Err(e) = check_candidate(&candidate) {
            return self.reply_error(tag, e);
        }
        let Some((has_remote, pending)) = (match role {
            Role::Publish => self
                .publish
                .as_mut()
                .map(|c| (c.has_remote_description, &mut c.pending_candidates)),
            Role::Subscribe => self
                .subscribe
                .as_mut()
                .map(|c| (c.has_remote_description, &mut c.pending_candidates)),
        }) else {
            return;
        };
        if !has_remote {
            if pending.len() >= MAX_PENDING_CANDIDATES {
                return self.reply_error(tag, "`candidate`: too many candidates".into());
            }
            pending.push(candidate);
            return self.ack(tag);
        }
        let applied = match role {
            Role::Publish => match &self.publish {
                Some(conn) => conn.pc.add_ice_candidate(candidate).await,
                None => return,
            },
            Role::Subscribe => match &self.subscribe {
                Some(conn) => conn.pc.add_ice_candidate(candidate),
                None => return,
            },
        };
        match applied {
            Ok(()) => self.ack(tag),
            Err(e) => self.reply_error(tag, format!("`candidate`: {e}")),
        }
    }

    /// Brings the subscribe connection in line with `wanted` and offers, unless an offer is
    /// already outstanding (then the change rides on the next offer).
    async fn negotiate(&mut self) {
        self.offer_changes(false).await;
    }

    /// Offers afresh even if no track changed: the last offer was consumed without a usable
    /// answer.
    async fn reoffer(&mut self) {
        self.offer_changes(true).await;
    }

    async fn offer_changes(&mut self, even_unchanged: bool) {
        if self.offer_sent_at.is_some() {
            self.renegotiate = true;
            return;
        }
        self.renegotiate = false;
        let gone: Vec<TrackId> = self
            .forwarding
            .keys()
            .filter(|id| !self.wanted.contains_key(id))
            .copied()
            .collect();
        let new: Vec<Arc<PublishedTrack>> = self
            .wanted
            .values()
            .filter(|t| !self.forwarding.contains_key(&t.id))
            .cloned()
            .collect();
        let unchanged = gone.is_empty() && new.is_empty();
        if unchanged && !(even_unchanged && self.subscribe.is_some()) {
            return;
        }
        let member = self.member.clone();
        let conn = match self.subscribe_connection() {
            Ok(conn) => conn,
            Err((kind, message)) => {
                // Said once: the next change in the room tries again.
                if !self.subscribe_refused {
                    self.subscribe_refused = true;
                    self.report_error(None, kind, message);
                }
                return;
            }
        };
        let (pc, transport) = (conn.pc.clone(), conn.transport.clone());
        self.subscribe_refused = false;
        // New tracks first, so that none takes a transceiver freed in this same offer: the
        // subscriber sees a section stop, then (in a later offer) start again with a new
        // track, which browsers announce as a new track; a section switching tracks in one
        // offer would not be.
        for source in new {
            let lease = self.ssrcs.lease(source.kind, random_ssrc);
            let track = MediaStreamTrack::new(
                // The msid stream id is the publisher's member id: clients map tracks to tiles.
                source.publisher.to_string(),
                format!("{}-{}", kind_str(source.kind), source.id),
                format!("{}-{}", source.publisher, kind_str(source.kind)),
                source.kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(lease.ssrc),
                        ..Default::default()
                    },
                    codec: source.codec.clone(),
                    ..Default::default()
                }],
            );
            match pc.add_track(track, Arc::downgrade(&source)) {
                Ok(sender) => {
                    self.ssrcs.placed(sender);
                    self.forwarding.insert(
                        source.id,
                        DownTrack {
                            source,
                            sender,
                            ssrc: lease.ssrc,
                            state: DownState::Negotiating {
                                numbering: lease.numbering,
                            },
                        },
                    );
                }
                Err(e) => {
                    warn!(track = %source.id, error = %e, "add_track failed");
                    self.ssrcs.unplaced(source.kind, lease);
                }
            }
        }
        for id in gone {
            if let Some(down) = self.forwarding.remove(&id) {
                down.source.remove_subscriber(&member);
                if let Err(e) = pc.remove_track(down.sender) {
                    warn!(track = %id, error = %e, "remove_track failed");
                }
                let (kind, ssrc, transceiver) = (down.source.kind, down.ssrc, down.sender);
                self.ssrcs
                    .release(kind, ssrc, transceiver, down.state.finish());
            }
        }
        match pc.offer() {
            Ok(local) => {
                self.offer_sent_at = Some(Instant::now());
                self.signal(MediaSignal::Offer {
                    role: Role::Subscribe,
                    sdp: transport.announce_sdp(&local.sdp),
                });
            }
            Err(e) => self.cannot_offer(e),
        }
    }

    /// The subscribe connection cannot make an offer any more (tests/parser_fuzz.rs finds
    /// webrtc-rs in that state after refusing an answer half-way, keeping an `a=extmap:0`
    /// from it). Without renegotiation the member would silently stop getting new tracks, so
    /// its media fails like a lost connection (`left`, `media_failed`).
    fn cannot_offer(&mut self, error: webrtc::error::Error) {
        self.report_error(
            None,
            MediaErrorKind::BadRequest,
            format!(
                "the subscribe connection cannot be renegotiated after your last answer: {error}"
            ),
        );
        self.subscribe_unusable();
    }

    /// Ends this member's media (`left`, `media_failed`): its subscribe connection can no
    /// longer be negotiated, and a member without one would silently miss every new track.
    fn subscribe_unusable(&mut self) {
        warn!("the subscribe connection cannot be negotiated any more; failing the member's media");
        self.signal(MediaSignal::Failed {
            role: Role::Subscribe,
        });
    }

    /// Sends the outstanding subscribe offer again (the client may have lost it); changes
    /// since still ride on the next offer, after this one is answered.
    async fn resend_offer(&mut self) {
        let pending = match &self.subscribe {
            Some(conn) => conn.pc.pending_local_description(),
            None => None,
        };
        match (pending, &self.subscribe) {
            (Some(local), Some(conn)) => {
                self.offer_sent_at = Some(Instant::now());
                self.signal(MediaSignal::Offer {
                    role: Role::Subscribe,
                    sdp: conn.transport.announce_sdp(&local.sdp),
                });
            }
            _ => {
                self.offer_sent_at = None;
                self.reoffer().await;
            }
        }
    }

    async fn on_subscribe_answer(&mut self, sdp: String, tag: ReplyTag) {
        if self.offer_sent_at.is_none() {
            return self.reply_error(
                tag,
                "`sdp`: no subscribe offer is waiting for an answer".into(),
            );
        }
        let answer = match RTCSessionDescription::answer(sdp) {
            Ok(a) => a,
            Err(e) => return self.reply_error(tag, format!("`sdp`: not a valid answer: {e}")),
        };
        let Some(conn) = self.subscribe.as_mut() else {
            return;
        };
        let pc = conn.pc.clone();
        if let Err(e) = pc.set_remote_description(answer) {
            self.reply_error(tag, format!("`sdp`: answer refused: {e}"));
            // webrtc-rs can fail half-way through an answer and drop the offer all the same
            // (found by tests/parser_fuzz.rs: a section without `a=mid`). No later answer can
            // be applied then, and media does not flow after a fresh offer on that connection
            // either (tried in tests/media.rs), so it fails like a lost connection.
            if pc.pending_local_description().is_none() {
                self.offer_sent_at = None;
                self.subscribe_unusable();
            }
            return;
        }
        conn.has_remote_description = true;
        for candidate in std::mem::take(&mut conn.pending_candidates) {
            if let Err(e) = pc.add_ice_candidate(candidate) {
                warn!(error = %e, "buffered remote candidate refused");
            }
        }
        self.ssrcs.offer_answered();
        if let Some(sent) = self.offer_sent_at.take() {
            self.ctx
                .metrics
                .negotiation_seconds
                .with_label_values(&["subscribe"])
                .observe(sent.elapsed().as_secs_f64());
        }
        self.ack(tag);
        self.start_new_egresses().await;
        if self.renegotiate {
            self.negotiate().await;
        }
    }

    /// Starts forwarding every track whose negotiation just completed.
    async fn start_new_egresses(&mut self) {
        let negotiating =
            |(_, d): &(&TrackId, &mut DownTrack)| matches!(d.state, DownState::Negotiating { .. });
        let Some(pc) = self.subscribe.as_ref().map(|c| c.pc.clone()) else {
            return;
        };
        for (id, down) in self.forwarding.iter_mut().filter(negotiating) {
            let Some(codecs) = pc.send_codecs(down.sender) else {
                warn!(track = %id, "no send parameters");
                continue;
            };
            let negotiated = codecs
                .iter()
                .find(|c| same_codec(&c.rtp_codec, &down.source.codec));
            let Some(negotiated) = negotiated else {
                info!(
                    track = %id,
                    codec = %down.source.codec.mime_type,
                    "subscriber cannot decode this codec; track skipped for it"
                );
                // It stays in `forwarding` (negotiated as inactive) so it is not offered again
                // and again; it leaves with its publisher.
                down.state = DownState::Skipped {
                    numbering: down.state.take_numbering(),
                };
                continue;
            };
            let Some(sink) = pc.sink(down.sender) else {
                warn!(track = %id, "no sender for this track on the subscribe connection");
                continue;
            };
            let clock_rate = down.source.codec.clock_rate;
            let munger = match down.state.take_numbering() {
                Some(mut munger) => {
                    munger.continue_with(negotiated.payload_type, clock_rate);
                    munger
                }
                None => RtpMunger::new(down.ssrc, negotiated.payload_type, clock_rate),
            };
            let egress = Arc::new(Egress::new(
                sink,
                munger,
                self.subscriber_connected.clone(),
                self.ctx.metrics.clone(),
                down.source.is_video().then(|| self.first_video.clone()),
            ));
            down.source.add_subscriber(&self.member, egress.clone());
            down.state = DownState::Forwarding(egress);
            // Before the connection is up nothing can be sent; the Connected event asks then,
            // and an early request would only hold the next one back by the throttle.
            if self.subscriber_connected.load(Ordering::Relaxed) {
                down.source.request_keyframe(KeyframeReason::NewSubscriber);
            }
            self.ctx
                .metrics
                .track_subscribed_total
                .with_label_values(&[kind_str(down.source.kind)])
                .inc();
        }
    }

    async fn shut_down(&mut self) {
        self.room.leave(&self.member);
        for down in std::mem::take(&mut self.forwarding).into_values() {
            down.source.remove_subscriber(&self.member);
        }
        self.wanted.clear();
        self.published.clear();
        if let Some(conn) = self.publish.take() {
            if let Err(e) = conn.pc.close().await {
                warn!(error = %e, "closing peer connection");
            }
        }
        if let Some(conn) = self.subscribe.take() {
            conn.pc.close();
        }
        info!(
            live_peer_connections = self.ctx.metrics.peer_connections.get(),
            "media closed"
        );
    }
}

/// Refuses a publish offer the server could do nothing useful with, before it reaches the
/// connection (whose current negotiation therefore stays as it was): too many media sections,
/// or not one codec the server forwards. Sections with unknown codecs next to a usable one are
/// fine; the answer rejects just those.
pub fn check_publish_offer(offer: &RTCSessionDescription) -> Result<(), String> {
    let parsed = offer
        .unmarshal()
        .map_err(|e| format!("`sdp`: not a valid offer: {e}"))?;
    let sections = parsed.media_descriptions.len();
    if sections > MAX_PUBLISH_MEDIA_SECTIONS {
        return Err(format!(
            "`sdp`: {sections} media sections; a publish offer may have at most \
             {MAX_PUBLISH_MEDIA_SECTIONS}"
        ));
    }
    let supported = supported_codecs();
    let mut offered = Vec::new();
    for media in &parsed.media_descriptions {
        for codec in media.codecs().into_values() {
            let mime = format!("{}/{}", media.media_name.media, codec.name);
            if supported
                .iter()
                .any(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
            {
                return Ok(());
            }
            offered.push(mime.chars().take(40).collect::<String>());
        }
    }
    offered.sort();
    offered.dedup();
    offered.truncate(8);
    let forwarded: Vec<String> = supported
        .iter()
        .map(|(c, _)| c.rtp_codec.mime_type.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Err(format!(
        "`sdp`: no media section offers a codec this server forwards ({}); offered: {}",
        forwarded.join(", "),
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

/// Refuses a remote candidate whose text is not an ICE candidate (the empty end-of-candidates
/// marker is fine).
pub fn check_candidate(candidate: &RTCIceCandidateInit) -> Result<(), String> {
    let text = candidate.candidate.as_str();
    let text = text.strip_prefix("candidate:").unwrap_or(text);
    if text.is_empty() {
        return Ok(());
    }
    rtc::ice::candidate::unmarshal_candidate(text)
        .map(|_| ())
        .map_err(|e| format!("`candidate`: not an ICE candidate: {e}"))
}

async fn flush_publish_candidates(conn: &mut Connection<Arc<dyn PeerConnection>>) {
    conn.has_remote_description = true;
    for candidate in std::mem::take(&mut conn.pending_candidates) {
        if let Err(e) = conn.pc.add_ice_candidate(candidate).await {
            warn!(error = %e, "buffered remote candidate refused");
        }
    }
}

fn kind_str(kind: RtpCodecKind) -> &'static str {
    match kind {
        RtpCodecKind::Video => "video",
        _ => "audio",
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(sections: &str) -> RTCSessionDescription {
        let sdp = format!("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{sections}");
        RTCSessionDescription::offer(sdp).unwrap()
    }

    fn audio(mid: usize, rtpmap: &str) -> String {
        format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{mid}\r\na=rtpmap:111 {rtpmap}\r\n")
    }

    #[test]
    fn publish_offers_need_a_forwarded_codec_and_few_sections() {
        assert!(check_publish_offer(&offer(&audio(0, "opus/48000/2"))).is_ok());
        // A made-up codec next to a usable one is fine: the answer rejects just that section.
        let mixed = audio(0, "XYZ/8000") + &audio(1, "OPUS/48000/2");
        assert!(check_publish_offer(&offer(&mixed)).is_ok());

        let err = check_publish_offer(&offer(&audio(0, "XYZ/90000"))).unwrap_err();
        assert!(
            err.starts_with("`sdp`: no media section offers a codec"),
            "{err}"
        );
        assert!(err.ends_with("offered: audio/XYZ"), "{err}");
        let err = check_publish_offer(&offer("")).unwrap_err();
        assert!(err.ends_with("offered: none"), "{err}");

        let max: String = (0..MAX_PUBLISH_MEDIA_SECTIONS)
            .map(|mid| audio(mid, "opus/48000/2"))
            .collect();
        assert!(check_publish_offer(&offer(&max)).is_ok());
        let over = max + &audio(MAX_PUBLISH_MEDIA_SECTIONS, "opus/48000/2");
        let err = check_publish_offer(&offer(&over)).unwrap_err();
        assert!(err.contains("17 media sections"), "{err}");
    }

    #[test]
    fn candidates_must_parse_unless_empty() {
        let candidate = |text: &str| RTCIceCandidateInit {
            candidate: text.into(),
            ..Default::default()
        };
        assert!(check_candidate(&candidate("")).is_ok());
        assert!(check_candidate(&candidate(
            "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
        ))
        .is_ok());
        let err = check_candidate(&candidate("candidate:garbage")).unwrap_err();
        assert!(
            err.starts_with("`candidate`: not an ICE candidate"),
            "{err}"
        );
    }
}
