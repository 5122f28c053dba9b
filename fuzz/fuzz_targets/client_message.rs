//! Every WebSocket text frame a client sends goes through `parse_client_message` first. Whatever
//! the bytes, it must not panic, and it must answer either a message or an error the contract
//! knows. A candidate the parser lets through is then parsed as ICE, as the media actor does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yoom::protocol::{parse_client_message, ClientMessage, ErrorCode, MAX_FRAME_BYTES};
use yoom::sfu::member::check_candidate;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the WebSocket layer refuses others before Yoom sees them).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let incoming = parse_client_message(text);
    match incoming.message {
        Ok(ClientMessage::Candidate { candidate, .. }) => {
            let init = webrtc_candidate(candidate);
            let _ = check_candidate(&init);
        }
        Ok(message) => {
            let _ = message.type_name();
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "an error always says why");
            // It may quote a little of the input (at most 40 characters, each escaped to at
            // most 10), never all of it.
            assert!(e.message.chars().count() <= 512, "{:?}", e.message);
            assert!(
                matches!(
                    e.code,
                    ErrorCode::BadJson
                        | ErrorCode::UnknownType
                        | ErrorCode::InvalidField
                        | ErrorCode::TooLarge
                ),
                "parsing alone yields only parse errors, got {:?}",
                e.code
            );
            assert_eq!(e.code == ErrorCode::TooLarge, text.len() > MAX_FRAME_BYTES);
        }
    }
    // A ref, when there is one, is echoed verbatim: an integer or a short string.
    if let Some(r) = incoming.reference {
        assert!(r.is_i64() || r.is_u64() || r.as_str().is_some_and(|s| s.chars().count() <= 64));
    }
});

fn webrtc_candidate(
    c: yoom::protocol::IceCandidate,
) -> rtc::peer_connection::transport::RTCIceCandidateInit {
    rtc::peer_connection::transport::RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        url: None,
    }
}
