//! Per-subscriber RTP rewriting, with no I/O: the state one egress keeps so that what a
//! subscriber's decoder sees is one continuous stream with that connection's SSRC and payload
//! type, whatever happens upstream (a publisher re-publishing with a new SSRC, padding-only
//! probes dropped, a pause and resume).

use std::time::Instant;

use rtc::rtp;

/// Rewrites packets of one forwarded track for one subscriber.
#[derive(Debug, Clone)]
pub struct RtpMunger {
    out_ssrc: u32,
    out_payload_type: u8,
    clock_rate: u32,
    source: Option<Source>,
    /// Set by `resume`: the next packet starts a new source segment even with the same SSRC.
    discontinuity: bool,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    /// Highest sequence number received (input numbering), for in-order detection.
    highest_in_seq: u16,
    last_out_seq: u16,
    last_out_ts: u32,
    last_at: Instant,
}

/// What a forwarded packet's header becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub ssrc: u32,
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
}

impl RtpMunger {
    pub fn new(out_ssrc: u32, out_payload_type: u8, clock_rate: u32) -> RtpMunger {
        RtpMunger {
            out_ssrc,
            out_payload_type,
            clock_rate: clock_rate.max(1),
            source: None,
            discontinuity: false,
        }
    }

    /// Marks a pause: the next packet continues the output numbering without a jump.
    pub fn resume(&mut self) {
        self.discontinuity = true;
    }

    /// Takes this SSRC's numbering over for a new track on it (see `ssrc_pool`): the next
    /// packet, from whichever source, continues right after what the subscriber last received.
    pub fn continue_with(&mut self, out_payload_type: u8, clock_rate: u32) {
        self.out_payload_type = out_payload_type;
        self.clock_rate = clock_rate.max(1);
        self.discontinuity = true;
    }

    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// The output header fields for `header` received at `now`.
    pub fn rewrite(&mut self, header: &rtp::Header, now: Instant) -> Rewrite {
        let source = match self.source {
            Some(s) if s.ssrc == header.ssrc && !self.discontinuity => s,
            previous => {
                self.discontinuity = false;
                // Continue right after what the subscriber last saw: next sequence number and a
                // timestamp advanced by the wall-clock time since, so playout stays smooth.
                let (seq_offset, ts_offset) = match previous {
                    None => (0, 0),
                    Some(p) => {
                        let elapsed = now.saturating_duration_since(p.last_at).as_secs_f64();
                        let ticks = ((elapsed * f64::from(self.clock_rate)) as u32).max(1);
                        (
                            p.last_out_seq
                                .wrapping_add(1)
                                .wrapping_sub(header.sequence_number),
                            p.last_out_ts
                                .wrapping_add(ticks)
                                .wrapping_sub(header.timestamp),
                        )
                    }
                };
                Source {
                    ssrc: header.ssrc,
                    seq_offset,
                    ts_offset,
                    highest_in_seq: header.sequence_number.wrapping_sub(1),
                    last_out_seq: 0,
                    last_out_ts: 0,
                    last_at: now,
                }
            }
        };
        let mut s = source;
        let out = Rewrite {
            ssrc: self.out_ssrc,
            payload_type: self.out_payload_type,
            sequence_number: header.sequence_number.wrapping_add(s.seq_offset),
            timestamp: header.timestamp.wrapping_add(s.ts_offset),
        };
        if is_newer(header.sequence_number, s.highest_in_seq) {
            s.highest_in_seq = header.sequence_number;
            s.last_out_seq = out.sequence_number;
            s.last_out_ts = out.timestamp;
            s.last_at = now;
        }
        self.source = Some(s);
        out
    }

    /// Drops the in-order packet with this header without leaving a sequence-number gap
    /// (used for padding-only packets, which carry nothing for the subscriber).
    pub fn skip(&mut self, header: &rtp::Header) {
        if let Some(s) = &mut self.source {
            if s.ssrc == header.ssrc && header.sequence_number == s.highest_in_seq.wrapping_add(1) {
                s.highest_in_seq = header.sequence_number;
                s.seq_offset = s.seq_offset.wrapping_sub(1);
            }
        }
    }

