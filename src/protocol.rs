//! The signaling contract (`shared/PROTOCOL.md`, extended in `docs/protocol.md`) as Rust types.
//!
//! Client messages are parsed by hand from a `serde_json::Value` rather than derived, because the
//! contract distinguishes `bad_json`, `unknown_type` and `invalid_field` (naming the field), and a
//! reply must echo the message's `ref` even when the rest of the message is wrong.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::{MemberId, MemberName, RoomId};

/// Protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest text frame accepted; larger ones get `too_large` and are otherwise ignored.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 2000;
/// Longest string `ref`, in characters.
pub const MAX_REF_CHARS: usize = 64;
/// Longest SDP accepted (bytes); an SDP near the frame limit is already absurd.
pub const MAX_SDP_BYTES: usize = MAX_FRAME_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownType,
    InvalidField,
    TooLarge,
    NotInRoom,
    RoomFull,
    RateLimited,
    /// The server cannot do this right now (e.g. a media request while media is unavailable).
    Unavailable,
    /// The server is out of a resource this needs (e.g. every media port is in use).
    NoCapacity,
    /// An administrator removed the member; the connection closes.
    Kicked,
    /// A join token is missing, invalid, expired or for another room, or does not allow this.
    Unauthorized,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::Kicked => "kicked",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

/// An error to report to the client that sent a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn field(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidField, message)
    }
}

/// The client's correlation token, echoed verbatim: an integer or a short string.
pub type Ref = Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// Which of a member's two peer connections a media message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PcKind {
    /// Client offers, sends its tracks.
    Publish,
    /// Server offers, sends everyone else's tracks.
    Subscribe,
}

/// A trickled ICE candidate as the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    ListRooms,
    SetName {
        name: MemberName,
    },
    Join {
        room: RoomId,
        name: Option<MemberName>,
        /// A join token (`auth.mode = "token"`).
        token: Option<String>,
    },
    Leave,
    Chat {
        text: String,
    },
    Mute {
        kind: MediaKind,
        muted: bool,
    },
    Offer {
        pc: PcKind,
        sdp: String,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: IceCandidate,
    },
}

impl ClientMessage {
    /// The `type` string, used as a bounded metrics label.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMessage::ListRooms => "list_rooms",
            ClientMessage::SetName { .. } => "set_name",
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave => "leave",
            ClientMessage::Chat { .. } => "chat",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
        }
    }
}

/// A parsed frame: its `ref` (if any) and the message, or the error to answer with.
#[derive(Debug)]
pub struct Incoming {
    pub reference: Option<Ref>,
    pub message: Result<ClientMessage, ProtocolError>,
}

/// Parses one text frame. Never panics, whatever the input.
pub fn parse_client_message(text: &str) -> Incoming {
    if text.len() > MAX_FRAME_BYTES {
        return Incoming {
            reference: None,
            message: Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "frame of {} bytes exceeds the {} byte limit",
                    text.len(),
                    MAX_FRAME_BYTES
                ),
            )),
        };
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Incoming {
                reference: None,
                message: Err(ProtocolError::new(
                    ErrorCode::BadJson,
                    format!("not valid JSON: {e}"),
                )),
            }
        }
    };
    let Value::Object(obj) = value else {
        return Incoming {
            reference: None,
            message: Err(ProtocolError::new(
                ErrorCode::BadJson,
                "each message must be a JSON object with a string field `type`",
            )),
        };
    };
    let reference = match parse_ref(&obj) {
        Ok(r) => r,
        Err(e) => {
            return Incoming {
                reference: None,
                message: Err(e),
            }
        }
    };
    Incoming {
        reference,
        message: parse_body(&obj),
    }
}

fn parse_ref(obj: &Map<String, Value>) -> Result<Option<Ref>, ProtocolError> {
    match obj.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(Value::Number(n.clone()))),
        Some(Value::String(s)) if s.chars().count() <= MAX_REF_CHARS => {
            Ok(Some(Value::String(s.clone())))
        }
        Some(_) => Err(ProtocolError::field(format!(
            "`ref` must be an integer or a string of at most {MAX_REF_CHARS} characters"
        ))),
    }
}

