//! The admin API (`/api/rooms…`, docs/api.md) and the `/admin` page: see and control rooms.
//!
//! Off unless `admin.token` is set (every path then answers 404, as if it did not exist). Each
//! request must carry `Authorization: Bearer <token>`; the comparison runs over SHA-1 digests
//! of both sides, so its time depends neither on where they differ nor on the token's length.

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use crate::app::App;
use crate::protocol::{MediaKind, MemberInfo};
use crate::sfu::room::MemberMediaInfo;

/// The `/api` routes, behind the token check.
pub fn api_routes(app: &App) -> Router<App> {
    Router::new()
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(room_details).delete(close_room))
        .route("/api/rooms/{room}/members/{id}", delete(kick))
        .route("/api/rooms/{room}/members/{id}/mute", post(mute))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn require_token(State(app): State<App>, request: Request, next: Next) -> Response {
    let Some(token) = &app.config.admin_token else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 7235 §2.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if !same_secret(presented, token.expose()) {
        let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized");
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

/// Equal in constant time: compares fixed-size digests byte by byte without stopping early.
fn same_secret(presented: &str, expected: &str) -> bool {
    let a = Sha1::digest(presented.as_bytes());
    let b = Sha1::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

async fn list_rooms(State(app): State<App>) -> Response {
    let rooms: Vec<Value> = app
        .registry
        .admin_rooms()
        .into_iter()
        .map(|(room, members, media)| {
            json!({ "room": room.as_str(), "members": members, "tracks": media.track_count() })
        })
        .collect();
    Json(json!({ "rooms": rooms })).into_response()
}

async fn room_details(State(app): State<App>, Path(room): Path<String>) -> Response {
    let Some((members, media)) = app.registry.admin_room(&room) else {
        return error(StatusCode::NOT_FOUND, "no such room");
    };
    let media = media.member_media();
    let members: Vec<Value> = members
        .iter()
        .map(|m| member_json(m, media.get(&m.id)))
        .collect();
    Json(json!({ "room": room, "members": members })).into_response()
}

fn member_json(member: &MemberInfo, media: Option<&MemberMediaInfo>) -> Value {
    let tracks: Vec<Value> = media
        .map(|m| {
            m.tracks
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id.to_string(),
                        "kind": kind_str(t.kind),
                        "codec": t.codec,
                        "bitrate_kbps": round1(t.stats.bitrate_kbps),
                        "packets": t.stats.packets,
                        "bytes": t.stats.bytes,
                        "loss_percent": round1(t.stats.loss_percent),
                        "server_muted": t.server_muted,
                        "subscribers": t.subscribers,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": member.id.as_str(),
        "name": member.name.as_str(),
        "audio_muted": member.audio_muted,
        "video_muted": member.video_muted,
        "server_audio_muted": member.server_audio_muted,
        "server_video_muted": member.server_video_muted,
        "rtt_ms": media.and_then(|m| m.rtt).map(|d| round1(d.as_secs_f64() * 1000.0)),
        "tracks": tracks,
    })
}

fn kind_str(kind: RtpCodecKind) -> &'static str {
    match kind {
        RtpCodecKind::Audio => "audio",
        _ => "video",
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

async fn kick(State(app): State<App>, Path((room, id)): Path<(String, String)>) -> Response {
    if app.registry.kick(&room, &id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no such member in this room")
    }
}

async fn close_room(State(app): State<App>, Path(room): Path<String>) -> Response {
    if app.registry.close_room(&room) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "no such room")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    kind: String,
    muted: bool,
}

async fn mute(
    State(app): State<App>,
    Path((room, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body: MuteBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"kind\":\"audio\"|\"video\",\"muted\":bool}}: {e}"),
            )
        }
    };
    let kind = match body.kind.as_str() {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("`kind` must be \"audio\" or \"video\", not {other:?}"),
            )
        }
    };
    if !app.registry.server_mute(&room, &id, kind, body.muted) {
        return error(StatusCode::NOT_FOUND, "no such member in this room");
    }
    Json(json!({ "id": id, "kind": body.kind, "muted": body.muted })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_matches() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeF", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdef0", "0123456789abcdef"));
        assert!(!same_secret("", "0123456789abcdef"));
    }
}