    /// Builds the outgoing packet: rewritten header, header extensions stripped (their ids
    /// belong to the publisher's connection), payload shared with every other subscriber.
    pub fn packet(&mut self, src: &rtp::Packet, now: Instant) -> rtp::Packet {
        let r = self.rewrite(&src.header, now);
        rtp::Packet {
            header: rtp::Header {
                version: 2,
                padding: false,
                extension: false,
                marker: src.header.marker,
                payload_type: r.payload_type,
                sequence_number: r.sequence_number,
                timestamp: r.timestamp,
                ssrc: r.ssrc,
                // Empty in practice (SFU input comes from browsers, not mixers): no allocation.
                csrc: src.header.csrc.clone(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload: src.payload.clone(),
        }
    }
}

/// RFC 3550 sequence comparison: `a` is after `b` within half the number space.
fn is_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(ssrc: u32, seq: u16, ts: u32) -> rtp::Header {
        rtp::Header {
            version: 2,
            payload_type: 100,
            ssrc,
            sequence_number: seq,
            timestamp: ts,
            extension: true,
            ..Default::default()
        }
    }

    #[test]
    fn rewrites_ssrc_and_payload_type_and_keeps_numbering() {
        let t = Instant::now();
        let mut m = RtpMunger::new(0xABCD, 96, 90_000);
        let r = m.rewrite(&header(1, 500, 9000), t);
        assert_eq!(
            (r.ssrc, r.payload_type, r.sequence_number, r.timestamp),
            (0xABCD, 96, 500, 9000)
        );
        let r = m.rewrite(&header(1, 501, 12000), t);
        assert_eq!((r.sequence_number, r.timestamp), (501, 12000));
    }

    #[test]
    fn sequence_wraparound_passes_through() {
        let t = Instant::now();
        let mut m = RtpMunger::new(7, 96, 90_000);
        let mut out = Vec::new();
        for i in 0..6u16 {
            out.push(
                m.rewrite(
                    &header(
                        1,
                        65533u16.wrapping_add(i),
                        (u32::MAX - 3000).wrapping_add(u32::from(i) * 1000),
                    ),
                    t,
                )
                .sequence_number,
            );
        }
        assert_eq!(out, vec![65533, 65534, 65535, 0, 1, 2]);
    }

    #[test]
    fn a_new_source_continues_the_output_without_a_jump() {
        let t = Instant::now();
        let mut m = RtpMunger::new(7, 96, 90_000);
        m.rewrite(&header(1, 100, 1_000), t);
        let last = m.rewrite(&header(1, 101, 4_000), t);
        // The publisher switched camera with a new SSRC and unrelated numbering.
        let later = t + Duration::from_millis(100);
        let first = m.rewrite(&header(2, 40_000, 77_777_777), later);
        assert_eq!(first.sequence_number, last.sequence_number.wrapping_add(1));
        assert_eq!(first.timestamp, last.timestamp + 9_000, "100 ms at 90 kHz");
        let next = m.rewrite(&header(2, 40_001, 77_780_777), later);
        assert_eq!(next.sequence_number, first.sequence_number + 1);
        assert_eq!(next.timestamp, first.timestamp + 3_000);
    }

    #[test]
    fn resume_after_pause_continues_numbering() {
        let t = Instant::now();
        let mut m = RtpMunger::new(7, 111, 48_000);
        let before = m.rewrite(&header(1, 10, 960), t);
        m.resume();
        // Upstream kept counting while this subscriber was paused.
        let after = m.rewrite(&header(1, 510, 480_960), t + Duration::from_secs(1));
        assert_eq!(after.sequence_number, before.sequence_number + 1);
        assert_eq!(after.timestamp, before.timestamp + 48_000);
    }

    #[test]
    fn a_new_track_on_a_reused_ssrc_continues_its_numbering_even_with_the_same_input_ssrc() {
        let t = Instant::now();
        let mut m = RtpMunger::new(7, 96, 90_000);
        let last = m.rewrite(&header(1, 30_000, 5_000), t);
        // Another publisher's track, whose own SSRC happens to be the same, takes this SSRC
        // over with a renegotiated payload type, two seconds later.
        m.continue_with(98, 90_000);
        let first = m.rewrite(&header(1, 12, 100), t + Duration::from_secs(2));
        assert_eq!(first.ssrc, 7);
        assert_eq!(first.payload_type, 98);
        assert_eq!(first.sequence_number, last.sequence_number + 1);
        assert_eq!(first.timestamp, last.timestamp + 180_000);
    }

    #[test]
    fn reordered_packets_keep_their_place_and_skips_close_the_gap() {
        let t = Instant::now();
        let mut m = RtpMunger::new(7, 96, 90_000);
        m.rewrite(&header(1, 10, 0), t);
        m.rewrite(&header(1, 12, 0), t);
        assert_eq!(
            m.rewrite(&header(1, 11, 0), t).sequence_number,
            11,
            "late packet"
        );
        // 13 is padding only: dropped, and 14 takes its number.
        m.skip(&header(1, 13, 0));
        assert_eq!(m.rewrite(&header(1, 14, 0), t).sequence_number, 13);
    }

    #[test]
    fn packet_strips_extensions_and_shares_the_payload() {
        let t = Instant::now();
        let mut m = RtpMunger::new(9, 97, 90_000);
        let src = rtp::Packet {
            header: header(1, 5, 5),
            payload: bytes::Bytes::from_static(b"frame"),
        };
        let out = m.packet(&src, t);
        assert!(!out.header.extension);
        assert!(out.header.extensions.is_empty());
        assert_eq!(out.header.ssrc, 9);
        assert_eq!(
            out.payload.as_ptr(),
            src.payload.as_ptr(),
            "payload not copied"
        );
    }
}
