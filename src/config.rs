//! One validated `Config`, merged once at start-up from (highest first) command-line flags,
//! `YOOM_*` environment variables, the TOML file and built-in defaults.
//!
//! Flags and env vars are parsed by clap (`ServeArgs`, every flag has an `env`), the file by
//! serde with unknown keys rejected, so a typo in `yoom.toml` fails loudly instead of being
//! silently ignored. Every error names the offending key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// The file read when `--config` is not given, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/yoom.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The fully merged, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// Serve the web client from this directory instead of the copy embedded in the binary.
    pub web_dir: Option<PathBuf>,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub max_room_members: usize,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    /// Sustained client messages per second per connection.
    pub rate_limit_per_sec: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Messages queued towards one socket before that socket is considered too slow and dropped.
    pub outbound_queue_len: usize,
    /// Addresses media sockets bind to (one host candidate each); empty = automatic.
    pub media_ips: Vec<IpAddr>,
    /// STUN server URLs handed to clients in `joined`.
    pub stun_urls: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            web_dir: None,
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            max_room_members: 100,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            outbound_queue_len: 256,
            media_ips: Vec::new(),
            stun_urls: Vec::new(),
        }
    }
}

/// `yoom serve` flags. Each one also reads `YOOM_<NAME>`; unset ones fall back to the file.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Config file [default: config/yoom.toml if it exists, else built-in defaults]
    #[arg(long, env = "YOOM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP port for HTTP and WebSocket signaling (0 picks a free port) [default: 3000]
    #[arg(long, env = "YOOM_PORT")]
    pub port: Option<u16>,
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, env = "YOOM_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Log filter, e.g. `info` or `yoom=debug,webrtc=warn` [default: info]
    #[arg(long = "log", env = "YOOM_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// Log line format [default: text]
    #[arg(long, env = "YOOM_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Serve the web client from this directory (development) instead of the embedded copy
    #[arg(long, env = "YOOM_WEB_DIR", value_name = "DIR")]
    pub web_dir: Option<PathBuf>,
    /// Most members one room may hold [default: 100]
    #[arg(long, env = "YOOM_MAX_ROOM_MEMBERS", value_name = "N")]
    pub max_room_members: Option<usize>,
    /// Seconds between WebSocket pings [default: 15]
    #[arg(long, env = "YOOM_PING_INTERVAL_SECS", value_name = "SECS")]
    pub ping_interval_secs: Option<u64>,
    /// Seconds of silence after which a client is dropped [default: 45]
    #[arg(long, env = "YOOM_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Sustained messages per second one connection may send [default: 50]
    #[arg(long, env = "YOOM_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Burst of messages allowed above the sustained rate [default: 100]
    #[arg(long, env = "YOOM_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Messages queued towards one slow socket before it is disconnected [default: 256]
    #[arg(long, env = "YOOM_OUTBOUND_QUEUE", value_name = "N")]
    pub outbound_queue: Option<usize>,
    /// IP addresses media binds to, comma-separated [default: loopback when --bind is loopback,
    /// else every non-loopback interface]
    #[arg(
        long,
        env = "YOOM_MEDIA_IPS",
        value_name = "IP,...",
        value_delimiter = ','
    )]
    pub media_ips: Option<Vec<IpAddr>>,
    /// STUN server URLs for clients, comma-separated, e.g. stun:stun.example.org:3478
    #[arg(
        long,
        env = "YOOM_STUN_URLS",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub stun_urls: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    rooms: FileRooms,
    #[serde(default)]
    signaling: FileSignaling,
    #[serde(default)]
    rtc: FileRtc,
    #[serde(default)]
    stun: FileStun,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRtc {
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStun {
    urls: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    bind: Option<String>,
    port: Option<i64>,
    web_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    filter: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRooms {
    max_members: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSignaling {
    ping_interval_secs: Option<i64>,
    idle_timeout_secs: Option<i64>,
    rate_limit: Option<i64>,
    rate_burst: Option<i64>,
    outbound_queue: Option<i64>,
}

impl Config {
    /// Merges flags/env with the config file and validates the result.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
                read_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    /// Parses TOML text as a config file (no flags); used by tests and `load`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(Path::new("<inline>"), text)?;
        Self::merge(&ServeArgs::default(), file)
    }

    fn merge(args: &ServeArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let bind = match (&args.bind, &file.server.bind) {
            (Some(ip), _) => *ip,
            (None, Some(text)) => text.parse().map_err(|_| ConfigError::Invalid {
                key: "server.bind",
                message: format!("`{text}` is not an IP address"),
            })?,
            (None, None) => d.bind,
        };
        let port = match args.port {
            Some(p) => p,
            None => int_in("server.port", file.server.port, 0, 65535)?.map_or(d.port, |p| p as u16),
        };
        let web_dir = args
            .web_dir
            .clone()
            .or(file.server.web_dir)
            .filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = &web_dir {
            if !dir.join("index.html").is_file() {
                return Err(ConfigError::Invalid {
                    key: "server.web_dir",
                    message: format!("{} has no index.html", dir.display()),
                });
            }
        }
        let log_filter = args
            .log_filter
            .clone()
            .or(file.log.filter)
            .unwrap_or(d.log_filter);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(ConfigError::Invalid {
                key: "log.filter",
                message: e.to_string(),
            });
        }
        let log_format = args.log_format.or(file.log.format).unwrap_or(d.log_format);

        let sig = &file.signaling;
        let max_room_members = pick(
            "rooms.max_members",
            args.max_room_members.map(|v| v as i64),
            file.rooms.max_members,
            1,
            10_000,
        )?
        .map_or(d.max_room_members, |v| v as usize);
        let ping_secs = pick(
            "signaling.ping_interval_secs",
            args.ping_interval_secs.map(|v| v as i64),
            sig.ping_interval_secs,
            1,
            3600,
        )?;
        let idle_secs = pick(
            "signaling.idle_timeout_secs",
            args.idle_timeout_secs.map(|v| v as i64),
            sig.idle_timeout_secs,
            2,
            86_400,
        )?;
        let ping_interval = ping_secs.map_or(d.ping_interval, |s| Duration::from_secs(s as u64));
        let idle_timeout = idle_secs.map_or(d.idle_timeout, |s| Duration::from_secs(s as u64));
        if idle_timeout <= ping_interval {
            return Err(ConfigError::Invalid {
                key: "signaling.idle_timeout_secs",
                message: format!(
                    "must be longer than signaling.ping_interval_secs ({}s), got {}s",
                    ping_interval.as_secs(),
                    idle_timeout.as_secs()
                ),
            });
        }
        let rate_limit_per_sec = pick(
            "signaling.rate_limit",
            args.rate_limit.map(i64::from),
            sig.rate_limit,
            1,
            100_000,
        )?
        .map_or(d.rate_limit_per_sec, |v| v as u32);
        let rate_limit_burst = pick(
            "signaling.rate_burst",
            args.rate_burst.map(i64::from),
            sig.rate_burst,
            1,
            1_000_000,
        )?
        .map_or(d.rate_limit_burst, |v| v as u32);
        let outbound_queue_len = pick(
            "signaling.outbound_queue",
            args.outbound_queue.map(|v| v as i64),
            sig.outbound_queue,
            8,
            1_000_000,
        )?
        .map_or(d.outbound_queue_len, |v| v as usize);

        let media_ips = match (&args.media_ips, &file.rtc.ips) {
            (Some(ips), _) => ips.clone(),
            (None, Some(list)) => list
                .iter()
                .map(|text| {
                    text.parse().map_err(|_| ConfigError::Invalid {
                        key: "rtc.ips",
                        message: format!("`{text}` is not an IP address"),
                    })
                })
                .collect::<Result<_, _>>()?,
            (None, None) => d.media_ips,
        };
        if let Some(ip) = media_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid {
                key: "rtc.ips",
                message: format!(
                    "{ip} is not a concrete address (leave the list empty for all interfaces)"
                ),
            });
        }
        let stun_urls = args
            .stun_urls
            .clone()
            .or(file.stun.urls)
            .unwrap_or(d.stun_urls);
        for url in &stun_urls {
            let ok = url
                .strip_prefix("stun:")
                .or_else(|| url.strip_prefix("stuns:"))
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "stun.urls",
                    message: format!("`{url}` is not a stun: or stuns: URL"),
                });
            }
        }

        Ok(Config {
            bind,
            port,
            web_dir,
            log_filter,
            log_format,
            max_room_members,
            ping_interval,
            idle_timeout,
            rate_limit_per_sec,
            rate_limit_burst,
            outbound_queue_len,
            media_ips,
            stun_urls,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        // toml's message already names the key and shows the line; keep it on one line.
        message: e.to_string().trim().replace('\n', " | "),
    })
}

