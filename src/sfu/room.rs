//! The media side of one room: which members take part and which tracks are published. It only
//! routes membership changes (a short lock, never held across `.await`); the per-packet path
//! never touches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::mpsc;

use crate::ids::MemberId;
use crate::sfu::member::MediaCommand;
use crate::sfu::track::{KeyframeReason, PublishedTrack, TrackId};
use crate::sfu::track_stats::TrackStatsSnapshot;
use crate::sfu::wire_stats::ConnectionStats;

#[derive(Default)]
pub struct SfuRoom {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    members: HashMap<MemberId, Member>,
    tracks: Vec<Arc<PublishedTrack>>,
    /// Kinds an administrator muted, per member: not forwarded, whatever the member publishes.
    /// Kept apart from `members` so a mute given before the member's media started holds.
    server_muted: HashMap<MemberId, ServerMuted>,
}

struct Member {
    commands: mpsc::UnboundedSender<MediaCommand>,
    stats: Arc<ConnectionStats>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ServerMuted {
    audio: bool,
    video: bool,
}

impl ServerMuted {
    fn get(&self, kind: RtpCodecKind) -> bool {
        match kind {
            RtpCodecKind::Audio => self.audio,
            _ => self.video,
        }
    }
}

/// One member's media as the admin API shows it.
#[derive(Debug, Clone)]
pub struct MemberMediaInfo {
    pub rtt: Option<Duration>,
    pub tracks: Vec<TrackInfo>,
}

#[derive(Debug, Clone)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: RtpCodecKind,
    pub codec: String,
    pub stats: TrackStatsSnapshot,
    pub server_muted: bool,
    pub subscribers: usize,
}

