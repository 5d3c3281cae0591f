//! Configuration: a raw, serde-deserialized file, overlaid by environment
//! variables and then command-line flags (flags win), turned once into a
//! validated [`Config`] whose fields have their final types. Nothing
//! downstream re-checks a value; a bad one stops the start here with a
//! message naming its key.

mod cli;
mod raw;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cli::{Cli, CliCommand, Overrides};
pub use raw::{RawAuth, RawConfig, RawFanout, RawHistory, RawLimits, RawRedis, RawServer};

use crate::outbox::Overflow;

/// The JWT secret shipped in `config/tickwire.toml`; a server using it
/// warns at start, since anyone can mint tokens with it.
pub const DEV_JWT_SECRET: &str = "dev-only-jwt-secret-change-me";
/// The largest `limits.max_publish_bytes` accepted (8 MiB).
pub const MAX_PUBLISH_BYTES_LIMIT: usize = 8 * 1024 * 1024;

/// The publisher key shipped in `config/tickwire.toml`.
pub const DEV_API_KEY: &str = "dev-only-api-key-change-me";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
}

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, why: why.into() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration every part of the server reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub log_format: LogFormat,
    /// permessage-deflate is agreed with subscribers that offer it.
    pub compression: bool,
    /// Payloads shorter than this go uncompressed on a deflate socket.
    pub compression_min_bytes: u16,
    pub jwt_secret: String,
    pub api_keys: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub allow_anonymous_market_data: bool,
    /// Tokens whose `exp` lies further ahead than this are refused.
    pub max_token_ttl: Duration,
    pub max_connections: NonZeroUsize,
    /// `None`: no per-IP limit.
    pub max_connections_per_ip: Option<NonZeroUsize>,
    pub max_message_bytes: NonZeroUsize,
    pub max_publish_bytes: NonZeroUsize,
    pub max_subscriptions: NonZeroUsize,
    pub commands_per_second: f64,
    pub command_burst: u32,
    pub rate_limit_strikes: u32,
    pub outbound_queue_frames: NonZeroUsize,
    /// The same queue's bound in bytes (payloads, answers and control frames).
    pub outbound_queue_bytes: NonZeroUsize,
    pub market_data_overflow: Overflow,
    /// `None`: publishers are not rate limited.
    pub publishes_per_second_per_key: Option<f64>,
    pub publish_burst: u32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    pub history_messages: NonZeroUsize,
    pub history_max_age: Duration,
    pub max_unread_per_user: NonZeroUsize,
    pub shards: NonZeroUsize,
    pub ring_capacity: NonZeroUsize,
    pub redis_url: Option<String>,
    pub ingest_channel: String,
}

impl Config {
    /// Reads the file (the given one must exist; the default one may not),
    /// applies the overrides and validates everything.
    pub fn load(o: &Overrides) -> Result<Config, ConfigError> {
        let default_path = Path::new("config/tickwire.toml");
        let raw = match &o.config {
            Some(path) => read_file(path)?,
            None if default_path.exists() => read_file(default_path)?,
            None => RawConfig::default(),
        };
        Config::from_raw(raw, o)
    }