fn parse_body(obj: &Map<String, Value>) -> Result<ClientMessage, ProtocolError> {
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                "`type` must be a string",
            ))
        }
        None => return Err(ProtocolError::new(ErrorCode::UnknownType, "missing `type`")),
    };
    Ok(match ty {
        "list_rooms" => ClientMessage::ListRooms,
        "set_name" => ClientMessage::SetName {
            name: name_field(obj, "name")?,
        },
        "join" => ClientMessage::Join {
            room: RoomId::parse(str_field(obj, "room")?)
                .map_err(|e| ProtocolError::field(format!("`room`: {e}")))?,
            name: match obj.get("name") {
                None | Some(Value::Null) => None,
                Some(_) => Some(name_field(obj, "name")?),
            },
            token: match obj.get("token") {
                None | Some(Value::Null) => None,
                Some(_) => Some(token_field(obj)?),
            },
        },
        "leave" => ClientMessage::Leave,
        "chat" => ClientMessage::Chat {
            text: chat_text(str_field(obj, "text")?)?,
        },
        "mute" => ClientMessage::Mute {
            kind: match str_field(obj, "kind")? {
                "audio" => MediaKind::Audio,
                "video" => MediaKind::Video,
                other => {
                    return Err(ProtocolError::field(format!(
                        "`kind` must be \"audio\" or \"video\", got {:?}",
                        other.chars().take(40).collect::<String>()
                    )))
                }
            },
            muted: match obj.get("muted") {
                Some(Value::Bool(b)) => *b,
                _ => return Err(ProtocolError::field("`muted` must be true or false")),
            },
        },
        "offer" => ClientMessage::Offer {
            pc: pc_field(obj)?,
            sdp: sdp_field(obj)?,
        },
        "answer" => ClientMessage::Answer {
            pc: pc_field(obj)?,
            sdp: sdp_field(obj)?,
        },
        "candidate" => ClientMessage::Candidate {
            pc: pc_field(obj)?,
            candidate: candidate_field(obj)?,
        },
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(ProtocolError::new(
                ErrorCode::UnknownType,
                format!("unknown message type {shown:?}"),
            ));
        }
    })
}

/// Tokens are short: a signed JWT of a few claims. Anything longer is not one of ours.
const MAX_TOKEN_LEN: usize = 4096;

fn token_field(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    let token = str_field(obj, "token")?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ProtocolError::field(format!(
            "`token`: must be 1-{MAX_TOKEN_LEN} characters"
        )));
    }
    Ok(token.to_owned())
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, ProtocolError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ProtocolError::field(format!("`{key}` is required"))),
        Some(_) => Err(ProtocolError::field(format!("`{key}` must be a string"))),
    }
}

fn name_field(obj: &Map<String, Value>, key: &str) -> Result<MemberName, ProtocolError> {
    MemberName::parse(str_field(obj, key)?)
        .map_err(|e| ProtocolError::field(format!("`{key}`: {e}")))
}

fn chat_text(text: &str) -> Result<String, ProtocolError> {
    let chars = text.chars().count();
    if text.trim().is_empty() {
        return Err(ProtocolError::field("`text` must not be empty"));
    }
    if chars > MAX_CHAT_CHARS {
        return Err(ProtocolError::field(format!(
            "`text` must be at most {MAX_CHAT_CHARS} characters, got {chars}"
        )));
    }
    // Line breaks and tabs are part of normal chat; other control characters only serve to
    // confuse terminals and log viewers.
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ProtocolError::field(
            "`text` must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

fn pc_field(obj: &Map<String, Value>) -> Result<PcKind, ProtocolError> {
    match str_field(obj, "pc")? {
        "publish" => Ok(PcKind::Publish),
        "subscribe" => Ok(PcKind::Subscribe),
        other => Err(ProtocolError::field(format!(
            "`pc` must be \"publish\" or \"subscribe\", got {:?}",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn sdp_field(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    let sdp = str_field(obj, "sdp")?;
    if sdp.trim().is_empty() {
        return Err(ProtocolError::field("`sdp` must not be empty"));
    }
    if sdp.len() > MAX_SDP_BYTES {
        return Err(ProtocolError::field("`sdp` is too long"));
    }
    Ok(sdp.to_owned())
}

fn candidate_field(obj: &Map<String, Value>) -> Result<IceCandidate, ProtocolError> {
    let Some(Value::Object(c)) = obj.get("candidate") else {
        return Err(ProtocolError::field(
            "`candidate` must be an object {candidate, sdpMid, sdpMLineIndex}",
        ));
    };
    let candidate = match c.get("candidate") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(ProtocolError::field(
                "`candidate.candidate` must be a string",
            ))
        }
    };
    let sdp_mid = match c.get("sdpMid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ProtocolError::field("`candidate.sdpMid` must be a string")),
    };
    let sdp_mline_index = match c.get("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| u16::try_from(v).ok()) {
            Some(v) => Some(v),
            None => {
                return Err(ProtocolError::field(
                    "`candidate.sdpMLineIndex` must be a small non-negative integer",
                ))
            }
        },
        Some(_) => {
            return Err(ProtocolError::field(
                "`candidate.sdpMLineIndex` must be an integer",
            ))
        }
    };
    let username_fragment = match c.get("usernameFragment") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ProtocolError::field(
                "`candidate.usernameFragment` must be a string",
            ))
        }
    };
    Ok(IceCandidate {
        candidate,
        sdp_mid,
        sdp_mline_index,
        username_fragment,
    })
}

/// A member as the protocol shows it (`MEMBER`).
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub id: MemberId,
    pub name: MemberName,
    /// Muted by the member's client or by an administrator.
    pub audio_muted: bool,
    pub video_muted: bool,
    /// Muted by an administrator (the server does not forward it); only sent when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_audio_muted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub server_video_muted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomCount {
    pub room: RoomId,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatSender {
    pub id: MemberId,
    pub name: MemberName,
}

/// An entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello {
        id: MemberId,
        protocol: u32,
        server: String,
    },
    Ack,
    Error {
        code: ErrorCode,
        message: String,
    },
    Rooms {
        rooms: Vec<RoomCount>,
    },
    Joined {
        room: RoomId,
        #[serde(rename = "self")]
        me: MemberInfo,
        members: Vec<MemberInfo>,
        ice_servers: Vec<IceServer>,
        /// Whether this server forwards media (the client may publish/subscribe).
        media: bool,
    },
    MemberJoined {
        member: MemberInfo,
    },
    MemberLeft {
        id: MemberId,
    },
    MemberUpdated {
        member: MemberInfo,
    },
    Chat {
        from: ChatSender,
        text: String,
        ts: u64,
    },
    Offer {
        pc: PcKind,
        sdp: String,
    },
    Answer {
        pc: PcKind,
        sdp: String,
    },
    Candidate {
        pc: PcKind,
        candidate: IceCandidate,
    },
    /// The member was removed from its room by the server (e.g. its media failed for good).
    Left {
        room: RoomId,
        reason: &'static str,
    },
    /// Sent before the server closes a connection on purpose (shutdown, too slow, flooding).
    Bye {
        reason: &'static str,
    },
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    message: &'a ServerMessage,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Ref>,
}

