//! One validated `Config`, merged once at start-up from (highest first) command-line flags,
//! `YOOM_*` environment variables, the TOML file and built-in defaults.
//!
//! Flags and env vars are parsed by clap (`ServeArgs`, every flag has an `env`), the file by
//! serde with unknown keys rejected, so a typo in `yoom.toml` fails loudly instead of being
//! silently ignored. Every error names the offending key.

use std::net::IpAddr;
use std::ops::RangeInclusive;
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
    /// The UDP port all media shares (0: one picked at start-up).
    pub udp_port: u16,
    /// Lease each connection its own port from this range instead of sharing `udp_port`.
    pub port_range: Option<RangeInclusive<u16>>,
    /// Addresses announced in ICE candidates instead of the bound ones (1:1 NAT).
    pub public_ips: Vec<IpAddr>,
    /// Learn the public address from the first `stun.urls` server at start-up.
    pub discover_public_ip: bool,
    /// TURN servers handed to clients with fresh credentials in every `joined`.
    pub turn_urls: Vec<String>,
    /// coturn's `static-auth-secret` (`use-auth-secret`); required with `turn_urls`.
    pub turn_secret: Option<Secret>,
    /// How long TURN credentials stay valid.
    pub turn_ttl: Duration,
    /// Bearer token of the admin API and `/admin`; `None` disables both.
    pub admin_token: Option<Secret>,
    /// Serve `/metrics` on this address instead of the main port.
    pub metrics_bind: Option<std::net::SocketAddr>,
    pub auth_mode: AuthMode,
    /// HS256 key of join tokens; required in token mode.
    pub auth_secret: Option<Secret>,
    /// Origins allowed to open `/ws` (browsers send `Origin`); empty = the server's own host.
    pub allowed_origins: Vec<String>,
    /// Most rooms that may exist at once.
    pub max_rooms: usize,
    /// Most WebSocket connections from one IP address at once.
    pub max_connections_per_ip: usize,
}

/// Who may join rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Anyone who reaches the server.
    None,
    /// `join` must carry a token signed with `auth.secret` for that room.
    Token,
}

/// A value that must never be printed (logs, `Debug`, the admin API).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// webrtc-rs' ICE agent warns every check interval (50 ms) while a client has sent no
/// candidates yet — routine, and a flood in any log. Its errors still show.
pub const DEFAULT_LOG_FILTER: &str = "info,rtc_ice::agent=error";

