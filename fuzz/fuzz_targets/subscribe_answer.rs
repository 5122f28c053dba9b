//! A subscribe answer, handled the way `MemberMedia::on_subscribe_answer` does: parsed as an
//! answer and set as the remote description of a server subscribe connection (send-only, the
//! server's codecs and interceptors, one forwarded audio and one video track) whose offer is
//! outstanding; then, as the server does, a re-offer when the answer was applied or the offer
//! was dropped anyway. webrtc-rs' sans-IO core, no sockets.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;

#[path = "../harness/sdp.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    // The SDP arrives as a JSON string: always UTF-8.
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(answer) = RTCSessionDescription::answer(sdp.to_owned()) else {
        return;
    };
    let mut pc = harness::subscribe_connection();
    let applied = pc.set_remote_description(Instant::now(), answer).is_ok();
    if applied || pc.pending_local_description().is_none() {
        let _ = harness::offer(&mut pc);
    }
});
