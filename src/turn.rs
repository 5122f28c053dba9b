//! Ephemeral TURN credentials in coturn's `use-auth-secret` scheme (the "TURN REST API"):
//! username `<unix expiry>:<member id>`, password `base64(HMAC-SHA1(secret, username))`. The
//! TURN server recomputes the password from its copy of the secret and refuses the username
//! once its expiry has passed, so nothing is stored and a leaked credential dies on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub struct TurnCredentials {
    pub username: String,
    pub password: String,
}

/// Credentials for `member` valid until `now + ttl`.
pub fn credentials(secret: &str, member: &str, ttl: Duration, now: SystemTime) -> TurnCredentials {
    let expiry = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs();
    let username = format!("{expiry}:{member}");
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    TurnCredentials { username, password }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_coturn_rest_api_scheme() {
        // Expected value computed independently (Python: hmac.new(secret, user, sha1), base64).
        let now = UNIX_EPOCH + Duration::from_secs(1_699_999_400);
        let c = credentials("north-secret", "m42", Duration::from_secs(600), now);
        assert_eq!(c.username, "1700000000:m42");
        assert_eq!(c.password, "chLEQfAok9Rl1PI1e5MIndXjdOU=");
    }

    #[test]
    fn another_secret_or_member_gives_another_password() {
        let now = UNIX_EPOCH + Duration::from_secs(1_699_999_400);
        let ttl = Duration::from_secs(600);
        let a = credentials("north-secret", "m42", ttl, now);
        assert_ne!(
            a.password,
            credentials("south-secret", "m42", ttl, now).password
        );
        assert_ne!(
            a.password,
            credentials("north-secret", "m43", ttl, now).password
        );
    }
}
