//! `loadgen publish`: sends a few realistic test messages, one line printed
//! per message, so a person can watch them arrive in a browser (the
//! successor of Django's `manage.py test_websockets`). Over HTTP each line
//! ends with the server's answer; over the ingest WebSocket the server
//! speaks only to report errors, which are printed as they come; over
//! Redis, with the number of nodes that received the PUBLISH.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, connect_ws, Credential, Ws, WsRequest};
use crate::messages::{describe, Feed, Kind, Rng};
use crate::resp::Redis;
use crate::target::Target;

const MAX_COUNT: u64 = 1_000_000;
const MAX_DELAY_S: f64 = 3600.0;
/// The longest a publish run may last.
const MAX_RUN_S: f64 = 86_400.0;
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Market,
    Signals,
    Notifications,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// POST /api/publish
    Http,
    /// The /ws/ingest WebSocket
    Ws,
    /// PUBLISH on the Redis ingest channel
    Redis,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// What to publish
    #[arg(long = "type", value_enum, default_value_t = KindArg::Market)]
    kind: KindArg,
    /// Messages to send (at most 1000000)
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Seconds between messages
    #[arg(long, default_value_t = 1.0)]
    delay: f64,
    /// How to publish
    #[arg(long, value_enum, default_value_t = Via::Http)]
    via: Via,
    /// Server base URL (for --via http and ws)
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Publisher API key (for --via http and ws)
    #[arg(long, env = "TICKWIRE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Symbols to publish for, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "BTC-USD,ETH-USD,SOL-USD,ADA-USD,DOT-USD"
    )]
    symbols: Vec<String>,
    /// User who receives the notifications
    #[arg(long, default_value = "alice")]
    user: String,
    /// Redis URL (for --via redis)
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Redis channel the server ingests from (for --via redis)
    #[arg(long, default_value = "rt:ingest")]
    channel: String,
    /// Seed of the random walk (default: from the clock)
    #[arg(long)]
    seed: Option<u64>,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.count > MAX_COUNT {
        bail!("--count must be between 1 and {MAX_COUNT}");
    }
    if !(args.delay.is_finite() && (0.0..=MAX_DELAY_S).contains(&args.delay)) {
        bail!("--delay must be between 0 and {MAX_DELAY_S} seconds");
    }
    if args.delay * (args.count - 1) as f64 > MAX_RUN_S {
        bail!("--count x --delay must stay under {MAX_RUN_S} seconds (a day)");
    }
    let symbols: Vec<String> = args
        .symbols
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if symbols.is_empty() {
        bail!("--symbols needs at least one symbol");
    }
    let kind = match args.kind {
        KindArg::Market => Kind::Market,
        KindArg::Signals => Kind::Signals,
        KindArg::Notifications => Kind::Notifications,
    };
    let rng = args.seed.map(Rng::new).unwrap_or_else(Rng::from_entropy);
    let mut feed = Feed::new(&symbols, &args.user, rng);
    let mut sink = Sink::open(&args).await?;

    let width = args.count.to_string().len();
    for i in 1..=args.count {
        let msg = feed.next(kind);
        let outcome = sink.send(&msg).await?;
        println!("[{i:>width$}/{}] {}  -> {outcome}", args.count, describe(&msg));
        if i < args.count && args.delay > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.delay)).await;
        }
    }
    sink.finish().await;
    Ok(())
}

enum Sink {
    Http {
        client: reqwest::Client,
        url: String,
        api_key: String,
    },
    Ws {
        write: SplitSink<Ws, Message>,
        reader: tokio::task::JoinHandle<()>,
    },
    Redis {
        redis: Redis,
        channel: String,
    },
}

fn require_key(args: &PublishArgs) -> anyhow::Result<String> {
    args.api_key
        .clone()
        .context("--api-key (or TICKWIRE_API_KEY) is needed to publish to the server")
}

impl Sink {
    async fn open(args: &PublishArgs) -> anyhow::Result<Sink> {
        match args.via {
            Via::Http => {
                let target = Target::parse(&args.url, 8000)?;
                Ok(Sink::Http {
                    client: client::http_client()?,
                    url: target.http_url("/api/publish"),
                    api_key: require_key(args)?,
                })
            }
            Via::Ws => {
                let target = Target::parse(&args.url, 8000)?;
                let api_key = require_key(args)?;
                let ws = connect_ws(&WsRequest {
                    target: &target,
                    path: "/ws/ingest",
                    bearer: Some(&api_key),
                    credential: Credential::ApiKey,
                    bind: None,
                    recv_buffer_bytes: None,
                    config: WebSocketConfig::default(),
                    deflate: false,
                    count_wire: false,
                    timeout: Duration::from_secs(10),
                })
                .await?;
                let (write, mut read) = ws.split();
                // The server writes on the ingest socket only to report errors.
                let reader = tokio::spawn(async move {
                    while let Some(msg) = read.next().await {
                        match msg {
                            Ok(Message::Text(text)) => eprintln!("server error: {}", text.as_str()),
                            Ok(Message::Close(frame)) => {
                                eprintln!("the server closed /ws/ingest: {frame:?}");
                                break;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                eprintln!("/ws/ingest: {e}");
                                break;
                            }
                        }
                    }
                });
                Ok(Sink::Ws { write, reader })
            }
            Via::Redis => {
                let target = Target::parse(&args.redis_url, 6379)?;
                Ok(Sink::Redis {
                    redis: Redis::connect(&target).await?,
                    channel: args.channel.clone(),
                })
            }
        }
    }

    /// Sends one message; returns what to print about it.
    async fn send(&mut self, msg: &Value) -> anyhow::Result<String> {
        let body = msg.to_string();
        match self {
            Sink::Http { client, url, api_key } => {
                let response = client
                    .post(url.as_str())
                    .bearer_auth(api_key.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                match status {
                    200..=299 => Ok(format!("{status} {}", text.trim())),
                    401 => bail!("{}", Credential::ApiKey.rejected_hint()),
                    _ => Ok(format!("REFUSED {status} {}", text.trim())),
                }
            }
            Sink::Ws { write, .. } => {
                timeout(SEND_TIMEOUT, write.send(Message::text(body)))
                    .await
                    .context("timed out sending on /ws/ingest")?
                    .context("sending on /ws/ingest")?;
                Ok("sent".to_owned())
            }
            Sink::Redis { redis, channel } => {
                let receivers = redis.publish(channel, body.as_bytes()).await?;
                Ok(format!("PUBLISH {channel}: {receivers} receiver(s)"))
            }
        }
    }

    async fn finish(self) {
        if let Sink::Ws { mut write, reader } = self {
            // Leave the server a moment to report an error about the last one.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = timeout(Duration::from_secs(2), write.close()).await;
            let _ = timeout(Duration::from_secs(1), reader).await;
        }
    }
}