    pub fn from_raw(raw: RawConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let listen_text = pick(&o.listen, raw.server.listen, "127.0.0.1:8000".into());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|e| invalid("server.listen", format!("`{listen_text}` is not an address: {e}")))?;
        let log_format = match pick(&o.log_format, raw.server.log_format, "text".into()).as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "server.log_format",
                    format!("`{other}` is not text or json"),
                ))
            }
        };
        let compression = match pick(&o.compression, raw.server.compression, "auto".into()).as_str() {
            "auto" => true,
            "off" => false,
            other => {
                return Err(invalid(
                    "server.compression",
                    format!("`{other}` is not auto or off"),
                ))
            }
        };
        let compression_min_bytes = pick(&o.compression_min_bytes, raw.server.compression_min_bytes, 256);
        // At most 64 KiB - 1: kept in two bytes of every connection's outbox.
        let compression_min_bytes = u16::try_from(compression_min_bytes)
            .map_err(|_| invalid("server.compression_min_bytes", "must be at most 65535"))?;
        let jwt_secret = pick(&o.jwt_secret, raw.auth.jwt_secret, DEV_JWT_SECRET.into());
        if jwt_secret.len() < 16 {
            return Err(invalid("auth.jwt_secret", "must be at least 16 bytes"));
        }
        let api_keys = pick(&o.api_keys, raw.auth.api_keys, vec![DEV_API_KEY.into()]);
        if let Some(k) = api_keys.iter().find(|k| k.len() < 8) {
            return Err(invalid(
                "auth.api_keys",
                format!(
                    "key `{}…` is shorter than 8 bytes",
                    k.chars().take(2).collect::<String>()
                ),
            ));
        }
        let allowed_origins = pick(&o.allowed_origins, raw.auth.allowed_origins, Vec::new());
        for origin in &allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return Err(invalid(
                    "auth.allowed_origins",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        let redis_url = pick(&o.redis, raw.redis.url, String::new());
        let redis_url = (!redis_url.is_empty()).then_some(redis_url);
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+cluster://"))
            {
                return Err(invalid("redis.url", format!("`{url}` is not a redis:// URL")));
            }
        }
        let l = raw.limits;
        let shards = pick(&o.shards, raw.fanout.shards, 0);
        let shards = if shards == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        } else {
            shards
        };
        let max_connections_per_ip = pick(&o.max_connections_per_ip, l.max_connections_per_ip, 0);
        let commands_per_second = pick(&o.commands_per_second, l.commands_per_second, 50.0);
        if !(commands_per_second > 0.0 && commands_per_second.is_finite()) {
            return Err(invalid("limits.commands_per_second", "must be a positive number"));
        }
        let command_burst = pick(&o.command_burst, l.command_burst, 100);
        if command_burst == 0 {
            return Err(invalid("limits.command_burst", "must be at least 1"));
        }
        let market_data_overflow =
            match pick(&o.market_data_overflow, l.market_data_overflow, "conflate".into()).as_str() {
                "conflate" => Overflow::Conflate,
                "close" => Overflow::Close,
                other => {
                    return Err(invalid(
                        "limits.market_data_overflow",
                        format!("`{other}` is not conflate or close"),
                    ))
                }
            };
        let max_publish_bytes = nonzero(
            "limits.max_publish_bytes",
            pick(&o.max_publish_bytes, l.max_publish_bytes, 1024 * 1024),
        )?;
        if max_publish_bytes.get() > MAX_PUBLISH_BYTES_LIMIT {
            // A subscriber's write buffer holds at most 16 MiB: an update must fit in it twice over.
            return Err(invalid(
                "limits.max_publish_bytes",
                format!("must be at most {MAX_PUBLISH_BYTES_LIMIT}"),
            ));
        }
        let publishes_per_second_per_key = pick(
            &o.publishes_per_second_per_key,
            l.publishes_per_second_per_key,
            0.0,
        );
        if !(publishes_per_second_per_key >= 0.0 && publishes_per_second_per_key.is_finite()) {
            return Err(invalid(
                "limits.publishes_per_second_per_key",
                "must be a number, 0 for no limit",
            ));
        }
        let publish_burst = pick(&o.publish_burst, l.publish_burst, 10_000);
        if publish_burst == 0 {
            return Err(invalid("limits.publish_burst", "must be at least 1"));
        }
        let max_message_bytes = nonzero(
            "limits.max_message_bytes",
            pick(&o.max_message_bytes, l.max_message_bytes, 64 * 1024),
        )?;
        if max_message_bytes.get() < 256 {
            return Err(invalid("limits.max_message_bytes", "must be at least 256"));
        }
        let outbound_queue_bytes = nonzero(
            "limits.outbound_queue_bytes",
            pick(&o.outbound_queue_bytes, l.outbound_queue_bytes, 8 * 1024 * 1024),
        )?;
        if outbound_queue_bytes.get() < 2 * max_publish_bytes.get() {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                format!(
                    "must be at least twice limits.max_publish_bytes ({}), so that any update fits",
                    2 * max_publish_bytes.get()
                ),
            ));
        }
        let rate_limit_strikes = pick(&o.rate_limit_strikes, l.rate_limit_strikes, 20);
        if rate_limit_strikes == 0 {
            return Err(invalid("limits.rate_limit_strikes", "must be at least 1"));
        }
        Ok(Config {
            listen,
            drain_timeout: secs(
                "server.drain_timeout_secs",
                pick(&o.drain_timeout_secs, raw.server.drain_timeout_secs, 10.0),
            )?,
            handshake_timeout: secs(
                "server.handshake_timeout_secs",
                pick(&o.handshake_timeout_secs, raw.server.handshake_timeout_secs, 10.0),
            )?,
            ping_interval: secs(
                "server.ping_interval_secs",
                pick(&o.ping_interval_secs, raw.server.ping_interval_secs, 30.0),
            )?,
            idle_timeout: secs(
                "server.idle_timeout_secs",
                pick(&o.idle_timeout_secs, raw.server.idle_timeout_secs, 90.0),
            )?,
            log_format,
            compression,
            compression_min_bytes,
            jwt_secret,
            api_keys,
            allowed_origins,
            allow_anonymous_market_data: pick(
                &o.allow_anonymous_market_data,
                raw.auth.allow_anonymous_market_data,
                false,
            ),
            max_connections: nonzero(
                "limits.max_connections",
                pick(&o.max_connections, l.max_connections, 200_000),
            )?,
            max_connections_per_ip: NonZeroUsize::new(max_connections_per_ip),
            max_message_bytes,
            max_publish_bytes,
            max_subscriptions: nonzero(
                "limits.max_subscriptions",
                pick(&o.max_subscriptions, l.max_subscriptions, 200),
            )?,
            commands_per_second,
            command_burst,
            rate_limit_strikes,
            outbound_queue_bytes,
            idempotency_window: secs(
                "limits.idempotency_window_secs",
                pick(&o.idempotency_window_secs, l.idempotency_window_secs, 300.0),
            )?,
            max_token_ttl: secs(
                "auth.max_token_ttl_secs",
                pick(&o.max_token_ttl_secs, raw.auth.max_token_ttl_secs, 86_400.0),
            )?,
            outbound_queue_frames: nonzero(
                "limits.outbound_queue_frames",
                pick(&o.outbound_queue_frames, l.outbound_queue_frames, 4096),
            )?,
            market_data_overflow,
            publishes_per_second_per_key: (publishes_per_second_per_key > 0.0)
                .then_some(publishes_per_second_per_key),
            publish_burst,
            history_messages: nonzero(
                "history.messages",
                pick(&o.history_messages, raw.history.messages, 1000),
            )?,
            history_max_age: secs(
                "history.max_age_secs",
                pick(&o.history_max_age_secs, raw.history.max_age_secs, 3600.0),
            )?,
            max_unread_per_user: nonzero(
                "history.max_unread_per_user",
                pick(&o.max_unread_per_user, raw.history.max_unread_per_user, 1000),
            )?,
            shards: nonzero("fanout.shards", shards)?,
            ring_capacity: nonzero(
                "fanout.ring_capacity",
                pick(&o.ring_capacity, raw.fanout.ring_capacity, 8_192),
            )?,
            redis_url,
            ingest_channel: pick(&o.ingest_channel, raw.redis.ingest_channel, "rt:ingest".into()),
        })
    }

    /// The warnings an operator must see at start: development secrets.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.jwt_secret == DEV_JWT_SECRET {
            w.push(
                "the JWT secret is the development default: anyone can mint tokens. Set TICKWIRE_JWT_SECRET."
                    .to_string(),
            );
        }
        if self.api_keys.iter().any(|k| k == DEV_API_KEY) {
            w.push(
                "an API key is the development default: anyone can publish. Set TICKWIRE_API_KEYS."
                    .to_string(),
            );
        }
        if self.api_keys.is_empty() {
            w.push("no API keys are configured: nobody can publish.".to_string());
        }
        if self.allow_anonymous_market_data {
            w.push("anonymous subscribers may use /ws/market-data/.".to_string());
        }
        w
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn pick<T: Clone>(flag: &Option<T>, file: Option<T>, default: T) -> T {
    flag.clone().or(file).unwrap_or(default)
}

