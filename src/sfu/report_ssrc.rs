//! One SSRC for all the receiver reports a connection sends.
//!
//! webrtc-rs' receiver-report interceptor gives every remote stream a random reporter SSRC of
//! its own. The peer's SRTCP layer keeps replay state per SSRC it ever received RTCP from,
//! for the connection's life, so a member who stays while others come and go would cost its
//! peer one more entry per track it was ever sent (measured on the server with webrtc-rs
//! clients). Yoom, server and client side (load tool, tests), reports from one SSRC per
//! connection instead, by rewriting the reports' sender SSRC on the way out.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::sansio::Protocol;

pub struct ReportSsrc {
    ssrc: u32,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl ReportSsrc {
    pub fn new(ssrc: u32) -> ReportSsrc {
        ReportSsrc {
            ssrc,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    fn rewrite(&self, packets: &mut [Box<dyn rtc::rtcp::packet::Packet>]) {
        for p in packets.iter_mut() {
            let replacement = match p.as_any().downcast_ref::<ReceiverReport>() {
                Some(rr) if rr.ssrc != self.ssrc => ReceiverReport {
                    ssrc: self.ssrc,
                    ..rr.clone()
                },
                _ => continue,
            };
            *p = Box::new(replacement);
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportSsrc {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &mut msg.message.packet {
            self.rewrite(packets);
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for ReportSsrc {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::reception_report::ReceptionReport;

    #[test]
    fn receiver_reports_leave_with_the_connection_ssrc_and_nothing_else_changes() {
        let r = ReportSsrc::new(42);
        let report = |ssrc, media| ReceiverReport {
            ssrc,
            reports: vec![ReceptionReport {
                ssrc: media,
                total_lost: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let pli = PictureLossIndication {
            sender_ssrc: 7,
            media_ssrc: 9,
        };
        let mut packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = vec![
            Box::new(report(1234, 11)),
            Box::new(pli.clone()),
            Box::new(report(99, 12)),
        ];
        r.rewrite(&mut packets);
        let rr = |i: usize| {
            packets[i]
                .as_any()
                .downcast_ref::<ReceiverReport>()
                .expect("still a receiver report")
                .clone()
        };
        assert_eq!(rr(0), report(42, 11));
        assert_eq!(rr(2), report(42, 12));
        assert_eq!(
            packets[1].as_any().downcast_ref::<PictureLossIndication>(),
            Some(&pli)
        );
    }
}
