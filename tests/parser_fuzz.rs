//! Fuzzing in the ordinary test run: seeded, deterministic mutations of valid client messages
//! and of real SDP offers, pushed through the parsing the server does. cargo-fuzz (`fuzz/`,
//! docs/security.md "Fuzzing") explores far more; this keeps the same properties checked on
//! every `cargo test`, cheaply, and holds every input cargo-fuzz found as a regression.

use std::time::Instant;

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use serde_json::{json, Map, Value};
use yoom::protocol::{parse_client_message, ClientMessage, ErrorCode, MAX_FRAME_BYTES};
use yoom::sfu::codecs::MediaDirection;
use yoom::sfu::member::{check_candidate, check_publish_offer};

#[path = "../fuzz/harness/sdp.rs"]
mod harness;
use harness::{offer, sans_io_connection, subscribe_connection};

/// The cargo-fuzz seed corpus, shared.
const MESSAGE_SEEDS: &[&str] = &[
    include_str!("../fuzz/seeds/client_message/list_rooms"),
    include_str!("../fuzz/seeds/client_message/set_name"),
    include_str!("../fuzz/seeds/client_message/join"),
    include_str!("../fuzz/seeds/client_message/join_token"),
    include_str!("../fuzz/seeds/client_message/leave"),
    include_str!("../fuzz/seeds/client_message/chat"),
    include_str!("../fuzz/seeds/client_message/mute"),
    include_str!("../fuzz/seeds/client_message/offer"),
    include_str!("../fuzz/seeds/client_message/answer"),
    include_str!("../fuzz/seeds/client_message/candidate"),
    include_str!("../fuzz/seeds/client_message/candidate_tcp"),
    include_str!("../fuzz/seeds/client_message/candidate_srflx"),
    include_str!("../fuzz/seeds/client_message/candidate_relay"),
    include_str!("../fuzz/seeds/client_message/candidate_mdns"),
    include_str!("../fuzz/seeds/client_message/candidate_end"),
];

const SDP_SEEDS: &[&str] = &[
    include_str!("../fuzz/seeds/sdp_offer/webrtc_rs_vp8_opus"),
    include_str!("../fuzz/seeds/sdp_offer/chrome_like_simulcast"),
    include_str!("../fuzz/seeds/sdp_offer/firefox_like_audio"),
    include_str!("../fuzz/seeds/sdp_offer/unsupported_codec_only"),
    include_str!("../fuzz/seeds/sdp_offer/datachannel_and_audio"),
];

/// Bytes that matter to JSON and to the protocol's words, inserted by the byte mutators.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\n",
    "null",
    "true",
    "false",
    "-1",
    "1e400",
    "0.5",
    "18446744073709551616",
    "\"type\"",
    "\"ref\"",
    "\"join\"",
    "\"chat\"",
    "\"candidate\"",
    "\"offer\"",
    "\"room\"",
    "\"name\"",
    "\"pc\"",
    "\"sdp\"",
    "\u{7}",
    "\u{0}",
    "\u{202e}",
    "é",
    "😀",
    " typ host",
    "candidate:",
    " raddr ",
];

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn mutate_bytes(rng: &mut Rng, bytes: &mut Vec<u8>) {
    let at = rng.below(bytes.len() + 1);
    let last = bytes.len().saturating_sub(1);
    match rng.below(7) {
        0 if !bytes.is_empty() => bytes[at.min(last)] ^= 1 << rng.below(8),
        1 if !bytes.is_empty() => bytes[at.min(last)] = *rng.pick(b"\0\x7f\xff\"\\{}[]:,\n 0"),
        2 => {
            let end = (at + rng.below(16)).min(bytes.len());
            bytes.drain(at..end);
        }
        3 => {
            let end = (at + rng.below(32)).min(bytes.len());
            let copy = bytes[at..end].to_vec();
            bytes.splice(at..at, copy);
        }
        4 => {
            let token = rng.pick(TOKENS).as_bytes();
            bytes.splice(at..at, token.iter().copied());
        }
        5 => {
            let other = rng.pick(MESSAGE_SEEDS).as_bytes();
            let from = rng.below(other.len());
            bytes.truncate(at);
            bytes.extend_from_slice(&other[from..]);
        }
        _ => bytes.truncate(at),
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(-1),
        3 => json!(u64::MAX),
        4 => json!(0.5),
        5 => json!(""),
        6 => json!(" \t "),
        7 => json!("x".repeat(10_000)),
        8 => json!("a\u{7}b"),
        9 => json!("é😀\u{202e}"),
        10 => json!([1, "two", null]),
        11 => {
            json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMLineIndex": 70000})
        }
        12 => {
            let mut v = json!("deep");
            for _ in 0..rng.below(200) {
                v = json!([v]);
            }
            v
        }
        _ => json!(rng.pick(TOKENS)),
    }
}

