//! The server's connections as webrtc-rs' sans-IO core, shared by the SDP fuzz targets and
//! `tests/parser_fuzz.rs` (each includes this file with `#[path]`): what one input meets is
//! built in one place.
#![allow(dead_code)]

use std::time::Instant;

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use yoom::sfu::codecs::{media_engine_and_interceptors, supported_codecs, MediaDirection};

/// A connection with the server's codecs and the interceptors for `direction`.
pub fn sans_io_connection(direction: MediaDirection) -> RTCPeerConnection {
    let (engine, registry) =
        media_engine_and_interceptors(direction, None).expect("the server's media engine builds");
    RTCPeerConnectionBuilder::new()
        .with_media_engine(engine)
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .expect("a connection builds")
}

/// A server subscribe connection as `MemberMedia::negotiate` sets it up (send-only, one
/// forwarded audio and one video track with their own SSRCs), with its offer made.
pub fn subscribe_connection() -> RTCPeerConnection {
    let mut pc = sans_io_connection(MediaDirection::SendOnly);
    let codecs = supported_codecs();
    for (i, kind) in [RtpCodecKind::Audio, RtpCodecKind::Video]
        .into_iter()
        .enumerate()
    {
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
    offer(&mut pc).expect("the first offer applies");
    pc
}

/// Makes an offer and sets it as the local description.
pub fn offer(pc: &mut RTCPeerConnection) -> Result<(), rtc::shared::error::Error> {
    let offer = pc.create_offer(None)?;
    pc.set_local_description(Instant::now(), offer)
}