impl ServerMessage {
    /// Serializes the message, with `ref` when it answers a client message.
    pub fn to_json(&self, reference: Option<&Ref>) -> String {
        // OK because every field is a plain string, number, bool or map with string keys:
        // serializing cannot fail.
        serde_json::to_string(&Envelope {
            message: self,
            reference,
        })
        .expect("server messages always serialize")
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for ServerMessage {
    fn from(e: ProtocolError) -> Self {
        ServerMessage::Error {
            code: e.code,
            message: e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        parse_client_message(text).message.unwrap_err().code
    }

    #[test]
    fn classifies_bad_input() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code("\"hi\""), ErrorCode::BadJson);
        assert_eq!(code("{}"), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"join","room":7}"#), ErrorCode::InvalidField);
        assert_eq!(
            code(r#"{"type":"join","room":"  "}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"mute","kind":"smell","muted":true}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"chat","text":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"list_rooms","ref":{"a":1}}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(&"x".repeat(MAX_FRAME_BYTES + 1)), ErrorCode::TooLarge);
    }

    #[test]
    fn invalid_field_names_the_field() {
        let err = parse_client_message(r#"{"type":"set_name","name":""}"#)
            .message
            .unwrap_err();
        assert!(err.message.contains("name"), "{}", err.message);
        let err = parse_client_message(r#"{"type":"candidate","pc":"publish","candidate":{"candidate":"x","sdpMLineIndex":-1}}"#)
            .message
            .unwrap_err();
        assert!(err.message.contains("sdpMLineIndex"), "{}", err.message);
    }

    #[test]
    fn keeps_ref_even_when_the_body_is_wrong() {
        let inc = parse_client_message(r#"{"type":"join","ref":"abc"}"#);
        assert_eq!(inc.reference, Some(Value::String("abc".into())));
        assert!(inc.message.is_err());
        let inc = parse_client_message(r#"{"type":"nope","ref":42}"#);
        assert_eq!(inc.reference, Some(Value::from(42)));
    }

    #[test]
    fn parses_every_message() {
        let ok = |t: &str| parse_client_message(t).message.unwrap();
        assert_eq!(ok(r#"{"type":"list_rooms"}"#), ClientMessage::ListRooms);
        assert!(
            matches!(ok(r#"{"type":"join","room":" team ","name":"al"}"#),
            ClientMessage::Join { room, name: Some(n), .. } if room.as_str() == "team" && n.as_str() == "al")
        );
        assert!(matches!(
            ok(r#"{"type":"mute","kind":"video","muted":true}"#),
            ClientMessage::Mute {
                kind: MediaKind::Video,
                muted: true
            }
        ));
        assert!(matches!(
            ok(
                r#"{"type":"candidate","pc":"subscribe","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#
            ),
            ClientMessage::Candidate {
                pc: PcKind::Subscribe,
                ..
            }
        ));
    }

    #[test]
    fn serializes_with_ref_and_self() {
        let msg = ServerMessage::Ack;
        assert_eq!(
            msg.to_json(Some(&Value::from(3))),
            r#"{"type":"ack","ref":3}"#
        );
        let err = ServerMessage::error(ErrorCode::RoomFull, "full");
        assert_eq!(
            err.to_json(None),
            r#"{"type":"error","code":"room_full","message":"full"}"#
        );
    }
}
