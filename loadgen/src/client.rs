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
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

pub type Ws = WebSocketStream<TcpStream>;

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
    /// For the TCP connect and the upgrade together.
    pub timeout: Duration,
}

pub async fn connect_ws(req: &WsRequest<'_>) -> Result<Ws, ConnectError> {
    let addr = req.target.addr;
    let attempt = async {
        let stream = connect_tcp(addr, req.bind, req.recv_buffer_bytes).await?;
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
        match tokio_tungstenite::client_async_with_config(request, stream, Some(req.config)).await {
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
