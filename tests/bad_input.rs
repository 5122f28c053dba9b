//! Bad input, one table row per kind: malformed frames, wrong types, absurd sizes, media
//! messages out of order, hostile SDP, floods, a client that never reads, a socket closed in
//! the middle of a negotiation.
//!
//! Every row runs against its own server. A bystander in room `r` is there first; then a fresh
//! client sends the bad input (from the lobby or from inside `r`). The row states the exact
//! answer (error code, words the message must contain, the `ref` echoed when the message had a
//! valid one) or the documented close; then the client must still work (a chat or `list_rooms`
//! round trip) unless closing is the outcome, and the bystander must have seen nothing but
//! what the row allows and still chat. docs/protocol.md ("Bad input and what the server does")
//! has the same rows.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{test_config, Client, Event, TestServer, STEP};
use futures_util::{SinkExt, StreamExt};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use webrtc::media_stream::track_local::TrackLocal;
use yoom::load::member::local_track;
use yoom::sfu::peer::{build_peer_connection, EventForwarder, PeerOptions};
use yoom::Config;

/// Where the misbehaving client is when it sends its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Connected, in no room.
    Lobby,
    /// In room `r` with the bystander.
    Room,
    /// In room `r`, its publish offer answered (a publish connection exists).
    Publishing,
}

enum Input {
    Text(String),
    Json(Value),
    Binary(Vec<u8>),
    /// A text frame whose payload is not UTF-8 (tungstenite builds no such `Message::Text`, so
    /// it goes out as a raw frame).
    RawText(Vec<u8>),
    /// These bytes straight onto the TCP stream (a frame header and nothing after it).
    RawBytes(Vec<u8>),
    /// This message `count` times back to back, the n-th one with `"ref": n`.
    Repeat(Value, usize),
    /// Joins `r` on a socket with a tiny receive buffer and never reads; the bystander chats.
    NeverRead,
    /// A real publish offer, then at once a close frame (`true`) or a dropped TCP connection.
    OfferThenClose {
        close_frame: bool,
    },
}