/// Default `rtc.udp_port` (LiveKit uses 7882 for its UDP mux too).
pub const DEFAULT_UDP_PORT: u16 = 7882;

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            web_dir: None,
            log_filter: DEFAULT_LOG_FILTER.into(),
            log_format: LogFormat::Text,
            max_room_members: 100,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            rate_limit_per_sec: 50,
            rate_limit_burst: 100,
            outbound_queue_len: 256,
            media_ips: Vec::new(),
            stun_urls: Vec::new(),
            udp_port: DEFAULT_UDP_PORT,
            port_range: None,
            public_ips: Vec::new(),
            discover_public_ip: false,
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl: Duration::from_secs(86_400),
            admin_token: None,
            metrics_bind: None,
            auth_mode: AuthMode::None,
            auth_secret: None,
            allowed_origins: Vec::new(),
            max_rooms: 1000,
            max_connections_per_ip: 256,
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
    /// Log filter, e.g. `info` or `yoom=debug,webrtc=warn` [default: info,rtc_ice::agent=error]
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
    /// The one UDP port all media uses (0 picks a free one) [default: 7882]
    #[arg(long, env = "YOOM_UDP_PORT", value_name = "PORT")]
    pub udp_port: Option<u16>,
    /// Give each connection its own UDP port from this range instead, e.g. 50000-50099
    #[arg(long, env = "YOOM_PORT_RANGE", value_name = "FIRST-LAST")]
    pub port_range: Option<String>,
    /// Addresses to announce in ICE candidates instead of the bound ones (1:1 NAT, e.g. a
    /// cloud VM's public IP), comma-separated: one for all media addresses, or one each
    #[arg(
        long,
        env = "YOOM_PUBLIC_IPS",
        value_name = "IP,...",
        value_delimiter = ','
    )]
    pub public_ips: Option<Vec<IpAddr>>,
    /// Learn the public IP from the first --stun-urls server at start-up [default: false]
    #[arg(long, env = "YOOM_DISCOVER_PUBLIC_IP", value_name = "BOOL")]
    pub discover_public_ip: Option<bool>,
    /// TURN server URLs for clients, comma-separated, e.g. turn:turn.example.org:3478
    #[arg(
        long,
        env = "YOOM_TURN_URLS",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub turn_urls: Option<Vec<String>>,
    /// Shared secret of the TURN servers (coturn `static-auth-secret`)
    #[arg(
        long,
        env = "YOOM_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub turn_secret: Option<String>,
    /// Seconds TURN credentials stay valid [default: 86400]
    #[arg(long, env = "YOOM_TURN_TTL", value_name = "SECS")]
    pub turn_ttl: Option<u64>,
    /// Bearer token for the admin API (/api) and page (/admin); unset = both disabled
    #[arg(
        long,
        env = "YOOM_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Serve /metrics on this address (e.g. 127.0.0.1:9100) instead of the main port
    #[arg(long, env = "YOOM_METRICS_BIND", value_name = "IP:PORT")]
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// Who may join: `none` (anyone) or `token` (a JWT from `yoom token`) [default: none]
    #[arg(long, env = "YOOM_AUTH_MODE", value_enum)]
    pub auth_mode: Option<AuthMode>,
    /// HS256 secret of join tokens (token mode)
    #[arg(
        long,
        env = "YOOM_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub auth_secret: Option<String>,
    /// Origins allowed to open /ws, comma-separated, e.g. `https://meet.example.org`; `*` for any
    /// [default: the server's own host]
    #[arg(
        long,
        env = "YOOM_ALLOWED_ORIGINS",
        value_name = "ORIGIN,...",
        value_delimiter = ','
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Most rooms at once [default: 1000]
    #[arg(long, env = "YOOM_MAX_ROOMS", value_name = "N")]
    pub max_rooms: Option<usize>,
    /// Most WebSocket connections from one IP address [default: 256]
    #[arg(long, env = "YOOM_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
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
    #[serde(default)]
    turn: FileTurn,
    #[serde(default)]
    admin: FileAdmin,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    auth: FileAuth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: Option<AuthMode>,
    secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    bind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRtc {
    ips: Option<Vec<String>>,
    udp_port: Option<i64>,
    port_range: Option<String>,
    public_ips: Option<Vec<String>>,
    discover_public_ip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTurn {
    urls: Option<Vec<String>>,
    secret: Option<String>,
    ttl: Option<i64>,
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
    allowed_origins: Option<Vec<String>>,
    max_connections_per_ip: Option<i64>,
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
    max_rooms: Option<i64>,
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

        let media_ips = ip_list("rtc.ips", &args.media_ips, &file.rtc.ips)?.unwrap_or(d.media_ips);
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

        let udp_port = pick(
            "rtc.udp_port",
            args.udp_port.map(i64::from),
            file.rtc.udp_port,
            0,
            65535,
        )?
        .map_or(d.udp_port, |v| v as u16);
        let port_range = match args.port_range.as_ref().or(file.rtc.port_range.as_ref()) {
            None => None,
            Some(text) if text.trim().is_empty() => None,
            Some(text) => Some(parse_port_range(text).ok_or_else(|| ConfigError::Invalid {
                key: "rtc.port_range",
                message: format!("`{text}` is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535"),
            })?),
        };
        let public_ips =
            ip_list("rtc.public_ips", &args.public_ips, &file.rtc.public_ips)?.unwrap_or_default();
        if let Some(ip) = public_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::Invalid {
                key: "rtc.public_ips",
                message: format!("{ip} is not an address clients can reach"),
            });
        }
        if !public_ips.is_empty() && public_ips.len() != 1 && public_ips.len() != media_ips.len() {
            return Err(ConfigError::Invalid {
                key: "rtc.public_ips",
                message: format!(
                    "give one address, or one per rtc.ips entry ({} given, {} in rtc.ips)",
                    public_ips.len(),
                    media_ips.len()
                ),
            });
        }
        let discover_public_ip = args
            .discover_public_ip
            .or(file.rtc.discover_public_ip)
            .unwrap_or(d.discover_public_ip);
        if discover_public_ip && stun_urls.is_empty() {
            return Err(ConfigError::Invalid {
                key: "rtc.discover_public_ip",
                message: "needs a STUN server in stun.urls".into(),
            });
        }
        if discover_public_ip && !public_ips.is_empty() {
            return Err(ConfigError::Invalid {
                key: "rtc.discover_public_ip",
                message: "rtc.public_ips is set already; use one or the other".into(),
            });
        }

        let turn_urls = args
            .turn_urls
            .clone()
            .or(file.turn.urls)
            .unwrap_or(d.turn_urls);
        for url in &turn_urls {
            if !is_turn_url(url) {
                return Err(ConfigError::Invalid {
                    key: "turn.urls",
                    message: format!(
                        "`{url}` is not a turn: or turns: URL (turn:HOST[:PORT][?transport=udp|tcp])"
                    ),
                });
            }
        }
        let turn_secret = args
            .turn_secret
            .clone()
            .or(file.turn.secret)
            .filter(|s| !s.is_empty())
            .map(Secret::new);
        if !turn_urls.is_empty() && turn_secret.is_none() {
            return Err(ConfigError::Invalid {
                key: "turn.secret",
                message: "required when turn.urls is set (coturn's static-auth-secret)".into(),
            });
        }
        let turn_ttl = pick(
            "turn.ttl",
            args.turn_ttl.map(|v| v.min(i64::MAX as u64) as i64),
            file.turn.ttl,
            60,
            30 * 86_400,
        )?
        .map_or(d.turn_ttl, |s| Duration::from_secs(s as u64));

        let admin_token = args
            .admin_token
            .clone()
            .or(file.admin.token)
            .filter(|t| !t.is_empty());
        if let Some(token) = &admin_token {
            if token.len() < 16 {
                return Err(ConfigError::Invalid {
                    key: "admin.token",
                    message: "must be at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
                });
            }
        }
        let admin_token = admin_token.map(Secret::new);
        let metrics_bind = match (&args.metrics_bind, &file.metrics.bind) {
            (Some(addr), _) => Some(*addr),
            (None, Some(text)) if text.is_empty() => None,
            (None, Some(text)) => Some(text.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics.bind",
                message: format!("`{text}` is not IP:PORT"),
            })?),
            (None, None) => None,
        };

        let auth_mode = args.auth_mode.or(file.auth.mode).unwrap_or(d.auth_mode);
        let auth_secret = args
            .auth_secret
            .clone()
            .or(file.auth.secret)
            .filter(|s| !s.is_empty());
        if auth_mode == AuthMode::Token {
            match &auth_secret {
                None => {
                    return Err(ConfigError::Invalid {
                        key: "auth.secret",
                        message: "required when auth.mode = \"token\"".into(),
                    })
                }
                Some(s) if s.len() < 32 => {
                    return Err(ConfigError::Invalid {
                        key: "auth.secret",
                        message: "must be at least 32 characters (e.g. `openssl rand -hex 32`)"
                            .into(),
                    })
                }
                Some(_) => {}
            }
        }
        let auth_secret = auth_secret.map(Secret::new);
        let allowed_origins = args
            .allowed_origins
            .clone()
            .or(file.server.allowed_origins)
            .unwrap_or_default();
        for origin in &allowed_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin
                        .trim_end_matches('/')
                        .contains(|c: char| c.is_whitespace())
                    && origin.matches('/').count() == 2);
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "server.allowed_origins",
                    message: format!(
                        "`{origin}` is not an origin like https://meet.example.org[:port] (or `*`)"
                    ),
                });
            }
        }
        let max_rooms = pick(
            "rooms.max_rooms",
            args.max_rooms.map(|v| v as i64),
            file.rooms.max_rooms,
            1,
            1_000_000,
        )?
        .map_or(d.max_rooms, |v| v as usize);
        let max_connections_per_ip = pick(
            "server.max_connections_per_ip",
            args.max_connections_per_ip.map(|v| v as i64),
            file.server.max_connections_per_ip,
            1,
            1_000_000,
        )?
        .map_or(d.max_connections_per_ip, |v| v as usize);

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
            udp_port,
            port_range,
            public_ips,
            discover_public_ip,
            turn_urls,
            turn_secret,
            turn_ttl,
            admin_token,
            metrics_bind,
            auth_mode,
            auth_secret,
            allowed_origins,
            max_rooms,
            max_connections_per_ip,
        })
    }
}

