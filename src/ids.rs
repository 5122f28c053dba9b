//! Newtype identifiers and validated names shared by every layer.
//!
//! A `RoomId` or `MemberName` can only be built through its `parse`, so code past the signaling
//! edge never sees an unvalidated name.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

/// Opaque member id, unique per server run. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MemberId(Arc<str>);

impl MemberId {
    /// Allocates the next id of this run. Ids are short (base 36) but include a per-run salt so
    /// that ids from an earlier run of the server are not mistaken for live ones by clients.
    pub fn next() -> MemberId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        MemberId(format!("{}{}", run_salt(), base36(n)).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn run_salt() -> &'static str {
    static SALT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SALT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        let mixed = (nanos ^ std::process::id().rotate_left(16)) % (36 * 36 * 36);
        format!("{:0>3}-", base36(u64::from(mixed)))
    })
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    // OK because every byte comes from DIGITS, which is ASCII.
    String::from_utf8(out).expect("ascii")
}

/// Why a name was refused; the text goes to the client inside an `invalid_field` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

fn validated(raw: &str, what: &str, max_chars: usize) -> Result<Arc<str>, NameError> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if len == 0 {
        return Err(NameError(format!("{what} must not be empty")));
    }
    if len > max_chars {
        return Err(NameError(format!(
            "{what} must be at most {max_chars} characters, got {len}"
        )));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(NameError(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(trimmed.into())
}

/// A room's name, which is also its identity: 1–64 characters after trimming, no controls.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomId(Arc<str>);

impl RoomId {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<RoomId, NameError> {
        validated(raw, "room", Self::MAX_CHARS).map(RoomId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A member's display name: 1–32 characters after trimming, no controls.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MemberName(Arc<str>);

impl MemberName {
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<MemberName, NameError> {
        validated(raw, "name", Self::MAX_CHARS).map(MemberName)
    }

    /// What a connection that never set a name is called.
    pub fn anonymous() -> MemberName {
        MemberName("Anonymous".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(RoomId::parse("  team ").unwrap().as_str(), "team");
        assert!(RoomId::parse("   ").is_err());
        assert!(RoomId::parse(&"r".repeat(64)).is_ok());
        assert!(RoomId::parse(&"r".repeat(65)).is_err());
        assert!(
            MemberName::parse(&"é".repeat(32)).is_ok(),
            "counts characters, not bytes"
        );
        assert!(MemberName::parse(&"n".repeat(33)).is_err());
        assert!(MemberName::parse("a\u{7}b").is_err());
        assert!(RoomId::parse("a\nb").is_err());
    }

    #[test]
    fn member_ids_are_unique() {
        let a = MemberId::next();
        let b = MemberId::next();
        assert_ne!(a, b);
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36), "10");
    }
}
