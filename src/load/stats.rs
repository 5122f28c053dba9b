//! Receive-side measurements of the load tool, kept allocation-free per packet: counters, an
//! RFC 3550 jitter estimate and a fixed-bucket delay histogram.

use serde::Serialize;

/// Delay histogram: 10 µs buckets up to 100 ms, then 1 ms buckets up to 2 s, then overflow.
#[derive(Clone)]
pub struct DelayHistogram {
    fine: Box<[u32; 10_000]>,
    coarse: Box<[u32; 1_900]>,
    overflow: u32,
    count: u64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        DelayHistogram {
            fine: Box::new([0; 10_000]),
            coarse: Box::new([0; 1_900]),
            overflow: 0,
            count: 0,
        }
    }
}

impl DelayHistogram {
    pub fn record_us(&mut self, us: u64) {
        self.count += 1;
        if us < 100_000 {
            self.fine[(us / 10) as usize] += 1;
        } else if us < 2_000_000 {
            self.coarse[((us - 100_000) / 1_000) as usize] += 1;
        } else {
            self.overflow += 1;
        }
    }

    pub fn merge(&mut self, other: &DelayHistogram) {
        for (a, b) in self.fine.iter_mut().zip(other.fine.iter()) {
            *a += b;
        }
        for (a, b) in self.coarse.iter_mut().zip(other.coarse.iter()) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.count += other.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The delay (µs, bucket upper bound) below which `q` (0..=1) of the samples lie.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, n) in self.fine.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= target {
                return Some((i as u64 + 1) * 10);
            }
        }
        for (i, n) in self.coarse.iter().enumerate() {
            seen += u64::from(*n);
            if seen >= target {
                return Some(100_000 + (i as u64 + 1) * 1_000);
            }
        }
        Some(2_000_000)
    }
}

/// What one subscriber measured on one forwarded track.
#[derive(Clone, Default)]
pub struct TrackStats {
    pub received: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    first_seq: Option<u32>,
    highest_seq: u32,
    /// RFC 3550 interarrival jitter, in µs.
    pub jitter_us: f64,
    last_transit_us: Option<i64>,
    pub delay: DelayHistogram,
    /// Microseconds from the subscriber's join to its first packet / first keyframe packet.
    pub first_packet_after_join_us: Option<u64>,
    pub first_keyframe_after_join_us: Option<u64>,
}

impl TrackStats {
    /// Records one packet carrying `seq`, sent at `sent_us` and received at `now_us` (same
    /// clock), `since_join_us` after the subscriber joined.
    pub fn record(
        &mut self,
        seq: u32,
        keyframe: bool,
        sent_us: u64,
        now_us: u64,
        since_join_us: u64,
    ) {
        self.received += 1;
        match self.first_seq {
            None => {
                self.first_seq = Some(seq);
                self.highest_seq = seq;
            }
            Some(_) if seq > self.highest_seq => self.highest_seq = seq,
            Some(_) if seq == self.highest_seq => self.duplicates += 1,
            Some(_) => self.out_of_order += 1,
        }
        self.first_packet_after_join_us.get_or_insert(since_join_us);
        if keyframe {
            self.first_keyframe_after_join_us
                .get_or_insert(since_join_us);
        }
        let transit = now_us as i64 - sent_us as i64;
        if let Some(last) = self.last_transit_us {
            let d = (transit - last).abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
        self.delay.record_us(transit.max(0) as u64);
    }

    /// Packets the publisher sent between the first and the highest one seen.
    pub fn expected(&self) -> u64 {
        self.first_seq
            .map_or(0, |first| u64::from(self.highest_seq - first) + 1)
    }

    pub fn lost(&self) -> u64 {
        self.expected()
            .saturating_sub(self.received - self.duplicates)
    }
}

/// Totals over every subscriber track of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tracks: u64,
    pub packets_expected: u64,
    pub packets_received: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    pub out_of_order: u64,
    pub jitter_ms_mean: f64,
    pub delay_ms_p50: Option<f64>,
    pub delay_ms_p95: Option<f64>,
    pub delay_ms_p99: Option<f64>,
    pub first_video_packet_ms_p50: Option<f64>,
    pub first_video_packet_ms_p95: Option<f64>,
    pub first_keyframe_ms_p50: Option<f64>,
    pub first_keyframe_ms_p95: Option<f64>,
    pub subscribers_without_video: u64,
}

pub fn summarize<'a>(
    video: impl Iterator<Item = &'a TrackStats>,
    expected_video_tracks: u64,
) -> Summary {
    let mut s = Summary::default();
    let mut delay = DelayHistogram::default();
    let mut jitter_sum = 0.0;
    let mut first_packet = Vec::new();
    let mut first_key = Vec::new();
    for t in video {
        s.tracks += 1;
        s.packets_expected += t.expected();
        s.packets_received += t.received - t.duplicates;
        s.packets_lost += t.lost();
        s.out_of_order += t.out_of_order;
        jitter_sum += t.jitter_us;
        delay.merge(&t.delay);
        if let Some(v) = t.first_packet_after_join_us {
            first_packet.push(v);
        }
        if let Some(v) = t.first_keyframe_after_join_us {
            first_key.push(v);
        }
    }
    s.subscribers_without_video = expected_video_tracks.saturating_sub(s.tracks);
    if s.packets_expected > 0 {
        s.loss_percent = 100.0 * s.packets_lost as f64 / s.packets_expected as f64;
    }
    if s.tracks > 0 {
        s.jitter_ms_mean = jitter_sum / s.tracks as f64 / 1000.0;
    }
    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
    s.delay_ms_p50 = ms(delay.quantile_us(0.50));
    s.delay_ms_p95 = ms(delay.quantile_us(0.95));
    s.delay_ms_p99 = ms(delay.quantile_us(0.99));
    s.first_video_packet_ms_p50 = ms(percentile(&mut first_packet, 0.50));
    s.first_video_packet_ms_p95 = ms(percentile(&mut first_packet, 0.95));
    s.first_keyframe_ms_p50 = ms(percentile(&mut first_key, 0.50));
    s.first_keyframe_ms_p95 = ms(percentile(&mut first_key, 0.95));
    s
}

fn percentile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let idx = (((values.len() as f64) * q).ceil() as usize).clamp(1, values.len()) - 1;
    Some(values[idx])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_reorder_and_duplicates() {
        let mut t = TrackStats::default();
        for seq in [10, 11, 13, 12, 13, 15] {
            t.record(seq, seq == 10, 0, 1_000, 5);
        }
        assert_eq!(t.expected(), 6);
        assert_eq!(t.received, 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.lost(), 1, "14 never came");
        assert_eq!(t.first_keyframe_after_join_us, Some(5));
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = DelayHistogram::default();
        for us in 1..=100u64 {
            h.record_us(us * 100);
        }
        assert_eq!(h.quantile_us(0.5), Some(5_010));
        assert_eq!(h.quantile_us(0.99), Some(9_910));
        h.record_us(150_000);
        assert_eq!(h.quantile_us(1.0), Some(151_000));
    }

    #[test]
    fn jitter_of_a_steady_stream_is_zero() {
        let mut t = TrackStats::default();
        for i in 0..100u32 {
            let sent = u64::from(i) * 6_000;
            t.record(i, false, sent, sent + 400, 0);
        }
        assert!(t.jitter_us < 1e-9);
        let s = summarize([t].iter(), 1);
        assert_eq!(s.loss_percent, 0.0);
        assert_eq!(s.delay_ms_p50, Some(0.41));
    }
}
