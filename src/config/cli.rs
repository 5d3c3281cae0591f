//! The command line: the subcommands and every setting as a flag and a
//! `TICKWIRE_*` variable (clap), layered over the config file by
//! [`super::Config::from_raw`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tickwire",
    version,
    about = "Real-time market data over WebSockets: ticks, trading signals and notifications",
    long_about = "Starts a tickwire node (embedded mode unless --redis is given).\n\
        Every setting comes from, in rising precedence: config/tickwire.toml (or --config),\n\
        the TICKWIRE_* environment variables, and these flags."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Overrides,
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Mint a subscriber JWT signed with the configured secret, and print it.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Allowed symbol patterns (`symbols` claim), e.g. BTC-USD,ETH-*; all when absent.
        #[arg(long, value_delimiter = ',')]
        symbols: Option<Vec<String>>,
        /// Lifetime of the token: seconds, or a duration such as 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Check the configuration and print it (secrets masked), then exit.
    CheckConfig,
}

/// Every setting as a flag and an environment variable; `None` means "not
/// given here, use the file or the default".
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// The TOML config file (default: config/tickwire.toml when present).
    #[arg(long, env = "TICKWIRE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "TICKWIRE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// HS256 secret for subscriber tokens.
    #[arg(long, env = "TICKWIRE_JWT_SECRET", global = true, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Publisher API key (repeatable; the variable is comma-separated).
    #[arg(
        long = "api-key",
        env = "TICKWIRE_API_KEYS",
        value_delimiter = ',',
        global = true,
        hide_env_values = true
    )]
    pub api_keys: Option<Vec<String>>,
    /// Redis URL: turns on cluster mode.
    #[arg(long, env = "TICKWIRE_REDIS_URL", global = true)]
    pub redis: Option<String>,
    /// Browser origins allowed when the token comes from a cookie (repeatable).
    #[arg(
        long = "allowed-origin",
        env = "TICKWIRE_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Let anonymous subscribers use /ws/market-data/.
    #[arg(long, env = "TICKWIRE_ALLOW_ANONYMOUS_MARKET_DATA", global = true)]
    pub allow_anonymous_market_data: Option<bool>,
    /// Log format: text or json.
    #[arg(long, env = "TICKWIRE_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Seconds to wait for subscribers to close on shutdown.
    #[arg(long, env = "TICKWIRE_DRAIN_TIMEOUT_SECS", global = true)]
    pub drain_timeout_secs: Option<f64>,
    /// Most open connections on this node.
    #[arg(long, env = "TICKWIRE_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,
    /// Most open connections from one client IP (0: no limit).
    #[arg(long, env = "TICKWIRE_MAX_CONNECTIONS_PER_IP", global = true)]
    pub max_connections_per_ip: Option<usize>,
    /// Largest text message a subscriber may send, in bytes.
    #[arg(long, env = "TICKWIRE_MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<usize>,
    /// Largest publish body or ingest frame, in bytes.
    #[arg(long, env = "TICKWIRE_MAX_PUBLISH_BYTES", global = true)]
    pub max_publish_bytes: Option<usize>,
    /// Most symbols one market-data connection may subscribe to.
    #[arg(long, env = "TICKWIRE_MAX_SUBSCRIPTIONS", global = true)]
    pub max_subscriptions: Option<usize>,
    /// Commands per second one connection may send, sustained.
    #[arg(long, env = "TICKWIRE_COMMANDS_PER_SECOND", global = true)]
    pub commands_per_second: Option<f64>,
    /// Commands one connection may send in a burst.
    #[arg(long, env = "TICKWIRE_COMMAND_BURST", global = true)]
    pub command_burst: Option<u32>,
    /// Rate-limited commands in a row after which the connection is closed with 1008.
    #[arg(long, env = "TICKWIRE_RATE_LIMIT_STRIKES", global = true)]
    pub rate_limit_strikes: Option<u32>,
    /// Frames a subscriber's outbound queue holds before it is cut as a slow consumer.
    #[arg(long, env = "TICKWIRE_OUTBOUND_QUEUE_FRAMES", global = true)]
    pub outbound_queue_frames: Option<usize>,
    /// Bytes a connection's outbound queue holds, control frames and answers included.
    #[arg(long, env = "TICKWIRE_OUTBOUND_QUEUE_BYTES", global = true)]
    pub outbound_queue_bytes: Option<usize>,
    /// The longest lifetime a subscriber token may have (its exp minus now), in seconds.
    #[arg(long, env = "TICKWIRE_MAX_TOKEN_TTL_SECS", global = true)]
    pub max_token_ttl_secs: Option<f64>,
    /// How long a publish's Idempotency-Key (or publish_id) is remembered, in seconds.
    #[arg(long, env = "TICKWIRE_IDEMPOTENCY_WINDOW_SECS", global = true)]
    pub idempotency_window_secs: Option<f64>,
    /// permessage-deflate for subscribers that offer it: auto or off.
    #[arg(long, env = "TICKWIRE_COMPRESSION", global = true)]
    pub compression: Option<String>,
    /// Frames shorter than this go uncompressed even where deflate was negotiated.
    #[arg(long, env = "TICKWIRE_COMPRESSION_MIN_BYTES", global = true)]
    pub compression_min_bytes: Option<usize>,
    /// What a full market-data queue does: conflate (keep the latest of each symbol) or close (4002).
    #[arg(long, env = "TICKWIRE_MARKET_DATA_OVERFLOW", global = true)]
    pub market_data_overflow: Option<String>,
    /// Messages per second one API key may publish, sustained (0: no limit).
    #[arg(long, env = "TICKWIRE_PUBLISHES_PER_SECOND_PER_KEY", global = true)]
    pub publishes_per_second_per_key: Option<f64>,
    /// Messages one API key may publish in a burst.
    #[arg(long, env = "TICKWIRE_PUBLISH_BURST", global = true)]
    pub publish_burst: Option<u32>,
    /// Messages kept per stream for resuming clients.
    #[arg(long, env = "TICKWIRE_HISTORY_MESSAGES", global = true)]
    pub history_messages: Option<usize>,
    /// Seconds a message stays in the history window.
    #[arg(long, env = "TICKWIRE_HISTORY_MAX_AGE_SECS", global = true)]
    pub history_max_age_secs: Option<f64>,
    /// Unread notifications kept per user.
    #[arg(long, env = "TICKWIRE_MAX_UNREAD_PER_USER", global = true)]
    pub max_unread_per_user: Option<usize>,
    /// Fanout shards (worker threads); 0 picks the number of cores.
    #[arg(long, env = "TICKWIRE_SHARDS", global = true)]
    pub shards: Option<usize>,
    /// Capacity of each shard's ring, in updates.
    #[arg(long, env = "TICKWIRE_RING_CAPACITY", global = true)]
    pub ring_capacity: Option<usize>,
    /// Seconds between server pings on an idle connection.
    #[arg(long, env = "TICKWIRE_PING_INTERVAL_SECS", global = true)]
    pub ping_interval_secs: Option<f64>,
    /// Seconds without any frame from a client before it is closed.
    #[arg(long, env = "TICKWIRE_IDLE_TIMEOUT_SECS", global = true)]
    pub idle_timeout_secs: Option<f64>,
    /// Seconds a client has to complete the HTTP/WebSocket handshake.
    #[arg(long, env = "TICKWIRE_HANDSHAKE_TIMEOUT_SECS", global = true)]
    pub handshake_timeout_secs: Option<f64>,
    /// Redis channel whose messages are published (cluster mode).
    #[arg(long, env = "TICKWIRE_INGEST_CHANNEL", global = true)]
    pub ingest_channel: Option<String>,
}