/// Flag/env value if given, else the file's; either must lie in `min..=max`.
fn pick(
    key: &'static str,
    flag: Option<i64>,
    file: Option<i64>,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ConfigError> {
    int_in(key, flag.or(file), min, max)
}

fn int_in(
    key: &'static str,
    v: Option<i64>,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ConfigError> {
    match v {
        Some(n) if n < min || n > max => Err(ConfigError::Invalid {
            key,
            message: format!("must be between {min} and {max}, got {n}"),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_to_the_defaults() {
        let text = include_str!("../config/yoom.toml");
        let from_file = Config::from_toml(text).expect("shipped config is valid");
        let d = Config::default();
        assert_eq!(from_file.port, d.port);
        assert_eq!(from_file.bind, d.bind);
        assert_eq!(from_file.max_room_members, d.max_room_members);
        assert_eq!(from_file.ping_interval, d.ping_interval);
        assert_eq!(from_file.idle_timeout, d.idle_timeout);
        assert_eq!(from_file.rate_limit_per_sec, d.rate_limit_per_sec);
        assert_eq!(from_file.rate_limit_burst, d.rate_limit_burst);
        assert_eq!(from_file.outbound_queue_len, d.outbound_queue_len);
        assert_eq!(from_file.log_filter, d.log_filter);
        assert_eq!(from_file.log_format, d.log_format);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[rooms]\nmax_memberz = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_memberz"), "{err}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let err = Config::from_toml("[rooms]\nmax_members = 0\n").unwrap_err();
        assert!(err.to_string().contains("rooms.max_members"), "{err}");
        let err = Config::from_toml("[server]\nport = 70000\n").unwrap_err();
        assert!(err.to_string().contains("server.port"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml("[server]\nport = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        let err = Config::from_toml("[server]\nbind = \"nope\"\n").unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let args = ServeArgs {
            port: Some(4444),
            max_room_members: Some(7),
            ..Default::default()
        };
        let file: FileConfig =
            toml::from_str("[server]\nport = 5555\n[rooms]\nmax_members = 9\n").unwrap();
        let cfg = Config::merge(&args, file).unwrap();
        assert_eq!(cfg.port, 4444);
        assert_eq!(cfg.max_room_members, 7);
    }

    #[test]
    fn media_settings_are_checked() {
        let cfg = Config::from_toml(
            "[rtc]\nips = [\"127.0.0.1\"]\n[stun]\nurls = [\"stun:stun.example.org:3478\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.media_ips, vec![IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(cfg.stun_urls.len(), 1);
        let err = Config::from_toml("[rtc]\nips = [\"0.0.0.0\"]\n").unwrap_err();
        assert!(err.to_string().contains("rtc.ips"), "{err}");
        let err = Config::from_toml("[stun]\nurls = [\"http://x\"]\n").unwrap_err();
        assert!(err.to_string().contains("stun.urls"), "{err}");
    }

    #[test]
    fn idle_timeout_must_exceed_ping_interval() {
        let err =
            Config::from_toml("[signaling]\nping_interval_secs = 30\nidle_timeout_secs = 20\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("signaling.idle_timeout_secs"),
            "{err}"
        );
    }
}
