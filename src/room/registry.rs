//! The one owner of room state: which connections exist, who is in which room, names and mute
//! flags. Everything sits behind one `std::sync::Mutex` that is never held across `.await`;
//! every operation is a short synchronous step that also queues the resulting messages, so the
//! order in which members see events is the order in which they happened.
//!
//! Fan-out only `try_send`s into each recipient's bounded [`Outbox`]; a recipient whose queue is
//! full is disconnected (and counted), the others never wait.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::info;

use crate::ids::{MemberId, MemberName, RoomId};
use crate::metrics::Metrics;
use crate::protocol::{
    ChatSender, ErrorCode, IceServer, MediaKind, MemberInfo, ProtocolError, Ref, RoomCount,
    ServerMessage,
};
use crate::room::outbox::{CloseReason, Frame, Outbox};
use crate::sfu::room::SfuRoom;

/// How long lobby updates are held back so that a burst of joins yields one `rooms` message.
const LOBBY_COALESCE: Duration = Duration::from_millis(50);

struct Connection {
    name: MemberName,
    /// What the member's client says.
    audio_muted: bool,
    video_muted: bool,
    /// What an administrator imposed (the member is shown muted if either says so).
    server_audio_muted: bool,
    server_video_muted: bool,
    room: Option<RoomId>,
    outbox: Outbox,
}

impl Connection {
    fn info(&self, id: &MemberId) -> MemberInfo {
        MemberInfo {
            id: id.clone(),
            name: self.name.clone(),
            audio_muted: self.audio_muted || self.server_audio_muted,
            video_muted: self.video_muted || self.server_video_muted,
            server_audio_muted: self.server_audio_muted,
            server_video_muted: self.server_video_muted,
        }
    }
}

#[derive(Default)]
struct Room {
    /// In join order, so member lists are stable for everyone.
    members: Vec<MemberId>,
    /// The room's media side; members' media actors hold it too.
    media: Arc<SfuRoom>,
}

#[derive(Default)]
struct State {
    connections: HashMap<MemberId, Connection>,
    rooms: BTreeMap<RoomId, Room>,
}

/// The outcome of a successful `join`.
pub struct Joined {
    pub room: RoomId,
    pub media: Arc<SfuRoom>,
    /// False when the member was already in this room (nothing changed).
    pub moved: bool,
}

/// Settings the registry enforces.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub max_room_members: usize,
    /// Most rooms at once; a join that would open one more is refused.
    pub max_rooms: usize,
    /// Whether `joined` tells clients they may publish and subscribe media.
    pub media: bool,
}

/// Cloneable handle to the registry.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    config: RegistryConfig,
    metrics: Arc<Metrics>,
    /// Woken whenever a room's member count changed; the lobby task then broadcasts `rooms`.
    lobby_dirty: Notify,
}

impl Registry {
    pub fn new(config: RegistryConfig, metrics: Arc<Metrics>) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                config,
                metrics,
                lobby_dirty: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this module; the state it guards is
        // still consistent between statements, so keep serving rather than poisoning everyone.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new connection and sends it the current room list.
    pub fn connect(&self, id: &MemberId, outbox: Outbox) {
        let mut st = self.state();
        let rooms = rooms_message(&st);
        self.deliver(&outbox, rooms.to_json(None).into());
        st.connections.insert(
            id.clone(),
            Connection {
                name: MemberName::anonymous(),
                audio_muted: false,
                video_muted: false,
                server_audio_muted: false,
                server_video_muted: false,
                room: None,
                outbox,
            },
        );
    }

    /// Removes a connection, leaving its room at once.
    pub fn disconnect(&self, id: &MemberId) {
        let mut st = self.state();
        self.leave_room(&mut st, id);
        st.connections.remove(id);
    }

    pub fn set_name(&self, id: &MemberId, name: MemberName, reply: Option<&Ref>) {
        let mut st = self.state();
        let Some(conn) = st.connections.get_mut(id) else {
            return;
        };
        conn.name = name;
        let room = conn.room.clone();
        let outbox = conn.outbox.clone();
        self.deliver(&outbox, ServerMessage::Ack.to_json(reply).into());
        if let Some(room) = room {
            self.broadcast_member_updated(&st, &room, id);
        }
    }