/// Flag/env list if given, else the file's strings parsed as IP addresses.
fn ip_list(
    key: &'static str,
    flag: &Option<Vec<IpAddr>>,
    file: &Option<Vec<String>>,
) -> Result<Option<Vec<IpAddr>>, ConfigError> {
    match (flag, file) {
        (Some(ips), _) => Ok(Some(ips.clone())),
        (None, Some(list)) => list
            .iter()
            .map(|text| {
                text.parse().map_err(|_| ConfigError::Invalid {
                    key,
                    message: format!("`{text}` is not an IP address"),
                })
            })
            .collect::<Result<_, _>>()
            .map(Some),
        (None, None) => Ok(None),
    }
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let (first, last) = text.trim().split_once('-')?;
    let first: u16 = first.trim().parse().ok()?;
    let last: u16 = last.trim().parse().ok()?;
    (first >= 1 && first <= last).then_some(first..=last)
}

/// `turn:` / `turns:` + host (optionally `:port`) + optional `?transport=udp|tcp` (RFC 7065).
fn is_turn_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("turn:")
        .or_else(|| url.strip_prefix("turns:"))
    else {
        return false;
    };
    let (host_port, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let query_ok = match query {
        None => true,
        Some(q) => q == "transport=udp" || q == "transport=tcp",
    };
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if !h.ends_with(']') || h.starts_with('[') => {
            if port.parse::<u16>().is_err() {
                return false;
            }
            h
        }
        _ => host_port,
    };
    query_ok && !host.is_empty() && !host_port.contains(|c: char| c.is_whitespace() || c == '/')
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
        assert_eq!(from_file.udp_port, d.udp_port);
        assert_eq!(from_file.port_range, d.port_range);
        assert_eq!(from_file.public_ips, d.public_ips);
        assert_eq!(from_file.discover_public_ip, d.discover_public_ip);
        assert_eq!(from_file.turn_urls, d.turn_urls);
        assert_eq!(from_file.turn_secret, d.turn_secret);
        assert_eq!(from_file.turn_ttl, d.turn_ttl);
        assert_eq!(from_file.admin_token, d.admin_token);
        assert_eq!(from_file.metrics_bind, d.metrics_bind);
        assert_eq!(from_file.auth_mode, d.auth_mode);
        assert_eq!(from_file.auth_secret, d.auth_secret);
        assert_eq!(from_file.allowed_origins, d.allowed_origins);
        assert_eq!(from_file.max_rooms, d.max_rooms);
        assert_eq!(from_file.max_connections_per_ip, d.max_connections_per_ip);
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
    fn nat_and_turn_settings_are_checked() {
        let cfg = Config::from_toml(
            "[rtc]\nudp_port = 0\nport_range = \"50000-50009\"\npublic_ips = [\"203.0.113.4\"]\n\
             [turn]\nurls = [\"turn:turn.example.org:3478?transport=udp\", \"turns:t.example.org\"]\n\
             secret = \"s3cret\"\nttl = 600\n",
        )
        .unwrap();
        assert_eq!(cfg.udp_port, 0);
        assert_eq!(cfg.port_range, Some(50000..=50009));
        assert_eq!(cfg.public_ips, vec![IpAddr::from([203, 0, 113, 4])]);
        assert_eq!(cfg.turn_urls.len(), 2);
        assert_eq!(cfg.turn_ttl, Duration::from_secs(600));
        assert!(
            !format!("{cfg:?}").contains("s3cret"),
            "the secret leaks into Debug"
        );

        for (toml, key) in [
            ("[rtc]\nport_range = \"9-2\"\n", "rtc.port_range"),
            ("[rtc]\nport_range = \"50000\"\n", "rtc.port_range"),
            ("[rtc]\nudp_port = 70000\n", "rtc.udp_port"),
            ("[rtc]\npublic_ips = [\"nope\"]\n", "rtc.public_ips"),
            ("[rtc]\npublic_ips = [\"0.0.0.0\"]\n", "rtc.public_ips"),
            (
                "[rtc]\ndiscover_public_ip = true\n",
                "rtc.discover_public_ip",
            ),
            ("[turn]\nurls = [\"turn:x.org\"]\n", "turn.secret"),
            (
                "[turn]\nurls = [\"http://x.org\"]\nsecret = \"s\"\n",
                "turn.urls",
            ),
            (
                "[turn]\nurls = [\"turn:x.org:99999\"]\nsecret = \"s\"\n",
                "turn.urls",
            ),
            (
                "[turn]\nurls = [\"turn:x.org?transport=sctp\"]\nsecret = \"s\"\n",
                "turn.urls",
            ),
            ("[turn]\nurls = [\"turn:\"]\nsecret = \"s\"\n", "turn.urls"),
            ("[turn]\nttl = 5\n", "turn.ttl"),
            ("[admin]\ntoken = \"short\"\n", "admin.token"),
            ("[metrics]\nbind = \"9100\"\n", "metrics.bind"),
            ("[auth]\nmode = \"token\"\n", "auth.secret"),
            (
                "[auth]\nmode = \"token\"\nsecret = \"short\"\n",
                "auth.secret",
            ),
            ("[auth]\nmode = \"jwt\"\n", "mode"),
            (
                "[server]\nallowed_origins = [\"meet.example.org\"]\n",
                "server.allowed_origins",
            ),
            (
                "[server]\nallowed_origins = [\"https://x.org/path\"]\n",
                "server.allowed_origins",
            ),
            ("[rooms]\nmax_rooms = 0\n", "rooms.max_rooms"),
            (
                "[server]\nmax_connections_per_ip = 0\n",
                "server.max_connections_per_ip",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
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