impl SfuRoom {
    pub fn new() -> Arc<SfuRoom> {
        Arc::new(SfuRoom::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a member; it is then told about every track published by the others.
    pub fn join(
        &self,
        id: &MemberId,
        commands: mpsc::UnboundedSender<MediaCommand>,
        stats: Arc<ConnectionStats>,
    ) {
        let mut st = self.state();
        let existing: Vec<_> = st
            .tracks
            .iter()
            .filter(|t| &t.publisher != id)
            .cloned()
            .collect();
        if !existing.is_empty() {
            let _ = commands.send(MediaCommand::TracksOnJoin(existing));
        }
        st.members.insert(id.clone(), Member { commands, stats });
    }

    /// Removes a member and unpublishes its tracks from everyone else.
    pub fn leave(&self, id: &MemberId) {
        let mut st = self.state();
        st.members.remove(id);
        st.server_muted.remove(id);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.tracks)
            .into_iter()
            .partition(|t| &t.publisher == id);
        st.tracks = kept;
        for track in gone {
            notify_removed(&st, &track);
        }
    }

    /// Removes a member on the server's initiative (kick, room closed): like `leave`, and its
    /// media actor is told to close its connections.
    pub fn remove_member(&self, id: &MemberId) {
        let commands = self.state().members.get(id).map(|m| m.commands.clone());
        self.leave(id);
        if let Some(commands) = commands {
            let _ = commands.send(MediaCommand::Close);
        }
    }

    pub fn publish(&self, track: Arc<PublishedTrack>) {
        let mut st = self.state();
        if !st.members.contains_key(&track.publisher) {
            return; // the publisher left while its track was starting
        }
        let muted = st
            .server_muted
            .get(&track.publisher)
            .is_some_and(|m| m.get(track.kind));
        track.set_server_muted(muted);
        for (member, entry) in &st.members {
            if member != &track.publisher {
                let _ = entry.commands.send(MediaCommand::TrackAdded(track.clone()));
            }
        }
        st.tracks.push(track);
    }

    /// Stops (or resumes) forwarding `member`'s tracks of `kind`, now and for tracks it
    /// publishes later (also if its media has not started yet).
    pub fn server_mute(&self, member: &MemberId, kind: RtpCodecKind, muted: bool) {
        let mut st = self.state();
        let entry = st.server_muted.entry(member.clone()).or_default();
        match kind {
            RtpCodecKind::Audio => entry.audio = muted,
            _ => entry.video = muted,
        }
        for track in st
            .tracks
            .iter()
            .filter(|t| &t.publisher == member && t.kind == kind)
        {
            track.set_server_muted(muted);
            if !muted {
                // Subscribers dropped everything while muted: resume on a keyframe.
                track.request_keyframe(KeyframeReason::NewSubscriber);
            }
        }
    }

    /// Media details of every member, for the admin API.
    pub fn member_media(&self) -> HashMap<MemberId, MemberMediaInfo> {
        let st = self.state();
        let now = Instant::now();
        st.members
            .iter()
            .map(|(id, entry)| {
                let tracks = st
                    .tracks
                    .iter()
                    .filter(|t| &t.publisher == id)
                    .map(|t| TrackInfo {
                        id: t.id,
                        kind: t.kind,
                        codec: t.codec.mime_type.clone(),
                        stats: t.stats.snapshot(now),
                        server_muted: t.is_server_muted(),
                        subscribers: t.subscriber_count(),
                    })
                    .collect();
                (
                    id.clone(),
                    MemberMediaInfo {
                        rtt: entry.stats.rtt(),
                        tracks,
                    },
                )
            })
            .collect()
    }

    pub fn unpublish(&self, id: TrackId) {
        let mut st = self.state();
        if let Some(pos) = st.tracks.iter().position(|t| t.id == id) {
            let track = st.tracks.remove(pos);
            notify_removed(&st, &track);
        }
    }

    pub fn track_count(&self) -> usize {
        self.state().tracks.len()
    }
}

fn notify_removed(st: &State, track: &PublishedTrack) {
    for (member, entry) in &st.members {
        if member != &track.publisher {
            let _ = entry.commands.send(MediaCommand::TrackRemoved(track.id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::codecs::supported_codecs;

    fn track(publisher: &MemberId, kind: RtpCodecKind) -> Arc<PublishedTrack> {
        let codec = supported_codecs()
            .into_iter()
            .map(|(p, _)| p.rtp_codec)
            .find(|c| (c.mime_type.starts_with("video/")) == (kind == RtpCodecKind::Video))
            .expect("a codec of that kind");
        Arc::new(PublishedTrack::detached(publisher.clone(), kind, codec))
    }

    fn commands(rx: &mut mpsc::UnboundedReceiver<MediaCommand>) -> Vec<MediaCommand> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_joiner_gets_every_other_members_track_in_one_command() {
        let room = SfuRoom::new();
        let (publisher, joiner) = (MemberId::next(), MemberId::next());
        let (tx, mut publisher_rx) = mpsc::unbounded_channel();
        room.join(&publisher, tx, Arc::default());
        // Nothing in the room yet: nothing to offer.
        assert!(commands(&mut publisher_rx).is_empty());
        let audio = track(&publisher, RtpCodecKind::Audio);
        let video = track(&publisher, RtpCodecKind::Video);
        room.publish(audio.clone());
        room.publish(video.clone());

        let (tx, mut joiner_rx) = mpsc::unbounded_channel();
        room.join(&joiner, tx, Arc::default());
        let got = commands(&mut joiner_rx);
        assert_eq!(got.len(), 1, "one command for the whole room");
        let MediaCommand::TracksOnJoin(tracks) = &got[0] else {
            panic!("expected the room's tracks first");
        };
        let ids: Vec<TrackId> = tracks.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![audio.id, video.id]);

        // Tracks published later come one by one, and never to their own publisher.
        let later = track(&joiner, RtpCodecKind::Video);
        room.publish(later.clone());
        assert!(commands(&mut joiner_rx).is_empty());
        assert!(matches!(
            commands(&mut publisher_rx).as_slice(),
            [MediaCommand::TrackAdded(t)] if t.id == later.id
        ));
    }
}
