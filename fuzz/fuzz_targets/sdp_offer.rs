//! A publish offer's SDP, handled the way `MemberMedia::on_publish_offer` does: parsed as an
//! offer, Yoom's own checks, then set as the remote description of a connection built with the
//! server's codecs and interceptors, answered, and the answer applied. The connection is
//! webrtc-rs' sans-IO core (`rtc::peer_connection::RTCPeerConnection`), which the server's
//! async connection drives, so one input runs synchronously with no sockets.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;
use yoom::sfu::codecs::MediaDirection;
use yoom::sfu::member::check_publish_offer;

#[path = "../harness/sdp.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    // The SDP arrives as a JSON string: always UTF-8.
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = RTCSessionDescription::offer(sdp.to_owned()) else {
        return;
    };
    if check_publish_offer(&offer).is_err() {
        return;
    }
    let mut pc = harness::sans_io_connection(MediaDirection::ReceiveOnly);
    if pc.set_remote_description(Instant::now(), offer).is_err() {
        return;
    }
    let Ok(answer) = pc.create_answer(None) else {
        return;
    };
    let _ = pc.set_local_description(Instant::now(), answer);
});
