//! Connections to the server: WebSocket clients (subscribers and the ingest
//! socket), optionally bound to a chosen loopback source address, and the
//! HTTP client. Every step has a timeout, and a refused handshake becomes an
//! error that says which flag to check.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION, SEC_WEBSOCKET_EXTENSIONS};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;
use crate::wire::{self, Wire};

pub type Ws = WebSocketStream<Wire<TcpStream>>;

/// Which credential a connection presents, so that a 401 can name the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A subscriber's JWT (`--jwt-secret`).
    Token,
    /// A publisher's API key (`--api-key`).
    ApiKey,
}

impl Credential {
    pub fn rejected_hint(self) -> &'static str {
        match self {
            Credential::Token => "the server rejected the token: check --jwt-secret",
            Credential::ApiKey => "the server rejected the API key: check --api-key",
        }
    }
}

#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connection failed (refused, no free port, too many files).
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Binding the chosen source address failed.
    Bind {
        source_ip: IpAddr,
        source: std::io::Error,
    },
    Timeout {
        addr: SocketAddr,
        after: Duration,
    },
    /// The server answered the upgrade with an HTTP status.
    Rejected {
        status: u16,
        credential: Credential,
        body: String,
    },
    Handshake(WsError),
    /// permessage-deflate was offered (`--deflate`) and not agreed.
    NoDeflate,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Tcp { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")?;
                if source.kind() == std::io::ErrorKind::ConnectionRefused {
                    write!(f, " (is tickwire running there?)")?;
                }
                Ok(())
            }
            ConnectError::Bind { source_ip, source } => {
                write!(f, "cannot bind source address {source_ip}: {source}")
            }
            ConnectError::Timeout { addr, after } => {
                write!(f, "no WebSocket handshake with {addr} within {after:?}")
            }
            ConnectError::Rejected {
                status: 401,
                credential,
                ..
            } => f.write_str(credential.rejected_hint()),
            ConnectError::Rejected { status, body, .. } => {
                write!(f, "the server refused the WebSocket upgrade with HTTP {status}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                Ok(())
            }
            ConnectError::Handshake(e) => write!(f, "WebSocket handshake failed: {e}"),
            ConnectError::NoDeflate => f.write_str(
                "the server did not agree to permessage-deflate (is compression off in its config?)",
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// How to open one WebSocket.
#[derive(Debug, Clone)]
pub struct WsRequest<'a> {
    pub target: &'a Target,
    /// Path and query, e.g. `/ws/market-data/?token=...`.
    pub path: &'a str,
    /// `Authorization: Bearer` value, for the ingest socket.
    pub bearer: Option<&'a str>,
    pub credential: Credential,
    /// Source address to bind before connecting; the kernel picks otherwise.
    pub bind: Option<IpAddr>,
    /// The socket's kernel receive buffer (`SO_RCVBUF`), set before
    /// connecting; the kernel's default (autotuned) otherwise. A small one
    /// makes the server's writes to a client that never reads stall soon.
    pub recv_buffer_bytes: Option<u32>,
    pub config: WebSocketConfig,
    /// Offer permessage-deflate, and fail unless the server agrees.
    pub deflate: bool,
    /// Count the bytes read in the run's wire bytes (subscribers).
    pub count_wire: bool,
    /// For the TCP connect and the upgrade together.
    pub timeout: Duration,
}

pub async fn connect_ws(req: &WsRequest<'_>) -> Result<Ws, ConnectError> {
    let addr = req.target.addr;
    let attempt = async {
        let stream = connect_tcp(addr, req.bind, req.recv_buffer_bytes).await?;
        let stream = Wire::new(stream, req.count_wire, req.deflate);
        let mut request = req
            .target
            .ws_url(req.path)
            .into_client_request()
            .map_err(ConnectError::Handshake)?;
        if let Some(bearer) = req.bearer {
            let value = HeaderValue::from_str(&format!("Bearer {bearer}"))
                .map_err(|e| ConnectError::Handshake(WsError::HttpFormat(e.into())))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        if req.deflate {
            request
                .headers_mut()
                .insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_static(wire::OFFER));
        }
        match tokio_tungstenite::client_async_with_config(request, stream, Some(req.config)).await {
            Ok((ws, _)) if req.deflate && !ws.get_ref().deflate_agreed() => Err(ConnectError::NoDeflate),
            Ok((ws, _response)) => Ok(ws),
            Err(WsError::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).trim().to_owned())
                    .unwrap_or_default();
                Err(ConnectError::Rejected {
                    status: response.status().as_u16(),
                    credential: req.credential,
                    body,
                })
            }
            Err(e) => Err(ConnectError::Handshake(e)),
        }
    };
    timeout(req.timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout {
            addr,
            after: req.timeout,
        }))
}

async fn connect_tcp(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    recv_buffer_bytes: Option<u32>,
) -> Result<TcpStream, ConnectError> {
    let tcp_err = |source| ConnectError::Tcp { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp_err)?;
    if let Some(source_ip) = bind {
        socket
            .bind(SocketAddr::new(source_ip, 0))
            .map_err(|source| ConnectError::Bind { source_ip, source })?;
    }
    if let Some(bytes) = recv_buffer_bytes {
        // Before connect, so that the window the handshake advertises is
        // already the small one.
        socket.set_recv_buffer_size(bytes).map_err(tcp_err)?;
    }
    let stream = socket.connect(addr).await.map_err(tcp_err)?;
    // Small frames should leave at once; latency is what is measured.
    stream.set_nodelay(true).map_err(tcp_err)?;
    Ok(stream)
}

