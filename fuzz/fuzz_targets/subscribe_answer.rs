//! A subscribe answer, handled the way `MemberMedia::on_subscribe_answer` does: parsed as an
//! answer and set as the remote description of a server subscribe connection (send-only, the
//! server's codecs and interceptors, one forwarded audio and one video track) whose offer is
//! outstanding; then, as the server does, a re-offer when the answer was applied or the offer
//! was dropped anyway. webrtc-rs' sans-IO core, no sockets.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use yoom::sfu::codecs::{media_engine_and_interceptors, supported_codecs, MediaDirection};

fuzz_target!(|data: &[u8]| {
    // The SDP arrives as a JSON string: always UTF-8.
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(answer) = RTCSessionDescription::answer(sdp.to_owned()) else {
        return;
    };
    let (engine, registry) = media_engine_and_interceptors(MediaDirection::SendOnly, None)
        .expect("the server's media engine builds");
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("a connection builds");
    let codecs = supported_codecs();
    for (i, kind) in [RtpCodecKind::Audio, RtpCodecKind::Video].into_iter().enumerate() {
        let codec = codecs
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(c, _)| c.rtp_codec.clone())
            .expect("a codec of each kind");
        pc.add_track(MediaStreamTrack::new(
            "publisher".into(),
            format!("track-{i}"),
            format!("publisher-{i}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(1000 + i as u32),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ))
        .expect("a track is added");
    }
    let offer = pc.create_offer(None).expect("an offer");
    pc.set_local_description(Instant::now(), offer)
        .expect("the offer applies");
    let applied = pc.set_remote_description(Instant::now(), answer).is_ok();
    if applied || pc.pending_local_description().is_none() {
        if let Ok(offer) = pc.create_offer(None) {
            let _ = pc.set_local_description(Instant::now(), offer);
        }
    }
});
