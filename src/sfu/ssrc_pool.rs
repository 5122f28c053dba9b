//! The SSRCs one subscribe connection sends with, reused as tracks come and go.
//!
//! Why reuse: webrtc-rs keeps per-SSRC state (an outbound stats accumulator, SRTP and SRTCP
//! contexts with replay windows) for every SSRC a connection has ever sent, until the
//! connection closes. A member staying in a room where others come and go would otherwise grow
//! by every track it was ever sent. With reuse, a connection's SSRCs are bounded by the most
//! tracks it carried at once (about twice that, see below).
//!
//! Three rules keep reuse invisible to the subscriber:
//! - A reused SSRC continues the numbering the last egress on it ended with: the subscriber's
//!   SRTP replay window for that SSRC may still exist.
//! - An SSRC is reused only after the subscriber accepted an offer without it, so its old
//!   receive stream is gone before the SSRC means a new track.
//! - A transceiver never gets back the SSRC it last carried. Chromium (156, tested here) then
//!   keeps its receiver wired to the torn-down stream: it decodes the new track but never
//!   renders it. An SSRC moving to another transceiver, or a transceiver getting another SSRC,
//!   is fine. webrtc-rs puts a new track on a free transceiver of its kind (or a new one), so
//!   no SSRC that is the last of a free transceiver is handed out.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

use crate::sfu::forwarder::RtpMunger;

/// An SSRC handed to a new down track.
#[derive(Debug)]
pub struct SsrcLease {
    pub ssrc: u32,
    /// `Some` when the SSRC was sent on before: the numbering its last egress reached, to be
    /// continued.
    pub numbering: Option<RtpMunger>,
}

#[derive(Debug)]
struct Released {
    kind: RtpCodecKind,
    ssrc: u32,
    numbering: Option<RtpMunger>,
}

/// `T` identifies a transceiver (webrtc-rs' sender id, which stays with the transceiver).
#[derive(Debug)]
pub struct SsrcPool<T> {
    /// Every SSRC this connection was given, so a fresh one never collides.
    issued: HashSet<u32>,
    /// Released, and the subscriber has accepted an offer without them.
    free: Vec<Released>,
    /// Released since the last offer the subscriber answered.
    retiring: Vec<Released>,
    /// Transceivers without a track, with the SSRC each carried last.
    idle_transceivers: HashMap<T, u32>,
}

