//! `yoom healthcheck`: one HTTP/1.1 GET against a running server's `/healthz`, for container
//! health checks (the runtime image has no curl).
//!
//! Healthy means a `200` status line within [`HEALTHCHECK_TIMEOUT`]; anything else — refused
//! connection, timeout, another status, a reply that is not HTTP — is unhealthy. Only plain
//! `http://` is spoken: the check runs next to the server, never through a TLS proxy.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The whole check — connect, send, read the status line — must finish within this time.
pub const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The status line is all we read; a server that sends this much without a line end is not
/// speaking HTTP.
const STATUS_LINE_MAX_BYTES: usize = 1024;

/// `yoom healthcheck` flags.
#[derive(Debug, Default, Args)]
pub struct HealthcheckArgs {
    /// URL to check [default: http://<YOOM_BIND or 127.0.0.1>:<YOOM_PORT or 3000>/healthz]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("invalid {key} {value:?} (pass --url instead)")]
    InvalidEnv { key: &'static str, value: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP response: {0:?}")]
    NotHttp(String),
    #[error("status {0}")]
    Status(u16),
}

/// The URL to check: `--url`, else `/healthz` on the address `yoom serve` would listen on given
/// the same `YOOM_BIND` and `YOOM_PORT` (a wildcard bind is reached through loopback).
///
/// `env` looks up one variable; `std::env::var(..).ok()` in the binary, a map in tests.
pub fn target_url(
    args: &HealthcheckArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, HealthError> {
    if let Some(url) = &args.url {
        return Ok(url.clone());
    }
    // An empty variable (`YOOM_PORT=` passed through by a compose file) counts as unset.
    let env = |key| env(key).filter(|v: &String| !v.trim().is_empty());
    let port: u16 = match env("YOOM_PORT") {
        None => 3000,
        Some(v) => match v.trim().parse() {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(HealthError::InvalidEnv {
                    key: "YOOM_PORT",
                    value: v,
                })
            }
        },
    };
    let ip: IpAddr = match env("YOOM_BIND") {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(v) => match v.trim().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            Ok(IpAddr::V6(a)) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            Ok(a) => a,
            Err(_) => {
                return Err(HealthError::InvalidEnv {
                    key: "YOOM_BIND",
                    value: v,
                })
            }
        },
    };
    let host = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    Ok(format!("http://{host}:{port}/healthz"))
}

/// A parsed `http://host[:port][/path]`.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    /// `host[:port]` as written, for the `Host` header.
    authority: &'a str,
    /// Host name or IP without IPv6 brackets, for connecting.
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Target<'_>, HealthError> {
    let invalid = |reason| HealthError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("junk after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse().map_err(|_| invalid("bad port"))?,
    };
    if path
        .chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err(invalid("whitespace in path"));
    }
    Ok(Target {
        authority,
        host,
        port,
        path,
    })
}

/// The status code of an HTTP/1.x status line such as `HTTP/1.1 200 OK`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// GETs `url`; `Ok` only for a `200` answer within `timeout`.
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthError> {
    let target = parse_url(url)?;
    match tokio::time::timeout(timeout, get_status(&target)).await {
        Err(_) => Err(HealthError::Timeout(timeout)),
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(code)) => Err(HealthError::Status(code)),
        Ok(Err(e)) => Err(e),
    }
}

async fn get_status(target: &Target<'_>) -> Result<u16, HealthError> {
    let mut stream = TcpStream::connect((target.host, target.port)).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: yoom-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).await?;

    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() >= STATUS_LINE_MAX_BYTES {
            return Err(HealthError::NotHttp(lossy_prefix(&buf)));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HealthError::NotHttp(lossy_prefix(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end]);
    parse_status(&line).ok_or_else(|| HealthError::NotHttp(lossy_prefix(&buf[..line_end])))
}

/// The first bytes of a bad reply, for the error message.
fn lossy_prefix(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn url_from(args: HealthcheckArgs, vars: &[(&str, &str)]) -> Result<String, HealthError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        target_url(&args, |k| vars.get(k).cloned())
    }

    #[test]
    fn default_url_follows_bind_and_port() {
        let none = HealthcheckArgs::default;
        assert_eq!(
            url_from(none(), &[]).unwrap(),
            "http://127.0.0.1:3000/healthz"
        );
        assert_eq!(
            url_from(none(), &[("YOOM_PORT", "8080"), ("YOOM_BIND", "0.0.0.0")]).unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            url_from(none(), &[("YOOM_BIND", "::")]).unwrap(),
            "http://[::1]:3000/healthz"
        );
        assert_eq!(
            url_from(none(), &[("YOOM_BIND", "10.1.2.3")]).unwrap(),
            "http://10.1.2.3:3000/healthz"
        );
        assert_eq!(
            url_from(none(), &[("YOOM_PORT", ""), ("YOOM_BIND", "")]).unwrap(),
            "http://127.0.0.1:3000/healthz"
        );
        assert!(url_from(none(), &[("YOOM_PORT", "0")]).is_err());
        assert!(url_from(none(), &[("YOOM_PORT", "http")]).is_err());
        assert!(url_from(none(), &[("YOOM_BIND", "localhost")]).is_err());
        let url = HealthcheckArgs {
            url: Some("http://h:1/x".into()),
        };
        assert_eq!(
            url_from(url, &[("YOOM_PORT", "8080")]).unwrap(),
            "http://h:1/x"
        );
    }

    #[test]
    fn parses_urls() {
        let t = parse_url("http://127.0.0.1:3000/healthz").unwrap();
        assert_eq!(
            t,
            Target {
                authority: "127.0.0.1:3000",
                host: "127.0.0.1",
                port: 3000,
                path: "/healthz"
            }
        );
        let t = parse_url("http://[::1]:8080/healthz").unwrap();
        assert_eq!((t.host, t.port, t.authority), ("::1", 8080, "[::1]:8080"));
        let t = parse_url("http://example.org").unwrap();
        assert_eq!((t.host, t.port, t.path), ("example.org", 80, "/"));
        let t = parse_url("http://[::1]/").unwrap();
        assert_eq!((t.host, t.port), ("::1", 80));
        for bad in [
            "https://example.org/",
            "example.org",
            "http:///healthz",
            "http://h:port/",
            "http://h:99999/",
            "http://[::1/",
            "http://[::1]x/",
            "http://h/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/1.1 404"), Some(404));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status(""), None);
    }
}
