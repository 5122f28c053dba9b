//! The media side of one room: which members take part and which tracks are published. It only
//! routes membership changes (a short lock, never held across `.await`); the per-packet path
//! never touches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::ids::MemberId;
use crate::sfu::member::MediaCommand;
use crate::sfu::track::{PublishedTrack, TrackId};

#[derive(Default)]
pub struct SfuRoom {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    members: HashMap<MemberId, mpsc::UnboundedSender<MediaCommand>>,
    tracks: Vec<Arc<PublishedTrack>>,
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
    pub fn join(&self, id: &MemberId, commands: mpsc::UnboundedSender<MediaCommand>) {
        let mut st = self.state();
        for track in st.tracks.iter().filter(|t| &t.publisher != id) {
            let _ = commands.send(MediaCommand::TrackAdded(track.clone()));
        }
        st.members.insert(id.clone(), commands);
    }

    /// Removes a member and unpublishes its tracks from everyone else.
    pub fn leave(&self, id: &MemberId) {
        let mut st = self.state();
        st.members.remove(id);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.tracks)
            .into_iter()
            .partition(|t| &t.publisher == id);
        st.tracks = kept;
        for track in gone {
            notify_removed(&st, &track);
        }
    }

    pub fn publish(&self, track: Arc<PublishedTrack>) {
        let mut st = self.state();
        if !st.members.contains_key(&track.publisher) {
            return; // the publisher left while its track was starting
        }
        for (member, commands) in &st.members {
            if member != &track.publisher {
                let _ = commands.send(MediaCommand::TrackAdded(track.clone()));
            }
        }
        st.tracks.push(track);
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
    for (member, commands) in &st.members {
        if member != &track.publisher {
            let _ = commands.send(MediaCommand::TrackRemoved(track.id));
        }
    }
}