impl<T> Default for SsrcPool<T> {
    fn default() -> Self {
        SsrcPool {
            issued: HashSet::new(),
            free: Vec::new(),
            retiring: Vec::new(),
            idle_transceivers: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> SsrcPool<T> {
    /// An SSRC for a new track of `kind`: a free one of that kind which no idle transceiver
    /// carried last, else a fresh one.
    pub fn lease(&mut self, kind: RtpCodecKind, mut random: impl FnMut() -> u32) -> SsrcLease {
        let usable =
            |r: &Released| r.kind == kind && !self.idle_transceivers.values().any(|&s| s == r.ssrc);
        if let Some(i) = self.free.iter().position(usable) {
            let r = self.free.swap_remove(i);
            return SsrcLease {
                ssrc: r.ssrc,
                numbering: r.numbering,
            };
        }
        loop {
            let ssrc = random();
            if ssrc != 0 && self.issued.insert(ssrc) {
                return SsrcLease {
                    ssrc,
                    numbering: None,
                };
            }
        }
    }

    /// The leased SSRC went to `transceiver` (no longer idle).
    pub fn placed(&mut self, transceiver: T) {
        self.idle_transceivers.remove(&transceiver);
    }

    /// A lease that was not placed on any transceiver.
    pub fn unplaced(&mut self, kind: RtpCodecKind, lease: SsrcLease) {
        self.retiring.push(Released {
            kind,
            ssrc: lease.ssrc,
            numbering: lease.numbering,
        });
    }

    /// The track sent on `ssrc` was removed from `transceiver` (in the offer being made).
    pub fn release(
        &mut self,
        kind: RtpCodecKind,
        ssrc: u32,
        transceiver: T,
        numbering: Option<RtpMunger>,
    ) {
        self.idle_transceivers.insert(transceiver, ssrc);
        self.retiring.push(Released {
            kind,
            ssrc,
            numbering,
        });
    }

    /// The subscriber applied an offer made after every `release` so far.
    pub fn offer_answered(&mut self) {
        self.free.append(&mut self.retiring);
    }

    /// How many distinct SSRCs this connection has used.
    pub fn issued(&self) -> usize {
        self.issued.len()
    }
}

/// A non-zero SSRC, unpredictable enough to not collide within one connection.
pub fn random_ssrc() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: RtpCodecKind = RtpCodecKind::Video;
    const AUDIO: RtpCodecKind = RtpCodecKind::Audio;

    fn counter() -> impl FnMut() -> u32 {
        let mut next = 0;
        move || {
            next += 1;
            next
        }
    }

    /// webrtc-rs' choice: the first idle transceiver of the kind, else a new one.
    struct Transceivers(Vec<(RtpCodecKind, bool)>);

    impl Transceivers {
        fn add(&mut self, kind: RtpCodecKind) -> usize {
            if let Some(i) = self.0.iter().position(|&(k, busy)| k == kind && !busy) {
                self.0[i].1 = true;
                return i;
            }
            self.0.push((kind, true));
            self.0.len() - 1
        }
    }

    #[test]
    fn fresh_ssrcs_are_distinct_and_never_zero() {
        let mut pool = SsrcPool::<usize>::default();
        // A generator that repeats itself and yields 0 still gives distinct non-zero SSRCs.
        let mut values = [0, 7, 7, 0, 7, 9].into_iter();
        let mut random = move || values.next().expect("enough values");
        assert_eq!(pool.lease(VIDEO, &mut random).ssrc, 7);
        assert_eq!(pool.lease(VIDEO, &mut random).ssrc, 9);
        assert_eq!(pool.issued(), 2);
    }

    #[test]
    fn a_released_ssrc_is_reused_only_after_the_next_answer_for_its_kind_elsewhere() {
        let mut pool = SsrcPool::default();
        let mut random = counter();
        let video = pool.lease(VIDEO, &mut random);
        pool.placed(0);
        let audio = pool.lease(AUDIO, &mut random);
        pool.placed(1);
        let other_video = pool.lease(VIDEO, &mut random);
        pool.placed(2);
        pool.release(VIDEO, video.ssrc, 0, None);
        pool.release(AUDIO, audio.ssrc, 1, None);
        // The offer removing them is not answered yet: the subscriber may still use them.
        let early = pool.lease(AUDIO, &mut random);
        assert!(![video.ssrc, audio.ssrc].contains(&early.ssrc));
        pool.unplaced(AUDIO, early);
        pool.offer_answered();
        // Transceivers 0 and 1 are idle and carried these last: no reuse may land there.
        assert!(![video.ssrc, audio.ssrc].contains(&pool.lease(VIDEO, &mut random).ssrc));
        // Once transceiver 2's track goes too, video.ssrc can go to transceiver 2.
        pool.release(VIDEO, other_video.ssrc, 2, None);
        pool.placed(0);
        pool.offer_answered();
        assert_eq!(pool.lease(VIDEO, &mut random).ssrc, video.ssrc);
    }

    #[test]
    fn churn_on_one_transceiver_alternates_between_two_ssrcs() {
        let mut pool = SsrcPool::default();
        let mut random = counter();
        let mut transceivers = Transceivers(Vec::new());
        let mut seen = Vec::new();
        for _ in 0..10 {
            let lease = pool.lease(VIDEO, &mut random);
            let t = transceivers.add(VIDEO);
            pool.placed(t);
            seen.push((t, lease.ssrc));
            pool.release(VIDEO, lease.ssrc, t, None);
            transceivers.0[t].1 = false;
            pool.offer_answered();
        }
        assert!(seen.iter().all(|&(t, _)| t == 0));
        for pair in seen.windows(2) {
            assert_ne!(
                pair[0].1, pair[1].1,
                "the same SSRC twice in a row on one transceiver"
            );
        }
        assert_eq!(pool.issued(), 2, "{seen:?}");
    }

    #[test]
    fn many_tracks_coming_and_going_stay_within_twice_the_peak() {
        let mut pool = SsrcPool::default();
        let mut random = counter();
        let mut transceivers = Transceivers(Vec::new());
        let mut live: Vec<(usize, u32)> = Vec::new();
        let mut last_on: HashMap<usize, u32> = HashMap::new();
        // Deterministic pseudo-random churn with up to 6 tracks at once.
        let mut x = 12345u32;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if live.len() < 6 && (live.is_empty() || x.is_multiple_of(2)) {
                let lease = pool.lease(VIDEO, &mut random);
                let t = transceivers.add(VIDEO);
                pool.placed(t);
                assert_ne!(
                    last_on.get(&t),
                    Some(&lease.ssrc),
                    "transceiver {t} got its last SSRC back"
                );
                live.push((t, lease.ssrc));
            } else {
                let (t, ssrc) = live.swap_remove(x as usize % live.len());
                pool.release(VIDEO, ssrc, t, None);
                transceivers.0[t].1 = false;
                last_on.insert(t, ssrc);
            }
            if x.is_multiple_of(3) {
                pool.offer_answered();
            }
        }
        assert!(
            pool.issued() <= 12,
            "{} SSRCs for at most 6 tracks at once",
            pool.issued()
        );
    }

    #[test]
    fn a_reused_ssrc_hands_over_its_numbering() {
        let mut pool = SsrcPool::default();
        let mut random = counter();
        let lease = pool.lease(VIDEO, &mut random);
        pool.placed(0);
        let numbering = RtpMunger::new(lease.ssrc, 96, 90_000);
        pool.release(VIDEO, lease.ssrc, 0, Some(numbering));
        // Transceiver 0 is taken again (with another SSRC), so lease.ssrc may go elsewhere.
        let _ = pool.lease(VIDEO, &mut random);
        pool.placed(0);
        pool.offer_answered();
        let reused = pool.lease(VIDEO, &mut random);
        assert_eq!(reused.ssrc, lease.ssrc);
        let numbering = reused.numbering.expect("the numbering to continue");
        assert_eq!(numbering.out_ssrc(), lease.ssrc);
    }
}
