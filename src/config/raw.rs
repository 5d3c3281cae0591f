//! The config file as written (`config/tickwire.toml`), deserialized
//! with every key optional and unknown keys refused; nothing here is
//! checked yet: [`super::Config::from_raw`] does that once.

use serde::Deserialize;

/// The file's shape; every key optional, defaults applied in validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub fanout: RawFanout,
    #[serde(default)]
    pub redis: RawRedis,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub drain_timeout_secs: Option<f64>,
    pub handshake_timeout_secs: Option<f64>,
    pub ping_interval_secs: Option<f64>,
    pub idle_timeout_secs: Option<f64>,
    pub log_format: Option<String>,
    pub compression: Option<String>,
    pub compression_min_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub jwt_secret: Option<String>,
    pub api_keys: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub allow_anonymous_market_data: Option<bool>,
    pub max_token_ttl_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_publish_bytes: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub commands_per_second: Option<f64>,
    pub command_burst: Option<u32>,
    pub rate_limit_strikes: Option<u32>,
    pub outbound_queue_frames: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub market_data_overflow: Option<String>,
    pub publishes_per_second_per_key: Option<f64>,
    pub publish_burst: Option<u32>,
    pub idempotency_window_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    pub messages: Option<usize>,
    pub max_age_secs: Option<f64>,
    pub max_unread_per_user: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFanout {
    pub shards: Option<usize>,
    pub ring_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub ingest_channel: Option<String>,
}
