//! The codecs Yoom negotiates and the interceptor chain every peer connection gets.
//!
//! Codecs are registered explicitly and without RTX: with no `video/rtx` codec no repair
//! streams are negotiated, so every RTP packet that reaches the forwarder carries a primary
//! payload and retransmission is left to NACK answered from the interceptors' buffers.

use std::collections::VecDeque;
use std::time::Instant;

use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder,
    Slot, StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use webrtc::peer_connection::{register_default_interceptors, MediaEngine, Registry};

use crate::sfu::report_ssrc::ReportSsrc;
use crate::sfu::ssrc_pool::random_ssrc;
use crate::sfu::wire_stats::WireStats;

fn video_feedback() -> Vec<RTCPFeedback> {
    // register_default_interceptors adds nack, nack pli and transport-cc; FIR is ours to add.
    vec![RTCPFeedback {
        typ: "ccm".into(),
        parameter: "fir".into(),
    }]
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, video: bool) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.into(),
        clock_rate,
        channels,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: if video { video_feedback() } else { vec![] },
    }
}

/// Every codec Yoom accepts from publishers, with the payload type it offers subscribers.
/// Chromium offers all of these; which one a publisher uses is its choice, and each
/// subscriber receives exactly that codec.
pub fn supported_codecs() -> Vec<(RTCRtpCodecParameters, RtpCodecKind)> {
    let audio = |pt, c| {
        (
            RTCRtpCodecParameters {
                rtp_codec: c,
                payload_type: pt,
            },
            RtpCodecKind::Audio,
        )
    };
    let video = |pt, c| {
        (
            RTCRtpCodecParameters {
                rtp_codec: c,
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
    };
    vec![
        audio(
            111,
            codec(
                MIME_TYPE_OPUS,
                48_000,
                2,
                "minptime=10;useinbandfec=1",
                false,
            ),
        ),
        video(96, codec(MIME_TYPE_VP8, 90_000, 0, "", true)),
        video(98, codec(MIME_TYPE_VP9, 90_000, 0, "profile-id=0", true)),
        video(
            102,
            codec(
                MIME_TYPE_H264,
                90_000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                true,
            ),
        ),
        video(
            108,
            codec(
                MIME_TYPE_H264,
                90_000,
                0,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
                true,
            ),
        ),
    ]
}

/// Which way media flows on a connection; decides the interceptors it needs. Every
/// interceptor in the chain handles every packet, so a connection carries only its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MediaDirection {
    /// Sends and receives (client peers of the load tool and tests).
    #[default]
    Both,
    /// Only receives: a member's publish connection on the server. NACK generator, receiver
    /// reports, TWCC feedback (the publisher's browser sizes its bitrate by it).
    ReceiveOnly,
    /// Only sends: a member's subscribe connection on the server, the per-packet hot path.
    /// NACK responder, sender reports, and PLI/FIR up to the application.
    SendOnly,
}

/// Slot of [`crate::sfu::wire_stats::WireStats`]: below every default interceptor (the lowest
/// is congestion control at 1,000), so it sees exactly what crosses the wire.
const WIRE_STATS_SLOT: usize = 100;
/// Slot of [`ReportSsrc`]: below the receiver-report interceptor, above the wire statistics.
const REPORT_SSRC_SLOT: usize = 200;

/// A media engine with [`supported_codecs`] and the interceptors `direction` needs: on a
/// receiving connection NACK generator, receiver reports and TWCC feedback towards publishers
/// (so browsers ramp their bitrate up); on a send-only one none for media (Yoom's outbound
/// streams answer NACKs and send sender reports); and [`FeedbackForwarder`] so PLI/FIR (and on
/// send-only connections NACK) reach the application.
pub fn media_engine_and_interceptors(
    direction: MediaDirection,
    wire_stats: Option<WireStats>,
) -> webrtc::error::Result<(MediaEngine, Registry)> {
    let mut engine = MediaEngine::default();
    for (params, kind) in supported_codecs() {
        engine.register_codec(params, kind)?;
    }
    // Feedback must be registered after the codecs: it is added to the codecs registered so far.
    let registry = match direction {
        MediaDirection::Both => register_default_interceptors(Registry::new(), &mut engine)?,
        MediaDirection::ReceiveOnly => {
            register_nack_feedback(&mut engine);
            configure_simulcast_extension_headers(&mut engine)?;
            let registry = Registry::new()
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
            configure_twcc_receiver_only(registry, &mut engine)?
        }
        // Yoom sends the media of a send-only connection itself, and answers NACKs and sends
        // sender reports for it (`outbound_stream`): `rtc`'s responder and reporter would see
        // none of its packets.
        MediaDirection::SendOnly => {
            register_nack_feedback(&mut engine);
            Registry::new()
        }
    };
    let registry = match direction {
        MediaDirection::ReceiveOnly => registry,
        // The application-most slot (the default chain ends at 11_000).
        MediaDirection::Both => {
            registry.with(Slot::from(14_000), FeedbackForwarder::keyframe_requests())
        }
        MediaDirection::SendOnly => registry.with(
            Slot::from(14_000),
            FeedbackForwarder::keyframe_requests_and_nacks(),
        ),
    };
    let registry = match direction {
        // Nothing to report from on a send-only connection (and one interceptor fewer on the
        // per-packet path).
        MediaDirection::SendOnly => registry,
        _ => registry.with(Slot::from(REPORT_SSRC_SLOT), ReportSsrc::new(random_ssrc())),
    };
    let registry = match wire_stats {
        Some(stats) => registry.with(Slot::from(WIRE_STATS_SLOT), stats),
        None => registry,
    };
    Ok((engine, registry))
}

/// Offers "nack" and "nack pli" on video, as `configure_nack` does, without its interceptors.
fn register_nack_feedback(engine: &mut MediaEngine) {
    for parameter in ["", "pli"] {
        engine.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
}

/// Passes PLI and FIR, and NACK where Yoom answers them itself, up to the application (the
/// end of the chain drops all other RTCP).
///
/// Each request becomes its own message because a compound RTCP message is routed to a track
/// by the SSRC of its first packet only.
pub struct FeedbackForwarder {
    nacks: bool,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl FeedbackForwarder {
    pub fn keyframe_requests() -> FeedbackForwarder {
        FeedbackForwarder {
            nacks: false,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    pub fn keyframe_requests_and_nacks() -> FeedbackForwarder {
        FeedbackForwarder {
            nacks: true,
            ..FeedbackForwarder::keyframe_requests()
        }
    }

    fn forwards(nacks: bool, packet: &dyn rtc::rtcp::packet::Packet) -> bool {
        let any = packet.as_any();
        any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
            || (nacks && any.is::<TransportLayerNack>())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtcp(packets) => {
                let nacks = self.nacks;
                for p in packets.iter().filter(|p| Self::forwards(nacks, p.as_ref())) {
                    let mut message = AttributedPacket::new(Packet::Rtcp(vec![p.clone()]));
                    message.attributes = msg.message.attributes.clone();
                    message.add(Attribute::DeliverToApplication);
                    self.read_queue.push_back(TaggedPacket {
                        now: msg.now,
                        transport: msg.transport,
                        message,
                    });
                }
            }
            _ => self.read_queue.push_back(msg),
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Whether `a` and `b` are the same codec for forwarding purposes (H.264 also by profile and
/// packetization mode, which decoders care about).
pub fn same_codec(a: &RTCRtpCodec, b: &RTCRtpCodec) -> bool {
    if !a.mime_type.eq_ignore_ascii_case(&b.mime_type) {
        return false;
    }
    if a.mime_type.eq_ignore_ascii_case(MIME_TYPE_H264) {
        return fmtp_value(&a.sdp_fmtp_line, "packetization-mode")
            == fmtp_value(&b.sdp_fmtp_line, "packetization-mode")
            && profile_idc(&a.sdp_fmtp_line) == profile_idc(&b.sdp_fmtp_line);
    }
    true
}

fn fmtp_value<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// The profile part (first byte plus constraint flags) of profile-level-id, ignoring the level.
fn profile_idc(fmtp: &str) -> Option<String> {
    fmtp_value(fmtp, "profile-level-id").map(|v| v.get(..4).unwrap_or(v).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_matches_by_profile_and_mode_not_level() {
        let a = codec(
            MIME_TYPE_H264,
            90_000,
            0,
            "packetization-mode=1;profile-level-id=42e01f",
            true,
        );
        let b = codec(
            MIME_TYPE_H264,
            90_000,
            0,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e034",
            true,
        );
        let c = codec(
            MIME_TYPE_H264,
            90_000,
            0,
            "packetization-mode=0;profile-level-id=42e01f",
            true,
        );
        assert!(same_codec(&a, &b));
        assert!(!same_codec(&a, &c));
        let vp8 = codec("video/vp8", 90_000, 0, "", true);
        assert!(same_codec(&vp8, &codec(MIME_TYPE_VP8, 90_000, 0, "", true)));
        assert!(!same_codec(&vp8, &a));
    }

    #[test]
    fn engine_builds() {
        media_engine_and_interceptors(MediaDirection::Both, None).expect("codecs register");
    }
}
