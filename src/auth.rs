//! Join tokens (`auth.mode = "token"`): HS256 JSON Web Tokens signed with `auth.secret`,
//! claims `room`, `name`, `exp` and optional `can_publish`. `yoom token` mints them; `join`
//! must carry one for the room it names.
//!
//! Only HS256 is accepted — the algorithm is fixed here, never taken from the token's header,
//! so neither `alg: none` nor an algorithm swap can get a token past the check.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// `yoom token` arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The room the token admits to
    #[arg(long)]
    pub room: String,
    /// The member's name (shown to the others)
    #[arg(long)]
    pub name: String,
    /// How long the token stays valid: 90s, 30m, 1h, 2d
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// The member may only watch and listen, not publish
    #[arg(long)]
    pub no_publish: bool,
    /// The signing secret [default: auth.secret from YOOM_AUTH_SECRET or the config file]
    #[arg(long, env = "YOOM_AUTH_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Config file to read auth.secret from [default: config/yoom.toml]
    #[arg(long, env = "YOOM_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub room: String,
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default = "publish_by_default", skip_serializing_if = "Clone::clone")]
    pub can_publish: bool,
}

fn publish_by_default() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a token (expected header.payload.signature)")]
    Malformed,
    #[error("only HS256 tokens are accepted")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("claims are not {{room, name, exp[, can_publish]}}")]
    Claims,
    #[error("token expired")]
    Expired,
    #[error("token is for another room")]
    WrongRoom,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

fn mac(secret: &str) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// A token for `claims`, signed with `secret`.
pub fn mint(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    // OK because Claims is plain strings, numbers and a bool.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Claims for `room`, `name`, valid for `ttl` from `now`.
pub fn claims_for(
    room: &str,
    name: &str,
    ttl: Duration,
    can_publish: bool,
    now: SystemTime,
) -> Claims {
    Claims {
        room: room.to_owned(),
        name: name.to_owned(),
        exp: now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs(),
        can_publish,
    }
}

/// The claims of `token` if it is signed with `secret`, unexpired at `now` and for `room`.
pub fn verify(
    token: &str,
    secret: &str,
    room: &str,
    now: SystemTime,
) -> Result<Claims, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(TokenError::Algorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(secret);
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::Signature)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Claims)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    if claims.room != room {
        return Err(TokenError::WrongRoom);
    }
    Ok(claims)
}

/// `1h`, `30m`, `45s`, `2d` or plain seconds.
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-long-enough-for-hs256-use";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_minted_token_verifies_for_its_room_only() {
        let claims = claims_for("team", "alice", Duration::from_secs(3600), true, now());
        let token = mint(&claims, SECRET);
        assert_eq!(verify(&token, SECRET, "team", now()), Ok(claims));
        assert_eq!(
            verify(&token, SECRET, "other", now()),
            Err(TokenError::WrongRoom)
        );
        assert_eq!(
            verify(&token, "another-secret", "team", now()),
            Err(TokenError::Signature)
        );
        let later = now() + Duration::from_secs(3600);
        assert_eq!(
            verify(&token, SECRET, "team", later),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn matches_an_independently_made_hs256_token() {
        // Made with Python: base64url(header) . base64url(payload) . base64url(HMAC-SHA256).
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoidGVhbSIsIm5hbWUiOiJhbGljZSIsImV4cCI6MTgwMDAwMzYwMCwiY2FuX3B1Ymxpc2giOmZhbHNlfQ.W10MlQaMf2HFbFMXCpl4lALS1UTMjImiHAfs0ThX46s";
        let claims = verify(token, SECRET, "team", now()).unwrap();
        assert_eq!(claims.name, "alice");
        assert!(!claims.can_publish);
    }

    #[test]
    fn tampering_and_other_algorithms_are_refused() {
        let token = mint(
            &claims_for("team", "bob", Duration::from_secs(60), true, now()),
            SECRET,
        );
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(r#"{"room":"team","name":"admin","exp":1900000000}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&forged, SECRET, "team", now()),
            Err(TokenError::Signature)
        );
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert_eq!(
            verify(&unsigned, SECRET, "team", now()),
            Err(TokenError::Algorithm)
        );
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &format!("{}.{}", parts[0], parts[1]),
        ] {
            assert!(verify(garbage, SECRET, "team", now()).is_err(), "{garbage}");
        }
    }

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Some(Duration::from_secs(172_800)));
        for bad in ["", "h", "1x", "-1h", "0", "1.5h"] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
    }
}