fn nonzero(key: &'static str, n: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(n).ok_or_else(|| invalid(key, "must be at least 1"))
}

fn secs(key: &'static str, s: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(key, format!("`{s}` is not a positive number of seconds")))
}

/// A URL fit for logs: a password in it is replaced by `***`.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Parses a token lifetime: plain seconds, or a humantime duration.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_flags_win_over_the_file() {
        let raw: RawConfig = toml::from_str("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let c = Config::from_raw(raw, &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert!(!c.warnings().is_empty());
        let raw: RawConfig = toml::from_str("[server]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        assert_eq!(Config::from_raw(raw, &o).unwrap().listen.port(), 0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let raw: RawConfig = toml::from_str("[limits]\nmax_subscriptions = 0\n").unwrap();
        let e = Config::from_raw(raw, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("limits.max_subscriptions"), "{e}");
        let e = toml::from_str::<RawConfig>("[limits]\nmax_subscription = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_subscription"), "{e}");
        let o = Overrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        let e = Config::from_raw(RawConfig::default(), &o).unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redacted_url("redis://:hunter2@10.0.0.5:6379"),
            "redis://:***@10.0.0.5:6379"
        );
        assert_eq!(
            redacted_url("redis://app:s3:cr@et@host:1/0"),
            "redis://app:***@host:1/0"
        );
        assert_eq!(redacted_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn ttl_takes_seconds_or_durations() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_ttl("soon").is_err());
    }
}
