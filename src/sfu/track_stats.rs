//! Counters of one published track for the admin API: packets, bytes, bitrate over the last
//! second, and loss from gaps in the publisher's sequence numbers. The ingress loop is the only
//! writer (plain atomic stores, no lock); readers take a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BITRATE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct TrackStats {
    started: Instant,
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Packets the sequence numbers say were sent (highest - first + 1).
    expected: AtomicU64,
    bitrate_bps: AtomicU64,
    /// When `bitrate_bps` was last computed, in ms since `started`.
    bitrate_at_ms: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackStatsSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub bitrate_kbps: f64,
    pub loss_percent: f64,
}

impl Default for TrackStats {
    fn default() -> Self {
        TrackStats {
            started: Instant::now(),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            bitrate_bps: AtomicU64::new(0),
            bitrate_at_ms: AtomicU64::new(0),
        }
    }
}

impl TrackStats {
    pub fn snapshot(&self, now: Instant) -> TrackStatsSnapshot {
        let packets = self.packets.load(Ordering::Relaxed);
        let expected = self.expected.load(Ordering::Relaxed);
        let at = self.started + Duration::from_millis(self.bitrate_at_ms.load(Ordering::Relaxed));
        // A track that stopped sending has no bitrate, whatever the last window said.
        let fresh = now.saturating_duration_since(at) <= 2 * BITRATE_WINDOW;
        let bitrate = if fresh {
            self.bitrate_bps.load(Ordering::Relaxed)
        } else {
            0
        };
        TrackStatsSnapshot {
            packets,
            bytes: self.bytes.load(Ordering::Relaxed),
            bitrate_kbps: bitrate as f64 / 1000.0,
            loss_percent: if expected == 0 {
                0.0
            } else {
                expected.saturating_sub(packets) as f64 * 100.0 / expected as f64
            },
        }
    }
}

/// The ingress loop's side: sequence unwrapping and the bitrate window.
#[derive(Debug, Default)]
pub struct TrackStatsRecorder {
    first_seq: Option<i64>,
    highest_seq: i64,
    window_start: Option<Instant>,
    window_bytes: u64,
}

impl TrackStatsRecorder {
    pub fn record(&mut self, stats: &TrackStats, seq: u16, payload_bytes: usize, now: Instant) {
        stats.packets.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(payload_bytes as u64, Ordering::Relaxed);
        let extended = match self.first_seq {
            None => {
                self.first_seq = Some(i64::from(seq));
                self.highest_seq = i64::from(seq);
                i64::from(seq)
            }
            // The nearest value with these low 16 bits: wraps forward, reordering backward.
            Some(_) => {
                self.highest_seq + i64::from(seq.wrapping_sub(self.highest_seq as u16) as i16)
            }
        };
        if extended > self.highest_seq {
            self.highest_seq = extended;
        }
        if let Some(first) = self.first_seq {
            let expected = (self.highest_seq - first + 1).max(0) as u64;
            stats.expected.store(expected, Ordering::Relaxed);
        }

        let start = *self.window_start.get_or_insert(now);
        self.window_bytes += payload_bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= BITRATE_WINDOW {
            let bps = (self.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            stats.bitrate_bps.store(bps, Ordering::Relaxed);
            let at = now.saturating_duration_since(stats.started).as_millis() as u64;
            stats.bitrate_at_ms.store(at, Ordering::Relaxed);
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_across_a_sequence_wrap_and_ignores_reordering() {
        let stats = TrackStats::default();
        let mut rec = TrackStatsRecorder::default();
        let now = Instant::now();
        // 65530..=65535, 0..=9 with 3 missing (65533, 2, 5) and 4 arriving late.
        let mut seqs: Vec<u16> = (65530..=65535).chain(0..=9).collect();
        seqs.retain(|s| ![65533, 2, 5].contains(s));
        let late = seqs.iter().position(|s| *s == 4).unwrap();
        let four = seqs.remove(late);
        seqs.push(four);
        for s in seqs {
            rec.record(&stats, s, 100, now);
        }
        let snap = stats.snapshot(now);
        assert_eq!(snap.packets, 13);
        assert_eq!(snap.bytes, 1300);
        assert!(
            (snap.loss_percent - 3.0 * 100.0 / 16.0).abs() < 1e-9,
            "{snap:?}"
        );
    }

    #[test]
    fn bitrate_is_over_the_last_second_and_zero_once_the_track_stops() {
        let stats = TrackStats::default();
        let mut rec = TrackStatsRecorder::default();
        let t0 = stats.started;
        // 100 packets of 1,250 bytes over one second: 1 Mbit/s.
        for i in 0..=100u16 {
            rec.record(
                &stats,
                i,
                1250,
                t0 + Duration::from_millis(u64::from(i) * 10),
            );
        }
        let snap = stats.snapshot(t0 + Duration::from_millis(1000));
        assert!((snap.bitrate_kbps - 1010.0).abs() < 1.0, "{snap:?}");
        assert_eq!(
            stats.snapshot(t0 + Duration::from_secs(5)).bitrate_kbps,
            0.0
        );
    }
}