    pub fn join(
        &self,
        id: &MemberId,
        room_id: RoomId,
        name: Option<MemberName>,
        ice_servers: Vec<IceServer>,
        reply: Option<&Ref>,
    ) -> Result<Joined, ProtocolError> {
        let mut st = self.state();
        let Some(conn) = st.connections.get_mut(id) else {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                "connection is closing",
            ));
        };
        let renamed = name.as_ref().is_some_and(|n| *n != conn.name);
        if let Some(name) = name {
            conn.name = name;
        }
        let already_here = conn.room.as_ref() == Some(&room_id);
        if !already_here
            && !st.rooms.contains_key(&room_id)
            && st.rooms.len() >= self.inner.config.max_rooms
        {
            return Err(ProtocolError::new(
                ErrorCode::NoCapacity,
                format!(
                    "this server holds its maximum of {} rooms; join an existing one",
                    self.inner.config.max_rooms
                ),
            ));
        }
        if !already_here {
            let count = st.rooms.get(&room_id).map_or(0, |r| r.members.len());
            if count >= self.inner.config.max_room_members {
                self.inner
                    .metrics
                    .participant_join_total
                    .with_label_values(&["room_full"])
                    .inc();
                return Err(ProtocolError::new(
                    ErrorCode::RoomFull,
                    format!(
                        "room {:?} is full ({} members)",
                        room_id.as_str(),
                        self.inner.config.max_room_members
                    ),
                ));
            }
            self.leave_room(&mut st, id);
            let room = st.rooms.entry(room_id.clone()).or_default();
            room.members.push(id.clone());
            if room.members.len() == 1 {
                self.inner.metrics.rooms.inc();
            }
            self.inner.metrics.room_members.inc();
            self.inner
                .metrics
                .participant_join_total
                .with_label_values(&["joined"])
                .inc();
            if let Some(conn) = st.connections.get_mut(id) {
                conn.room = Some(room_id.clone());
            }
            info!(room = %room_id, member = %id, "member joined");
            self.inner.lobby_dirty.notify_one();
        }

        let Some(conn) = st.connections.get(id) else {
            return Err(ProtocolError::new(
                ErrorCode::Unavailable,
                "connection is closing",
            ));
        };
        let me = conn.info(id);
        let others: Vec<MemberInfo> = st
            .rooms
            .get(&room_id)
            .into_iter()
            .flat_map(|r| r.members.iter())
            .filter(|m| *m != id)
            .filter_map(|m| st.connections.get(m).map(|c| c.info(m)))
            .collect();
        let joined = ServerMessage::Joined {
            room: room_id.clone(),
            me: me.clone(),
            members: others,
            ice_servers,
            media: self.inner.config.media,
        };
        self.deliver(&conn.outbox, joined.to_json(reply).into());
        if already_here {
            // A repeated join changes nothing for the others, unless it renamed the member.
            if renamed {
                self.broadcast_member_updated(&st, &room_id, id);
            }
        } else {
            let frame: Frame = ServerMessage::MemberJoined { member: me }
                .to_json(None)
                .into();
            self.broadcast(&st, &room_id, Some(id), &frame);
        }
        let media = st
            .rooms
            .get(&room_id)
            .map(|r| r.media.clone())
            .unwrap_or_default();
        Ok(Joined {
            room: room_id,
            media,
            moved: !already_here,
        })
    }

    pub fn leave(&self, id: &MemberId, reply: Option<&Ref>) -> Result<(), ProtocolError> {
        let mut st = self.state();
        let in_room = st.connections.get(id).is_some_and(|c| c.room.is_some());
        if !in_room {
            return Err(not_in_room());
        }
        self.leave_room(&mut st, id);
        if let Some(conn) = st.connections.get(id) {
            self.deliver(&conn.outbox, ServerMessage::Ack.to_json(reply).into());
        }
        Ok(())
    }

    /// Takes a member out of its room on the server's initiative and tells it why.
    /// (A server mute ends with the room membership too: see `leave_room`.)
    pub fn remove_from_room(&self, id: &MemberId, reason: &'static str) {
        let mut st = self.state();
        let Some(room) = st.connections.get(id).and_then(|c| c.room.clone()) else {
            return;
        };
        self.leave_room(&mut st, id);
        if let Some(conn) = st.connections.get(id) {
            let left = ServerMessage::Left { room, reason };
            self.deliver(&conn.outbox, left.to_json(None).into());
        }
    }

    pub fn chat(
        &self,
        id: &MemberId,
        text: String,
        reply: Option<&Ref>,
    ) -> Result<(), ProtocolError> {
        let st = self.state();
        let Some(conn) = st.connections.get(id) else {
            return Ok(());
        };
        let Some(room) = conn.room.clone() else {
            return Err(not_in_room());
        };
        let msg = ServerMessage::Chat {
            from: ChatSender {
                id: id.clone(),
                name: conn.name.clone(),
            },
            text,
            ts: unix_millis(),
        };
        let frame: Frame = msg.to_json(None).into();
        self.broadcast(&st, &room, Some(id), &frame);
        // The sender's copy is its direct answer, so it carries the `ref`.
        let own: Frame = match reply {
            Some(r) => msg.to_json(Some(r)).into(),
            None => frame,
        };
        self.deliver(&conn.outbox, own);
        self.inner.metrics.chat_messages_total.inc();
        Ok(())
    }

    /// Records a mute flag; inside a room the others (and the member) get `member_updated`.
    pub fn mute(&self, id: &MemberId, kind: MediaKind, muted: bool, reply: Option<&Ref>) {
        let mut st = self.state();
        let Some(conn) = st.connections.get_mut(id) else {
            return;
        };
        match kind {
            MediaKind::Audio => conn.audio_muted = muted,
            MediaKind::Video => conn.video_muted = muted,
        }
        let room = conn.room.clone();
        let outbox = conn.outbox.clone();
        self.deliver(&outbox, ServerMessage::Ack.to_json(reply).into());
        if let Some(room) = room {
            self.broadcast_member_updated(&st, &room, id);
        }
    }

    pub fn list_rooms(&self, id: &MemberId, reply: Option<&Ref>) {
        let st = self.state();
        if let Some(conn) = st.connections.get(id) {
            self.deliver(&conn.outbox, rooms_message(&st).to_json(reply).into());
        }
    }

    /// Sends the current room list to every connection, coalescing bursts of changes.
    /// Runs until the registry's last handle is dropped... or forever; spawn and abort it.
    pub async fn run_lobby_broadcaster(self) {
        loop {
            self.inner.lobby_dirty.notified().await;
            tokio::time::sleep(LOBBY_COALESCE).await;
            let st = self.state();
            let frame: Frame = rooms_message(&st).to_json(None).into();
            for conn in st.connections.values() {
                self.deliver(&conn.outbox, frame.clone());
            }
        }
    }

    /// Room names with member counts, sorted by name.
    pub fn room_counts(&self) -> Vec<RoomCount> {
        room_counts(&self.state())
    }

    pub fn connection_count(&self) -> usize {
        self.state().connections.len()
    }

    /// Every room with its member count and its media, for the admin API.
    pub fn admin_rooms(&self) -> Vec<(RoomId, usize, Arc<SfuRoom>)> {
        let st = self.state();
        st.rooms
            .iter()
            .map(|(id, room)| (id.clone(), room.members.len(), room.media.clone()))
            .collect()
    }

    /// One room's members (in join order) and its media, for the admin API.
    pub fn admin_room(&self, room: &str) -> Option<(Vec<MemberInfo>, Arc<SfuRoom>)> {
        let st = self.state();
        let r = st.rooms.iter().find(|(id, _)| id.as_str() == room)?.1;
        let members = r
            .members
            .iter()
            .filter_map(|m| st.connections.get(m).map(|c| c.info(m)))
            .collect();
        Some((members, r.media.clone()))
    }

    /// The id of `member` if it is in `room`.
    fn member_in(st: &State, room: &str, member: &str) -> Option<(RoomId, MemberId)> {
        let (room_id, r) = st.rooms.iter().find(|(id, _)| id.as_str() == room)?;
        let id = r.members.iter().find(|m| m.as_str() == member)?;
        Some((room_id.clone(), id.clone()))
    }

    /// Removes a member on an administrator's request: it gets an `error` (`kicked`) and its
    /// connection closes; the others get `member_left` at once. False if it is not in `room`.
    pub fn kick(&self, room: &str, member: &str) -> bool {
        let mut st = self.state();
        let Some((room_id, id)) = Self::member_in(&st, room, member) else {
            return false;
        };
        let media = st.rooms.get(&room_id).map(|r| r.media.clone());
        self.leave_room(&mut st, &id);
        if let Some(conn) = st.connections.get(&id) {
            let error = ServerMessage::error(ErrorCode::Kicked, "removed by an administrator");
            self.deliver(&conn.outbox, error.to_json(None).into());
            conn.outbox.close(CloseReason::Kicked);
        }
        drop(st);
        if let Some(media) = media {
            media.remove_member(&id);
        }
        info!(room, member = %id, "member kicked");
        true
    }

    /// Closes a room on an administrator's request: every member is taken out (`left`,
    /// reason `room_closed`) and stays connected in the lobby. False if there is no such room.
    pub fn close_room(&self, room: &str) -> bool {
        let mut st = self.state();
        let Some((room_id, members, media)) = st
            .rooms
            .iter()
            .find(|(id, _)| id.as_str() == room)
            .map(|(id, r)| (id.clone(), r.members.clone(), r.media.clone()))
        else {
            return false;
        };
        for id in &members {
            self.leave_room(&mut st, id);
            if let Some(conn) = st.connections.get(id) {
                let left = ServerMessage::Left {
                    room: room_id.clone(),
                    reason: "room_closed",
                };
                self.deliver(&conn.outbox, left.to_json(None).into());
            }
        }
        drop(st);
        for id in &members {
            media.remove_member(id);
        }
        info!(room, members = members.len(), "room closed");
        true
    }

    /// Server-side mute: the member's tracks of `kind` stop being forwarded and the room sees
    /// the mute flag. False if the member is not in `room`.
    pub fn server_mute(&self, room: &str, member: &str, kind: MediaKind, muted: bool) -> bool {
        let mut st = self.state();
        let Some((room_id, id)) = Self::member_in(&st, room, member) else {
            return false;
        };
        if let Some(conn) = st.connections.get_mut(&id) {
            match kind {
                MediaKind::Audio => conn.server_audio_muted = muted,
                MediaKind::Video => conn.server_video_muted = muted,
            }
        }
        self.broadcast_member_updated(&st, &room_id, &id);
        let media = st.rooms.get(&room_id).map(|r| r.media.clone());
        drop(st);
        if let Some(media) = media {
            let kind = match kind {
                MediaKind::Audio => rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Audio,
                MediaKind::Video => rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video,
            };
            media.server_mute(&id, kind, muted);
        }
        info!(room, member = %id, ?kind, muted, "server mute");
        true
    }

    fn leave_room(&self, st: &mut State, id: &MemberId) {
        let Some(conn) = st.connections.get_mut(id) else {
            return;
        };
        let Some(room_id) = conn.room.take() else {
            return;
        };
        // A server mute belongs to the stay in that room.
        conn.server_audio_muted = false;
        conn.server_video_muted = false;
        let now_empty = match st.rooms.get_mut(&room_id) {
            Some(room) => {
                room.members.retain(|m| m != id);
                room.members.is_empty()
            }
            None => false,
        };
        self.inner.metrics.room_members.dec();
        if now_empty {
            st.rooms.remove(&room_id);
            self.inner.metrics.rooms.dec();
        } else {
            let frame: Frame = ServerMessage::MemberLeft { id: id.clone() }
                .to_json(None)
                .into();
            self.broadcast(st, &room_id, None, &frame);
        }
        info!(room = %room_id, member = %id, "member left");
        self.inner.lobby_dirty.notify_one();
    }

    fn broadcast_member_updated(&self, st: &State, room: &RoomId, id: &MemberId) {
        if let Some(conn) = st.connections.get(id) {
            let frame: Frame = ServerMessage::MemberUpdated {
                member: conn.info(id),
            }
            .to_json(None)
            .into();
            self.broadcast(st, room, None, &frame);
        }
    }

    /// Sends one frame to every member of `room` except `skip`.
    fn broadcast(&self, st: &State, room: &RoomId, skip: Option<&MemberId>, frame: &Frame) {
        let Some(room) = st.rooms.get(room) else {
            return;
        };
        for member in &room.members {
            if Some(member) == skip {
                continue;
            }
            if let Some(conn) = st.connections.get(member) {
                self.deliver(&conn.outbox, frame.clone());
            }
        }
    }

    fn deliver(&self, outbox: &Outbox, frame: Frame) {
        // An overflowing queue kills the connection; its session counts the disconnect once,
        // with the reason, when it ends.
        let _ = outbox.send(frame);
    }
}