/// The HTTP client for publishing and health checks: no proxy (a proxy
/// from the environment would take loopback traffic elsewhere), short
/// timeouts.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()?)
}

/// Fails with a clear message unless something answers HTTP at `target`.
/// Any status will do: the point is to fail fast when nothing listens.
pub async fn check_reachable(http: &reqwest::Client, target: &Target) -> anyhow::Result<()> {
    let url = target.http_url("/health");
    match http.get(&url).timeout(Duration::from_secs(3)).send().await {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "cannot reach tickwire at http://{}: {:#} (is it running, and on that port?)",
            target.addr,
            anyhow::Error::from(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    //! What a subscriber reads, against a real node: permessage-deflate
    //! agreed and its messages inflated to the text the node would send
    //! plain, and the bytes on the wire counted.

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tickwire::config::{Config, Overrides, RawConfig};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::bench::subscriber_request;
    use crate::jwt::{self, Claims};
    use crate::stats;

    const SECRET: &str = "loadgen-test-secret-0123456789abcdef";
    const KEY: &str = "loadgen-test-api-key";

    /// A node on a free loopback port, shut down when dropped.
    struct Node(tickwire::server::Running);

    impl Drop for Node {
        fn drop(&mut self) {
            self.0.node.shutdown.trigger();
            self.0.node.fanout.stop();
        }
    }

    async fn start(compression: &str) -> (Node, Target) {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            jwt_secret: Some(SECRET.into()),
            api_keys: Some(vec![KEY.into()]),
            compression: Some(compression.into()),
            ..Default::default()
        };
        let config = Config::from_raw(RawConfig::default(), &overrides).unwrap();
        let running = tickwire::server::start(config).await.unwrap();
        let target = Target::parse(&format!("http://{}", running.addr), 8000).unwrap();
        (Node(running), target)
    }

    async fn subscriber(target: &Target, deflate: bool) -> Result<Ws, ConnectError> {
        let token = jwt::mint(
            SECRET.as_bytes(),
            &Claims {
                sub: "alice",
                exp: jwt::unix_now_s() + 600,
                symbols: None,
            },
        );
        let path = format!("/ws/market-data/?token={token}");
        let mut ws = connect_ws(&subscriber_request(target, &path, None, 4096, deflate)).await?;
        ws.send(Message::text(r#"{"type":"subscribe","symbols":["BTC-USD"]}"#))
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
        Ok(ws)
    }

    async fn next_json(ws: &mut Ws) -> Value {
        loop {
            let msg = timeout(Duration::from_secs(10), ws.next()).await.unwrap();
            match msg.expect("the socket stays open").unwrap() {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                other => assert!(other.is_ping() || other.is_pong(), "{other:?}"),
            }
        }
    }

    /// A market update well past the node's compression threshold, as the
    /// node sends it back (with its `seq`).
    fn update(volume: u64) -> Value {
        let depth: Vec<Value> = (0..30)
            .map(|i| json!([45000.0 + f64::from(i) * 0.5, 1.25 + f64::from(i) / 8.0]))
            .collect();
        json!({"type": "market_update", "symbol": "BTC-USD", "price": 45000.0, "change": 2.5,
               "volume": volume, "bids": depth})
    }

    async fn publish(target: &Target, message: &Value) {
        let status = http_client()
            .unwrap()
            .post(target.http_url("/api/publish"))
            .bearer_auth(KEY)
            .json(message)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deflate_is_agreed_inflated_to_the_same_object_and_counted_compressed() {
        let (_node, target) = start("auto").await;
        let mut compressed = subscriber(&target, true).await.unwrap();
        assert!(compressed.get_ref().deflate_agreed());
        let mut plain = subscriber(&target, false).await.unwrap();
        assert!(!plain.get_ref().deflate_agreed());
        let sent = update(7);
        let text_len = serde_json::to_string(&sent).unwrap().len();
        publish(&target, &sent).await;

        // The plain socket reads at least the whole text.
        let before = stats::wire_bytes();
        let got_plain = next_json(&mut plain).await;
        let plain_bytes = stats::wire_bytes() - before;
        let mut fields = got_plain.as_object().unwrap().clone();
        assert_eq!(fields.remove("seq"), Some(json!(1)));
        assert!(
            fields.remove("timestamp").is_some(),
            "the node adds its timestamp"
        );
        assert_eq!(Value::Object(fields), sent);
        assert!(plain_bytes >= text_len as u64, "{plain_bytes} < {text_len}");

        // The deflate socket reads the same object in far fewer bytes.
        let before = stats::wire_bytes();
        let got = next_json(&mut compressed).await;
        let compressed_bytes = stats::wire_bytes() - before;
        assert_eq!(got, got_plain);
        assert!(
            compressed_bytes * 2 < plain_bytes,
            "{compressed_bytes} B compressed against {plain_bytes} B plain"
        );

        // A small one goes plain on the same socket, and still arrives.
        publish(
            &target,
            &json!({"type": "market_update", "symbol": "BTC-USD", "price": 1.5}),
        )
        .await;
        assert_eq!(next_json(&mut compressed).await["price"], 1.5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offer_the_node_declines_fails_the_connection() {
        let (_node, target) = start("off").await;
        let refused = subscriber(&target, true).await.err();
        assert!(matches!(refused, Some(ConnectError::NoDeflate)), "{refused:?}");
        assert!(subscriber(&target, false).await.is_ok());
    }
}