enum Expect {
    /// One `error` (with the message's `ref` if it had a valid one); the connection stays.
    Error {
        code: &'static str,
        says: &'static [&'static str],
    },
    /// The input is legal after all: this reply (with the `ref`), and the bystander gets these
    /// broadcasts; the connection stays.
    Reply {
        ty: &'static str,
        others: &'static [&'static str],
    },
    /// One `error`, then the server closes with this code.
    ErrorThenClose {
        code: &'static str,
        says: &'static [&'static str],
        close: u16,
    },
    /// The first copies are answered with this type, then `rate_limited` errors (refs echoed),
    /// then `bye` (`rate_limited`) and close 1008.
    RateLimited(&'static str),
    /// Every copy is answered with this type, in order, with its ref.
    AllAnswered(&'static str),
    /// The server drops the client as a slow consumer; the bystander got every chat.
    DroppedAsSlow,
    /// The member leaves; its peer connection and media task are gone within seconds.
    CleanedUp,
}

impl Expect {
    fn keeps_connection(&self) -> bool {
        matches!(
            self,
            Expect::Error { .. } | Expect::Reply { .. } | Expect::AllAnswered(_)
        )
    }
}

struct Case {
    name: &'static str,
    config: fn() -> Config,
    at: At,
    input: Input,
    expect: Expect,
}

fn lifted_rate_limit() -> Config {
    Config {
        rate_limit_per_sec: 1_000_000,
        rate_limit_burst: 1_000_000,
        ..test_config()
    }
}

fn short_queue() -> Config {
    Config {
        outbound_queue_len: 16,
        ..lifted_rate_limit()
    }
}

/// SDPs derived from a real webrtc-rs offer (VP8 + Opus).
struct Sdps {
    real: String,
    many_sections: String,
    unsupported_codec: String,
}

/// A masked, final text frame header announcing `len` payload bytes (64-bit length form).
fn frame_header(len: u64) -> Vec<u8> {
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header
}

const VALID_CANDIDATE: &str = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host";

fn error(code: &'static str, says: &'static [&'static str]) -> Expect {
    Expect::Error { code, says }
}

fn cases(sdp: &Sdps) -> Vec<Case> {
    let case = |name, at, input, expect| Case {
        name,
        config: test_config,
        at,
        input,
        expect,
    };
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let long = "x".repeat(10_000);
    // A chat frame of exactly 64 KiB + 1 byte.
    let mut over_64k = json!({"type":"chat","ref":1,"text":""}).to_string();
    over_64k.insert_str(
        over_64k.len() - 2,
        &"x".repeat(64 * 1024 + 1 - over_64k.len()),
    );
    assert_eq!(over_64k.len(), 64 * 1024 + 1);
    let offer = |sdp: &str, r: &str| json!({"type":"offer","pc":"publish","sdp":sdp,"ref":r});
    vec![
        // Frames that are not a JSON object.
        case(
            "not JSON",
            At::Lobby,
            Input::Text("{not json".into()),
            error("bad_json", &["not valid JSON"]),
        ),
        case(
            "JSON array",
            At::Lobby,
            Input::Text("[1,2,3]".into()),
            error("bad_json", &["JSON object"]),
        ),
        case(
            "JSON string",
            At::Lobby,
            Input::Text("\"join\"".into()),
            error("bad_json", &["JSON object"]),
        ),
        case(
            "JSON number",
            At::Lobby,
            Input::Text("42".into()),
            error("bad_json", &["JSON object"]),
        ),
        case(
            "10,000 nested arrays",
            At::Lobby,
            Input::Text(nested(10_000)),
            error("bad_json", &["recursion limit"]),
        ),
        case(
            "10,000 nested arrays inside a valid chat",
            At::Room,
            Input::Text(format!(
                r#"{{"type":"chat","text":"hi","ref":2,"x":{}}}"#,
                nested(10_000)
            )),
            error("bad_json", &["recursion limit"]),
        ),
        case(
            "number out of range",
            At::Lobby,
            Input::Text(r#"{"type":"list_rooms","ref":1e400}"#.into()),
            error("bad_json", &["out of range"]),
        ),
        case(
            "lone surrogate escape",
            At::Room,
            Input::Text(r#"{"type":"chat","text":"a\ud800b"}"#.into()),
            error("bad_json", &["not valid JSON", "hex escape"]),
        ),
        case(
            "binary frame",
            At::Lobby,
            Input::Binary(br#"{"type":"list_rooms"}"#.to_vec()),
            error("bad_json", &["binary frames"]),
        ),
        case(
            "invalid UTF-8 in a binary frame",
            At::Room,
            Input::Binary(vec![b'{', 0xff, 0xfe, b'}']),
            error("bad_json", &["binary frames"]),
        ),
        Case {
            name: "invalid UTF-8 in a text frame",
            config: test_config,
            at: At::Room,
            input: Input::RawText(vec![b'{', b'"', 0xff, 0xfe, b'"', b'}']),
            expect: Expect::ErrorThenClose {
                code: "bad_json",
                says: &["UTF-8"],
                close: 1007,
            },
        },
        case(
            "frame of 64 KiB + 1",
            At::Room,
            Input::Text(over_64k),
            error("too_large", &["65537 bytes", "65536 byte limit"]),
        ),
        Case {
            // Refused on its header, before any payload is read: only the header is sent.
            name: "frame header announcing 2 MiB",
            config: test_config,
            at: At::Room,
            input: Input::RawBytes(frame_header(2 * 1024 * 1024)),
            expect: Expect::ErrorThenClose {
                code: "too_large",
                says: &["2097152 bytes", "1048576 byte limit"],
                close: 1009,
            },
        },
        // `type` and `ref`.
        case(
            "missing type",
            At::Lobby,
            Input::Json(json!({"room":"r","ref":1})),
            error("unknown_type", &["missing `type`"]),
        ),
        case(
            "unknown type",
            At::Lobby,
            Input::Json(json!({"type":"teleport","ref":"t"})),
            error("unknown_type", &["\"teleport\""]),
        ),
        case(
            "type not a string",
            At::Lobby,
            Input::Json(json!({"type":["join"],"ref":3})),
            error("unknown_type", &["`type` must be a string"]),
        ),
        case(
            "ref an object",
            At::Lobby,
            Input::Json(json!({"type":"list_rooms","ref":{"a":1}})),
            error("invalid_field", &["`ref`"]),
        ),
        case(
            "ref of 65 characters",
            At::Lobby,
            Input::Json(json!({"type":"list_rooms","ref":"r".repeat(65)})),
            error("invalid_field", &["`ref`", "64 characters"]),
        ),
        // Wrong field types.
        case(
            "room a number",
            At::Lobby,
            Input::Json(json!({"type":"join","room":7,"ref":4})),
            error("invalid_field", &["`room` must be a string"]),
        ),
        case(
            "name an array",
            At::Lobby,
            Input::Json(json!({"type":"set_name","name":["al"],"ref":5})),
            error("invalid_field", &["`name` must be a string"]),
        ),
        case(
            "muted a string",
            At::Room,
            Input::Json(json!({"type":"mute","kind":"audio","muted":"yes","ref":6})),
            error("invalid_field", &["`muted`", "true or false"]),
        ),
        case(
            "mute kind unknown",
            At::Room,
            Input::Json(json!({"type":"mute","kind":"smell","muted":true,"ref":7})),
            error("invalid_field", &["`kind`", "\"smell\""]),
        ),
        case(
            "chat text missing",
            At::Room,
            Input::Json(json!({"type":"chat","ref":8})),
            error("invalid_field", &["`text` is required"]),
        ),
        case(
            "sdp a number",
            At::Room,
            Input::Json(json!({"type":"offer","pc":"publish","sdp":5,"ref":9})),
            error("invalid_field", &["`sdp` must be a string"]),
        ),
        // Names, rooms and chat text.
        case(
            "empty room name",
            At::Lobby,
            Input::Json(json!({"type":"join","room":"","ref":10})),
            error("invalid_field", &["`room`", "must not be empty"]),
        ),
        case(
            "whitespace-only room name",
            At::Lobby,
            Input::Json(json!({"type":"join","room":" \t  ","ref":11})),
            error("invalid_field", &["`room`", "must not be empty"]),
        ),
        case(
            "control character in a room name",
            At::Lobby,
            Input::Json(json!({"type":"join","room":"a\nb","ref":12})),
            error("invalid_field", &["`room`", "control characters"]),
        ),
        case(
            "control character in a name",
            At::Room,
            Input::Json(json!({"type":"set_name","name":"a\u{7}b","ref":13})),
            error("invalid_field", &["`name`", "control characters"]),
        ),
        case(
            "control character in chat",
            At::Room,
            Input::Json(json!({"type":"chat","text":"a\u{0}b","ref":14})),
            error("invalid_field", &["`text`", "control characters"]),
        ),
        case(
            "empty chat",
            At::Room,
            Input::Json(json!({"type":"chat","text":"  ","ref":15})),
            error("invalid_field", &["`text` must not be empty"]),
        ),
        case(
            "10,000-character room",
            At::Lobby,
            Input::Json(json!({"type":"join","room":long,"ref":16})),
            error("invalid_field", &["`room`", "at most 64", "got 10000"]),
        ),
        case(
            "10,000-character name",
            At::Room,
            Input::Json(json!({"type":"set_name","name":long,"ref":17})),
            error("invalid_field", &["`name`", "at most 32", "got 10000"]),
        ),
        case(
            "10,000-character chat",
            At::Room,
            Input::Json(json!({"type":"chat","text":long,"ref":18})),
            error("invalid_field", &["`text`", "at most 2000", "got 10000"]),
        ),
        // Rooms. A repeated join (same name) changes nothing for the others.
        case(
            "duplicate join of the same room",
            At::Room,
            Input::Json(json!({"type":"join","room":"r","name":"bad","ref":19})),
            Expect::Reply {
                ty: "joined",
                others: &[],
            },
        ),
        // Media messages out of order.
        case(
            "offer before join",
            At::Lobby,
            Input::Json(offer(&sdp.real, "o1")),
            error("not_in_room", &["join a room"]),
        ),
        case(
            "offer on the subscribe connection",
            At::Room,
            Input::Json(json!({"type":"offer","pc":"subscribe","sdp":sdp.real,"ref":"o2"})),
            error("invalid_field", &["`pc`", "\"publish\" only"]),
        ),
        case(
            "answer with no offer pending",
            At::Room,
            Input::Json(json!({"type":"answer","pc":"subscribe","sdp":sdp.real,"ref":"a1"})),
            error("invalid_field", &["`sdp`", "no subscribe offer is waiting"]),
        ),
        // Hostile SDP.
        case(
            "SDP garbage",
            At::Room,
            Input::Json(offer("garbage\r\n", "o3")),
            error("invalid_field", &["`sdp`", "not a valid offer"]),
        ),
        case(
            "SDP with 500 m-lines",
            At::Room,
            Input::Json(offer(&sdp.many_sections, "o4")),
            error(
                "invalid_field",
                &["`sdp`", "500 media sections", "at most 16"],
            ),
        ),
        case(
            "SDP with an unsupported codec only",
            At::Room,
            Input::Json(offer(&sdp.unsupported_codec, "o5")),
            error(
                "invalid_field",
                &["`sdp`", "no media section offers a codec", "video/XYZ"],
            ),
        ),
        // Candidates.
        case(
            "candidate for an unknown pc",
            At::Publishing,
            Input::Json(
                json!({"type":"candidate","pc":"sideways","candidate":{"candidate":VALID_CANDIDATE,"sdpMLineIndex":0},"ref":"c1"}),
            ),
            error("invalid_field", &["`pc`", "\"sideways\""]),
        ),
        case(
            "candidate before any publish offer",
            At::Room,
            Input::Json(
                json!({"type":"candidate","pc":"publish","candidate":{"candidate":VALID_CANDIDATE,"sdpMLineIndex":0},"ref":"c2"}),
            ),
            error("invalid_field", &["`pc`", "no publish connection"]),
        ),
        case(
            "candidate garbage",
            At::Publishing,
            Input::Json(
                json!({"type":"candidate","pc":"publish","candidate":{"candidate":"candidate:garbage","sdpMLineIndex":0},"ref":"c3"}),
            ),
            error("invalid_field", &["`candidate`", "not an ICE candidate"]),
        ),
        case(
            "candidate not an object",
            At::Publishing,
            Input::Json(
                json!({"type":"candidate","pc":"publish","candidate":VALID_CANDIDATE,"ref":"c4"}),
            ),
            error("invalid_field", &["`candidate` must be an object"]),
        ),
        case(
            "candidate with a negative m-line index",
            At::Publishing,
            Input::Json(
                json!({"type":"candidate","pc":"publish","candidate":{"candidate":VALID_CANDIDATE,"sdpMLineIndex":-1},"ref":"c5"}),
            ),
            error("invalid_field", &["`candidate.sdpMLineIndex`"]),
        ),
        // Floods.
        case(
            "chat flood",
            At::Room,
            Input::Repeat(json!({"type":"chat","text":"spam"}), 400),
            Expect::RateLimited("chat"),
        ),
        case(
            "3,000 list_rooms",
            At::Lobby,
            Input::Repeat(json!({"type":"list_rooms"}), 3000),
            Expect::RateLimited("rooms"),
        ),
        Case {
            name: "3,000 list_rooms, rate limit lifted",
            config: lifted_rate_limit,
            at: At::Lobby,
            input: Input::Repeat(json!({"type":"list_rooms"}), 3000),
            expect: Expect::AllAnswered("rooms"),
        },
        Case {
            name: "a client that never reads",
            config: short_queue,
            at: At::Lobby,
            input: Input::NeverRead,
            expect: Expect::DroppedAsSlow,
        },
        // Leaving in the middle of a negotiation.
        case(
            "close frame right after a publish offer",
            At::Room,
            Input::OfferThenClose { close_frame: true },
            Expect::CleanedUp,
        ),
        case(
            "TCP dropped right after a publish offer",
            At::Room,
            Input::OfferThenClose { close_frame: false },
            Expect::CleanedUp,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_gets_its_documented_answer() {
    let sdps = Arc::new(sdps().await);
    let table = cases(&sdps);
    assert!(table.len() >= 25, "{} cases", table.len());
    // BAD_INPUT_ROW=<part of a name> runs only the matching rows.
    let only = std::env::var("BAD_INPUT_ROW").ok();
    let mut failed = Vec::new();
    for case in table {
        let name = case.name;
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let sdps = sdps.clone();
        // Each row in its own task, so one failing row does not hide the others.
        let outcome = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(120), run(case, &sdps))
                .await
                .expect("the row finishes in time")
        })
        .await;
        if let Err(e) = outcome {
            eprintln!("FAILED: {name}: {e}");
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "rows failed: {failed:#?}");
}

async fn run(case: Case, sdps: &Sdps) {
    let server = TestServer::with_config((case.config)()).await;
    let mut bystander = server.member("r", "bystander").await;
    // What the bystander alone has: no peer connection yet, its media task. The session
    // starts that task just after sending `joined`, so a scrape right after `joined` can come
    // first; wait for it rather than take a baseline without it.
    wait_metric(&server, "yoom_media_tasks", 1.0).await;
    let baseline = (
        server.metric("yoom_peer_connections").await,
        server.metric("yoom_media_tasks").await,
    );

    if let Input::NeverRead = case.input {
        return never_reads(&server, bystander).await;
    }

    let mut bad = Bad::connect(server.addr).await;
    if case.at != At::Lobby {
        bad.send(json!({"type":"join","room":"r","name":"bad"}))
            .await;
        assert_eq!(bad.next_message().await["type"], "joined");
        let joined = bystander.recv_type("member_joined").await;
        assert_eq!(joined["member"]["id"], bad.id.as_str());
    }
    if case.at == At::Publishing {
        bad.send(json!({"type":"offer","pc":"publish","sdp":sdps.real,"ref":"publish"}))
            .await;
        let answer = bad.next_message().await;
        assert_eq!(
            (&answer["type"], &answer["ref"]),
            (&json!("answer"), &json!("publish"))
        );
    }

    // The bad input, and what the bad client must get.
    let mut bystander_sees: Vec<&str> = Vec::new();
    let in_room = case.at != At::Lobby;
    match (&case.input, &case.expect) {
        (Input::Repeat(msg, count), Expect::RateLimited(answer)) => {
            let answered = flood(&mut bad, msg, *count, answer).await;
            if *answer == "chat" {
                bystander_sees.extend(std::iter::repeat_n("chat", answered));
            }
        }
        (Input::Repeat(msg, count), Expect::AllAnswered(answer)) => {
            // Sent in bursts of 100 and read between them: a client with more requests in
            // flight than its outbound queue holds (256) is a slow consumer however fast it
            // reads (with the default rate limit, no burst is answered beyond 100).
            for burst in 0..count.div_ceil(100) {
                let refs = burst * 100..((burst + 1) * 100).min(*count);
                for i in refs.clone() {
                    let mut m = msg.clone();
                    m["ref"] = json!(i);
                    bad.send(m).await;
                }
                for i in refs {
                    let reply = bad.next_message().await;
                    assert_eq!((&reply["type"], &reply["ref"]), (&json!(answer), &json!(i)));
                }
            }
        }
        (Input::OfferThenClose { close_frame }, Expect::CleanedUp) => {
            bad.send(json!({"type":"offer","pc":"publish","sdp":sdps.real,"ref":"x"}))
                .await;
            if *close_frame {
                let _ = bad.ws.close(None).await;
            }
            drop(bad);
            bystander_sees.push("member_left");
            // Nothing of the member may stay behind: its connection, its media task, its socket.
            wait_metric(&server, "yoom_peer_connections", baseline.0).await;
            wait_metric(&server, "yoom_media_tasks", baseline.1).await;
            wait_metric(&server, "yoom_ws_connections", 1.0).await;
            return check_bystander(&mut bystander, &bystander_sees, None).await;
        }
        (input, Expect::Error { code, says } | Expect::ErrorThenClose { code, says, .. }) => {
            let reference = send_input(&mut bad, input).await;
            let e = bad.next_message().await;
            assert_eq!(e["type"], "error", "{e}");
            assert_eq!(e["code"], *code, "{e}");
            let message = e["message"].as_str().unwrap();
            for word in *says {
                assert!(message.contains(word), "{message:?} lacks {word:?}");
            }
            assert_eq!(e.get("ref"), reference.as_ref(), "ref of {e}");
            if let Expect::ErrorThenClose { close, .. } = case.expect {
                match bad.next_non_broadcast().await {
                    Event::Closed(code) => assert_eq!(code, Some(close)),
                    other => panic!("expected close {close}, got {other:?}"),
                }
                if in_room {
                    bystander_sees.push("member_left");
                }
            }
        }
        (input, Expect::Reply { ty, others }) => {
            let reference = send_input(&mut bad, input).await;
            let reply = bad.next_message().await;
            assert_eq!(reply["type"], *ty, "{reply}");
            assert_eq!(reply.get("ref"), reference.as_ref(), "ref of {reply}");
            // Room broadcasts reach the member itself too.
            for ty in *others {
                assert_eq!(bad.next_message().await["type"], *ty);
            }
            bystander_sees.extend_from_slice(others);
        }
        _ => unreachable!(
            "row {:?} pairs an input with an answer it cannot get",
            case.name
        ),
    }
    if matches!(case.expect, Expect::RateLimited(_)) && in_room {
        bystander_sees.push("member_left");
    }

    let probe = case.expect.keeps_connection().then_some(&mut bad);
    check_bystander(&mut bystander, &bystander_sees, probe).await;
    if case.expect.keeps_connection() {
        // The connection still works: the next thing it gets is the answer to this.
        if in_room {
            bad.send(json!({"type":"chat","text":"still here","ref":"probe"}))
                .await;
            let echo = bad.next_message().await;
            assert_eq!(
                (&echo["type"], &echo["ref"]),
                (&json!("chat"), &json!("probe"))
            );
            let m = bystander.recv_until(|m| m["type"] != "rooms").await;
            assert_eq!(
                (&m["type"], &m["text"]),
                (&json!("chat"), &json!("still here"))
            );
        } else {
            bad.send(json!({"type":"list_rooms","ref":"probe"})).await;
            let rooms = bad.next_message().await;
            assert_eq!(
                rooms,
                json!({"type":"rooms","ref":"probe","rooms":[{"room":"r","count":1}]})
            );
        }
    }
}

/// Sends `input`; returns the `ref` the answer must carry (only a valid one is echoed).
async fn send_input(bad: &mut Bad, input: &Input) -> Option<Value> {
    match input {
        Input::Text(t) => bad.send_raw(Message::text(t.as_str())).await,
        Input::Binary(b) => bad.send_raw(Message::binary(b.clone())).await,
        Input::RawText(bytes) => {
            let frame = Frame::message(bytes.clone(), OpCode::Data(Data::Text), true);
            bad.send_raw(Message::Frame(frame)).await
        }
        Input::RawBytes(bytes) => {
            let MaybeTlsStream::Plain(tcp) = bad.ws.get_mut() else {
                unreachable!("plain ws://")
            };
            tcp.write_all(bytes).await.is_ok()
        }
        Input::Json(v) => {
            bad.send(v.clone()).await;
            return match v.get("ref") {
                Some(r @ Value::Number(_)) => Some(r.clone()),
                Some(Value::String(s)) if s.chars().count() <= 64 => Some(json!(s)),
                _ => None,
            };
        }
        _ => unreachable!("not a single message"),
    };
    None
}

/// Sends `count` copies of `msg` without reading, then reads until the server closes: the
/// first ones answered with `answer`, then `rate_limited`, `bye` and close 1008. Returns how
/// many were answered.
async fn flood(bad: &mut Bad, msg: &Value, count: usize, answer: &str) -> usize {
    for i in 0..count {
        let mut m = msg.clone();
        m["ref"] = json!(i);
        // The server hangs up part way through; what could not be sent any more is moot.
        if !bad.send_raw(Message::text(m.to_string())).await {
            break;
        }
    }
    let (mut answered, mut refused, mut last_ref) = (0, 0, -1i64);
    loop {
        let event = bad.next_non_broadcast().await;
        if std::env::var("BAD_INPUT_DEBUG").is_ok() {
            eprintln!("{event:?}");
        }
        match event {
            Event::Json(m) if m["type"] == "bye" => {
                assert_eq!(m["reason"], "rate_limited");
                break;
            }
            Event::Json(m) => {
                let r = m["ref"].as_i64().unwrap_or_else(|| panic!("no ref on {m}"));
                assert!(r > last_ref, "answers in order: {r} after {last_ref}");
                last_ref = r;
                if m["type"] == answer {
                    answered += 1;
                } else {
                    assert_eq!(
                        (&m["type"], &m["code"]),
                        (&json!("error"), &json!("rate_limited")),
                        "{m}"
                    );
                    assert!(m["message"]
                        .as_str()
                        .unwrap()
                        .contains("messages per second"));
                    refused += 1;
                }
            }
            other => panic!("expected answers and bye, got {other:?}"),
        }
    }
    match bad.next_non_broadcast().await {
        Event::Closed(code) => assert_eq!(code, Some(1008)),
        other => panic!("expected close 1008 after bye, got {other:?}"),
    }
    // The default burst is 100 (plus what 50/s refills while the flood arrives); a run of
    // refusals twice the per-second rate long ends it.
    assert!((100..=150).contains(&answered), "{answered} answered");
    assert!(refused >= 100, "{refused} refused");
    answered
}

/// The bystander must have seen exactly `sees` (types, in order; `rooms` updates aside), and
/// still chat. While it waits, the bad client (if still connected) may get only broadcasts.
async fn check_bystander(bystander: &mut Client, sees: &[&str], bad: Option<&mut Bad>) {
    let mut seen = Vec::new();
    while seen.len() < sees.len() {
        let m = bystander.recv_until(|m| m["type"] != "rooms").await;
        seen.push(m);
    }
    bystander
        .send(json!({"type":"chat","text":"bystander","ref":"b"}))
        .await;
    loop {
        let m = bystander.recv_until(|m| m["type"] != "rooms").await;
        if m["ref"] == "b" {
            break;
        }
        seen.push(m);
    }
    let types: Vec<&str> = seen.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, sees, "the bystander saw {seen:#?}");
    if let Some(bad) = bad {
        if bad.in_room {
            let m = bad.next_message().await;
            assert_eq!(
                (&m["type"], &m["text"]),
                (&json!("chat"), &json!("bystander"))
            );
        }
    }
}

/// The row "a client that never reads": it joins on a socket with a 4 KiB receive buffer
/// while the bystander chats 2,000-character messages, reading its own echoes as it goes.
async fn never_reads(server: &TestServer, mut bystander: Client) {
    let mut stalled = Client::connect_with_tiny_buffer(server.addr).await;
    let stalled_id = stalled.recv_type("hello").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stalled
        .send(json!({"type":"join","room":"r","name":"stalled"}))
        .await;
    assert_eq!(
        bystander.recv_type("member_joined").await["member"]["id"],
        stalled_id.as_str()
    );
    let text = "z".repeat(2000);
    let (mut sent, mut echoes) = (0, 0);
    'chatting: loop {
        assert!(sent < 20_000, "the stalled member was never dropped");
        for _ in 0..10 {
            bystander.send(json!({"type":"chat","text":text})).await;
        }
        sent += 10;
        while echoes < sent {
            let m = bystander.recv_until(|m| m["type"] != "rooms").await;
            match m["type"].as_str() {
                Some("chat") => echoes += 1,
                Some("member_left") if m["id"] == stalled_id.as_str() => break 'chatting,
                _ => panic!("the bystander got {m}"),
            }
        }
    }
    // The rest of the echoes, then silence: every chat reached the bystander.
    while echoes < sent {
        let m = bystander.recv_until(|m| m["type"] != "rooms").await;
        assert_eq!(m["type"], "chat", "{m}");
        echoes += 1;
    }
    // One disconnect, counted once (by the session, when it ends for that reason).
    assert_eq!(
        server
            .metric("yoom_ws_disconnects_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    let r = bystander
        .request(json!({"type":"chat","text":"after"}), json!("after"))
        .await;
    assert_eq!(r["text"], "after");
    // What the stalled client finally reads: chats, then the end of the connection.
    loop {
        match stalled.next_event(STEP).await {
            Event::Json(m) => assert!(
                ["chat", "rooms", "joined", "member_joined"].contains(&m["type"].as_str().unwrap()),
                "{m}"
            ),
            Event::Closed(_) | Event::Error(_) => break,
            Event::Timeout => panic!("the stalled connection was not closed"),
        }
    }
}

async fn wait_metric(server: &TestServer, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let got = server.metric(series).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The misbehaving client: sends whatever it likes and does not mind the server hanging up.
struct Bad {
    id: String,
    in_room: bool,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Bad {
    async fn connect(addr: SocketAddr) -> Bad {
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut bad = Bad {
            id: String::new(),
            in_room: false,
            ws,
        };
        let hello = bad.next_message().await;
        assert_eq!(hello["type"], "hello");
        bad.id = hello["id"].as_str().unwrap().to_owned();
        bad
    }

    async fn send(&mut self, v: Value) {
        if v["type"] == "join" && v["room"] == "r" {
            self.in_room = true;
        }
        assert!(self.send_raw(Message::text(v.to_string())).await, "sent");
    }

    /// False when the connection is gone.
    async fn send_raw(&mut self, m: Message) -> bool {
        matches!(
            tokio::time::timeout(STEP, self.ws.send(m)).await,
            Ok(Ok(()))
        )
    }

    /// The next event that is not a broadcast the bad input has nothing to do with (room
    /// counts, the server's trickled ICE candidates).
    async fn next_non_broadcast(&mut self) -> Event {
        loop {
            let event = match tokio::time::timeout(STEP, self.ws.next()).await {
                Err(_) => Event::Timeout,
                Ok(None) => Event::Closed(None),
                Ok(Some(Err(e))) => Event::Error(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    Event::Json(serde_json::from_str(t.as_str()).expect("server sends JSON"))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    Event::Closed(frame.map(|f| u16::from(f.code)))
                }
                Ok(Some(Ok(_))) => continue,
            };
            match &event {
                Event::Json(m) if m["type"] == "rooms" && m.get("ref").is_none() => continue,
                Event::Json(m) if m["type"] == "candidate" => continue,
                _ => return event,
            }
        }
    }

    async fn next_message(&mut self) -> Value {
        match self.next_non_broadcast().await {
            Event::Json(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// A real offer from a webrtc-rs peer (VP8 and Opus, as `MediaPeer` publishes), without its
/// candidates (nobody answers them; the server's ICE just waits), and SDPs derived from it.
async fn sdps() -> Sdps {
    let (events_tx, _events_rx) = mpsc::unbounded_channel();
    let options = PeerOptions {
        udp_ips: vec!["127.0.0.1".parse().unwrap()],
        ..PeerOptions::default()
    };
    let pc = build_peer_connection(&options, EventForwarder::new(0u8, events_tx), None)
        .await
        .unwrap();
    let video = local_track("s", "cam", RtpCodecKind::Video, "video/VP8", 1).unwrap();
    let audio = local_track("s", "mic", RtpCodecKind::Audio, "audio/opus", 2).unwrap();
    pc.add_track(video as Arc<dyn TrackLocal>).await.unwrap();
    pc.add_track(audio as Arc<dyn TrackLocal>).await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let sdp = pc.local_description().await.unwrap().sdp;
    pc.close().await.unwrap();
    let lines: Vec<&str> = sdp
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with("a=candidate:") && *l != "a=end-of-candidates")
        .collect();
    let real = lines.iter().map(|l| format!("{l}\r\n")).collect::<String>();
    let (session, sections) =
        lines.split_at(lines.iter().position(|l| l.starts_with("m=")).unwrap());
    let video: Vec<&str> = sections
        .iter()
        .take_while(|l| !l.starts_with("m=audio"))
        .copied()
        .collect();
    assert!(video[0].starts_with("m=video"), "{sdp}");

    // Only a made-up codec: the video section with its one payload type remapped to XYZ.
    let mut unsupported_codec = String::new();
    for l in session {
        let l = if l.starts_with("a=group:BUNDLE") {
            "a=group:BUNDLE 0"
        } else {
            l
        };
        unsupported_codec.push_str(&format!("{l}\r\n"));
    }
    for l in &video {
        let l = match l.strip_prefix("a=rtpmap:") {
            Some(rtpmap) => format!("a=rtpmap:{} XYZ/90000", rtpmap.split(' ').next().unwrap()),
            None => l.to_string(),
        };
        unsupported_codec.push_str(&format!("{l}\r\n"));
    }
    assert!(unsupported_codec.contains(" XYZ/90000") && !unsupported_codec.contains("VP8"));

    // 500 media sections: the session part, then the audio section shrunk to what a section
    // needs (ICE, DTLS role and connection data moved up to session level, where SDP allows
    // them) 500 times, so that the offer still fits in one 64 KiB frame.
    let pick = |prefix: &str| *sections.iter().find(|l| l.starts_with(prefix)).unwrap();
    let mut many_sections = String::new();
    for l in session {
        if l.starts_with("a=group:BUNDLE") {
            let mids: Vec<String> = (0..500).map(|i| i.to_string()).collect();
            many_sections.push_str(&format!("a=group:BUNDLE {}\r\n", mids.join(" ")));
        } else {
            many_sections.push_str(&format!("{l}\r\n"));
        }
        if l.starts_with("s=") {
            many_sections.push_str(&format!("{}\r\n", pick("c=")));
        }
    }
    for prefix in ["a=ice-ufrag:", "a=ice-pwd:", "a=setup:"] {
        many_sections.push_str(&format!("{}\r\n", pick(prefix)));
    }
    let opus = sections
        .iter()
        .find(|l| l.starts_with("a=rtpmap:") && l.contains("opus"))
        .unwrap();
    let pt = opus["a=rtpmap:".len()..].split(' ').next().unwrap();
    for mid in 0..500 {
        many_sections.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF {pt}\r\na=mid:{mid}\r\na=rtcp-mux\r\n{opus}\r\na=sendrecv\r\n"
        ));
    }
    let frame = json!({"type":"offer","pc":"publish","sdp":many_sections,"ref":"o4"}).to_string();
    assert!(frame.len() <= 64 * 1024, "{} bytes", frame.len());
    Sdps {
        real,
        many_sections,
        unsupported_codec,
    }
}