fn not_in_room() -> ProtocolError {
    ProtocolError::new(ErrorCode::NotInRoom, "join a room first")
}

fn room_counts(st: &State) -> Vec<RoomCount> {
    st.rooms
        .iter()
        .filter(|(_, r)| !r.members.is_empty())
        .map(|(id, r)| RoomCount {
            room: id.clone(),
            count: r.members.len(),
        })
        .collect()
}

fn rooms_message(st: &State) -> ServerMessage {
    ServerMessage::Rooms {
        rooms: room_counts(st),
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::outbox::{Outbound, OutboxReceiver};

    fn registry(max: usize) -> Registry {
        Registry::new(
            RegistryConfig {
                max_room_members: max,
                max_rooms: 3,
                media: false,
            },
            Arc::new(Metrics::new()),
        )
    }

    fn member(reg: &Registry) -> (MemberId, OutboxReceiver) {
        let id = MemberId::next();
        let (outbox, rx) = Outbox::new(64);
        reg.connect(&id, outbox);
        (id, rx)
    }

    fn drain(rx: &mut OutboxReceiver) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(item) = rx.rx.try_recv() {
            if let Outbound::Text(t) = item {
                out.push(serde_json::from_str(t.as_str()).unwrap());
            }
        }
        out
    }

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    #[test]
    fn join_leave_and_counts() {
        let reg = registry(10);
        let (a, mut arx) = member(&reg);
        let (b, mut brx) = member(&reg);
        reg.join(&a, room("x"), None, vec![], None).unwrap();
        reg.join(&b, room("x"), None, vec![], None).unwrap();
        assert_eq!(reg.room_counts()[0].count, 2);
        let a_msgs = drain(&mut arx);
        assert!(a_msgs
            .iter()
            .any(|m| m["type"] == "member_joined" && m["member"]["id"] == b.as_str()));
        let b_msgs = drain(&mut brx);
        let joined = b_msgs.iter().find(|m| m["type"] == "joined").unwrap();
        assert_eq!(joined["members"][0]["id"], a.as_str());
        assert_eq!(joined["self"]["name"], "Anonymous");

        reg.disconnect(&b);
        assert!(drain(&mut arx)
            .iter()
            .any(|m| m["type"] == "member_left" && m["id"] == b.as_str()));
        reg.leave(&a, None).unwrap();
        assert!(reg.room_counts().is_empty());
        assert_eq!(reg.leave(&a, None).unwrap_err().code, ErrorCode::NotInRoom);
    }

    #[test]
    fn full_room_refuses_and_keeps_the_old_room() {
        let reg = registry(1);
        let (a, _arx) = member(&reg);
        let (b, _brx) = member(&reg);
        reg.join(&a, room("x"), None, vec![], None).unwrap();
        reg.join(&b, room("y"), None, vec![], None).unwrap();
        let Err(err) = reg.join(&b, room("x"), None, vec![], None) else {
            panic!("joined a full room");
        };
        assert_eq!(err.code, ErrorCode::RoomFull);
        let counts = reg.room_counts();
        assert_eq!(counts.len(), 2, "b is still in y");
    }

    #[test]
    fn no_room_beyond_the_limit_but_existing_ones_stay_open() {
        let reg = registry(10); // max_rooms = 3
        let members: Vec<_> = (0..5).map(|_| member(&reg)).collect();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            reg.join(&members[i].0, room(name), None, vec![], None)
                .unwrap();
        }
        let Err(err) = reg.join(&members[3].0, room("d"), None, vec![], None) else {
            panic!("a fourth room opened");
        };
        assert_eq!(err.code, ErrorCode::NoCapacity);
        assert!(
            err.message.contains("maximum of 3 rooms"),
            "{}",
            err.message
        );
        reg.join(&members[3].0, room("a"), None, vec![], None)
            .unwrap();
        // A room that empties frees its slot.
        reg.leave(&members[1].0, None).unwrap();
        reg.join(&members[4].0, room("d"), None, vec![], None)
            .unwrap();
    }

    #[test]
    fn chat_outside_a_room_is_refused() {
        let reg = registry(3);
        let (a, _arx) = member(&reg);
        let err = reg.chat(&a, "hi".into(), None).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotInRoom);
    }
}