const KEYS: &[&str] = &[
    "type",
    "ref",
    "room",
    "name",
    "token",
    "text",
    "kind",
    "muted",
    "pc",
    "sdp",
    "candidate",
];

fn mutate_json(rng: &mut Rng, obj: &mut Map<String, Value>) {
    let keys: Vec<String> = obj.keys().cloned().collect();
    match rng.below(3) {
        0 if !keys.is_empty() => {
            let key = rng.pick(&keys).clone();
            obj.insert(key, random_value(rng));
        }
        1 if !keys.is_empty() => {
            obj.remove(rng.pick(&keys).as_str());
        }
        _ => {
            obj.insert(rng.pick(KEYS).to_string(), random_value(rng));
        }
    }
}

/// What every parse must satisfy, whatever the input.
fn check_message_properties(text: &str) {
    let incoming = parse_client_message(text);
    let again = parse_client_message(text);
    assert_eq!(
        format!("{incoming:?}"),
        format!("{again:?}"),
        "deterministic: {text:?}"
    );
    let json: Option<Value> = serde_json::from_str(text).ok();
    match &incoming.message {
        Ok(message) => {
            let obj = json
                .as_ref()
                .and_then(Value::as_object)
                .expect("Ok only for objects");
            assert_eq!(obj["type"], message.type_name(), "{text:?}");
            if let ClientMessage::Candidate { candidate, .. } = message {
                let init = RTCIceCandidateInit {
                    candidate: candidate.candidate.clone(),
                    ..Default::default()
                };
                if let Err(e) = check_candidate(&init) {
                    assert!(e.starts_with("`candidate`: "), "{e}");
                }
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::BadJson
                        | ErrorCode::UnknownType
                        | ErrorCode::InvalidField
                        | ErrorCode::TooLarge
                ),
                "{e:?} for {text:?}"
            );
            assert_eq!(e.code == ErrorCode::TooLarge, text.len() > MAX_FRAME_BYTES);
            assert!(!e.message.is_empty());
            // Messages may quote a little of the input (at most 40 characters, each escaped
            // to at most 10), never all of it.
            let chars = e.message.chars().count();
            let start: String = e.message.chars().take(100).collect();
            assert!(chars <= 512, "{chars} characters: {start:?}…");
            if e.code == ErrorCode::InvalidField {
                assert!(e.message.contains('`'), "names the field: {:?}", e.message);
            }
        }
    }
    if let Some(r) = &incoming.reference {
        assert!(
            r.is_i64() || r.is_u64() || r.as_str().is_some_and(|s| s.chars().count() <= 64),
            "{r}"
        );
        assert_eq!(json.as_ref().map(|j| &j["ref"]), Some(r), "echoed verbatim");
    }
}

#[test]
fn mutated_client_messages_parse_to_a_message_or_a_well_formed_error() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut errors) = (0, 0);
    for i in 0..5_000 {
        let seed = rng.pick(MESSAGE_SEEDS);
        let text = if i % 2 == 0 {
            let mut bytes = seed.as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                mutate_bytes(&mut rng, &mut bytes);
            }
            // Text frames are UTF-8 by the time Yoom sees them.
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(seed) else {
                unreachable!("seeds are JSON objects")
            };
            for _ in 0..=rng.below(3) {
                mutate_json(&mut rng, &mut obj);
            }
            Value::Object(obj).to_string()
        };
        check_message_properties(&text);
        match parse_client_message(&text).message {
            Ok(_) => ok += 1,
            Err(_) => errors += 1,
        }
    }
    // The mutations reach both sides, not only the JSON parser's errors.
    assert!(ok > 500 && errors > 500, "{ok} parsed, {errors} refused");
}

/// Inputs cargo-fuzz reported, byte for byte, with what each showed.
#[test]
fn inputs_found_by_cargo_fuzz() {
    // client_message, crash-a578dd86: a `type` of 59 DEL characters. The quoted type is cut to
    // 40 characters, but each is escaped to 6 (`\u{7f}`): 263 characters in all, over the
    // harness' first bound of 200; the bound now allows for escaping.
    let crash_a578dd86 = [
        br#"{"type":""#.as_slice(),
        &[0x7f; 59],
        br#"candidate","pc":"subscribe","candidate":{"candidate":"ve","sdpMLineIndex":-0}}"#,
    ]
    .concat();
    let text = std::str::from_utf8(&crash_a578dd86).unwrap();
    check_message_properties(text);
    let e = parse_client_message(text).message.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.message.matches("\\u{7f}").count(), 40, "{}", e.message);
}

#[test]
fn extreme_messages_parse_without_trouble() {
    let deep = |open: &str, close: &str, n| format!("{}{}", open.repeat(n), close.repeat(n));
    for text in [
        String::new(),
        " ".repeat(MAX_FRAME_BYTES),
        "x".repeat(MAX_FRAME_BYTES + 1),
        deep("[", "]", 100_000),
        deep("{\"a\":", "}", 50_000),
        format!(
            r#"{{"type":"chat","text":"hi","x":{}}}"#,
            deep("[", "]", 10_000)
        ),
        format!(r#"{{"type":"{}"}}"#, "t".repeat(60_000)),
        format!(
            r#"{{"type":"mute","kind":"{}","muted":true}}"#,
            "k".repeat(60_000)
        ),
        format!(
            r#"{{"type":"candidate","pc":"{}","candidate":{{}}}}"#,
            "p".repeat(60_000)
        ),
        r#"{"type":"list_rooms","ref":1e400}"#.to_string(),
        r#"{"type":"list_rooms","ref":-9223372036854775808}"#.to_string(),
        r#"{"type":"list_rooms","ref":18446744073709551615}"#.to_string(),
        r#"{"type":"chat","text":"\ud800"}"#.to_string(),
        "{\"type\":\"chat\",\"text\":\"\u{0}\"}".to_string(),
        r#"{"type":"join","room":"r","type":"leave"}"#.to_string(),
    ] {
        check_message_properties(&text);
    }
}

/// Line-level mutations of an SDP: drop, duplicate, swap, or garble one line, or repeat the
/// last media section.
fn mutate_sdp(rng: &mut Rng, lines: &mut Vec<String>) {
    let at = rng.below(lines.len());
    match rng.below(6) {
        0 if lines.len() > 1 => {
            lines.remove(at);
        }
        1 => {
            let copy = lines[at].clone();
            lines.insert(at, copy);
        }
        2 => {
            let other = rng.below(lines.len());
            lines.swap(at, other);
        }
        3 => {
            let mut bytes = lines[at].clone().into_bytes();
            for _ in 0..=rng.below(3) {
                mutate_bytes(rng, &mut bytes);
            }
            lines[at] = String::from_utf8_lossy(&bytes).replace(['\r', '\n'], "");
        }
        4 => {
            if let Some(start) = lines.iter().rposition(|l| l.starts_with("m=")) {
                let section = lines[start..].to_vec();
                lines.extend(section);
            }
        }
        _ => {
            let line = rng.pick(&[
                "a=rtpmap:96 VP8/90000",
                "a=rtpmap:255 opus/0/0",
                "a=fmtp:96 apt=96",
                "a=ssrc-group:FID 1",
                "a=simulcast:send ;;",
                "a=rid:",
                "a=extmap:0 x",
                "a=mid:",
                "m=video 0 UDP/TLS/RTP/SAVPF",
                "a=group:BUNDLE 0 0 0",
                "c=IN IP4 999.1.1.1",
                "a=setup:holdconn",
            ]);
            lines.insert(at, line.to_string());
        }
    }
}

/// What `MemberMedia::on_publish_offer` does with an offer, on the sans-IO core of the
/// server's connection (as the `sdp_offer` fuzz target does).
fn handle_publish_offer(sdp: &str) {
    let Ok(offer) = RTCSessionDescription::offer(sdp.to_owned()) else {
        return;
    };
    if let Err(e) = check_publish_offer(&offer) {
        assert!(e.starts_with("`sdp`: "), "{e}");
        assert!(e.chars().count() <= 500, "{e}");
        return;
    }
    let mut pc = sans_io_connection(MediaDirection::ReceiveOnly);
    if pc.set_remote_description(Instant::now(), offer).is_err() {
        return;
    }
    if let Ok(answer) = pc.create_answer(None) {
        let _ = pc.set_local_description(Instant::now(), answer);
    }
}

#[test]
fn mutated_sdp_offers_are_answered_or_refused_without_panicking() {
    for seed in SDP_SEEDS {
        handle_publish_offer(seed);
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..400 {
        let mut lines: Vec<String> = rng
            .pick(SDP_SEEDS)
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        for _ in 0..=rng.below(4) {
            mutate_sdp(&mut rng, &mut lines);
        }
        handle_publish_offer(&(lines.join("\r\n") + "\r\n"));
    }
}

/// What a client (webrtc-rs, the load tool's and tests' peer) answers to `offer`.
fn client_answer(offer: RTCSessionDescription) -> String {
    let mut client = sans_io_connection(MediaDirection::Both);
    client
        .set_remote_description(Instant::now(), offer)
        .unwrap();
    let answer = client.create_answer(None).unwrap();
    client
        .set_local_description(Instant::now(), answer.clone())
        .unwrap();
    answer.sdp
}

/// Mutated subscribe answers, applied the way `MemberMedia::on_subscribe_answer` does, to one
/// long-lived subscribe connection: each is refused or applied, never a panic. As on the
/// server, an applied answer is followed by a re-offer; so is a refused one that webrtc-rs
/// dropped the offer for anyway (it can fail half-way through, e.g. on a section without
/// `a=mid`); a connection that then cannot offer (it kept an `a=extmap:0` from the refused
/// answer) is replaced, as the server fails that member's media and the client joins again.
#[test]
fn mutated_subscribe_answers_are_applied_or_refused_without_panicking() {
    let mut server = subscribe_connection();
    let seed = client_answer(server.pending_local_description().unwrap());
    let seed_lines: Vec<String> = seed
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut applied, mut refused, mut offer_dropped, mut poisoned) = (0, 0, 0, 0);
    for _ in 0..300 {
        let mut lines = seed_lines.clone();
        for _ in 0..=rng.below(4) {
            mutate_sdp(&mut rng, &mut lines);
        }
        let Ok(answer) = RTCSessionDescription::answer(lines.join("\r\n") + "\r\n") else {
            refused += 1;
            continue;
        };
        match server.set_remote_description(Instant::now(), answer) {
            Ok(()) => {
                applied += 1;
                if offer(&mut server).is_err() {
                    poisoned += 1;
                    server = subscribe_connection();
                }
            }
            Err(_) => {
                refused += 1;
                if server.pending_local_description().is_none() {
                    offer_dropped += 1;
                    if offer(&mut server).is_err() {
                        poisoned += 1;
                        server = subscribe_connection();
                    }
                }
            }
        }
    }
    eprintln!(
        "{applied} applied, {refused} refused ({offer_dropped} dropping the offer), \
         {poisoned} leaving a connection that cannot offer"
    );
    // Both outcomes happened, so the mutations reach past the parser.
    assert!(
        applied > 0 && refused > 0,
        "{applied} applied, {refused} refused"
    );
    // And the connection is still good for a real answer.
    let answer = client_answer(server.pending_local_description().unwrap());
    server
        .set_remote_description(
            Instant::now(),
            RTCSessionDescription::answer(answer).unwrap(),
        )
        .expect("a well-formed answer after 300 mutated ones");
}
