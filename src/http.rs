//! The HTTP face of a node: WebSocket handshakes (authenticated before the
//! upgrade, PROTOCOL.md 1.1), publishing (2), the polling and monitoring
//! endpoints (3), and the static pages. Handlers parse and answer; the
//! work is done by ingress, fanout and the connection tasks.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rust_embed::RustEmbed;
use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{self, AuthError, Identity, SymbolAccess, TokenSource};
use crate::connection::{self, Accepted};
use crate::fanout::Control;
use crate::ingress::Outcome;
use crate::node::{ConnectionPermit, Node};
use crate::protocol::encode::{self, Frame};
use crate::protocol::{Endpoint, ErrorCode, Seq, SignalType, StreamKey};
use crate::registry::SignalFilter;
use crate::replication::idempotency;

/// The client's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

/// Bytes a subscriber connection reads from its socket at a time (a larger
/// message is still read whole): commands are small, and this buffer is
/// held by every idle connection (`loadgen idle`: 4 KiB of it was a third
/// of an idle connection's memory). A `subscribe` to a few symbols fits.
const READ_BUFFER_BYTES: usize = 256;
/// Publishers send large batches on `/ws/ingest`: read them in big chunks.
const INGEST_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Frames are written once this much is buffered, or at the end of a batch.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new();
    for (path, endpoint) in [
        ("/ws/market-data", Endpoint::MarketData),
        ("/ws/trading-signals", Endpoint::TradingSignals),
        ("/ws/notifications", Endpoint::Notifications),
        ("/ws/ingest", Endpoint::Ingest),
    ] {
        let handler = move |State(node): State<Arc<Node>>, req: Request| upgrade(node, endpoint, req);
        r = r
            .route(path, get(handler))
            .route(&format!("{path}/"), get(handler));
    }
    #[cfg(feature = "test-echo")]
    {
        r = r
            .route("/ws/echo", get(upgrade_echo))
            .route("/ws/echo/", get(upgrade_echo));
    }
    r.route("/api/publish", post(publish))
        .route("/api/market", get(market_all))
        .route("/api/market/", get(market_all))
        .route("/api/market/{symbol}", get(market_one))
        .route("/api/signals", get(signals))
        .route("/api/notifications", get(notifications))
        .route("/api/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/", get(|| async { redirect("/websocket-test/") }))
        .route("/websocket-test", get(|| async { redirect("/websocket-test/") }))
        .route("/websocket-test/", get(|| async { asset("websocket-test.html") }))
        .route("/dashboard", get(|| async { redirect("/dashboard/") }))
        .route("/dashboard/", get(|| async { asset("dashboard.html") }))
        .route(
            "/static/{*path}",
            get(|Path(path): Path<String>| async move { asset(&path) }),
        )
        .fallback(|| async { json_response(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})) })
        .with_state(node)
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn frame_response(frame: Frame) -> Response {
    let body: bytes::Bytes = frame.into();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, json!({"error": message.to_string()}))
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
}

fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_string()),
                    (header::CACHE_CONTROL, "no-cache".to_string()),
                ],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => error_response(StatusCode::NOT_FOUND, format!("no file {path}")),
    }
}

/// Authenticates a subscriber from a request's token (header, query,
/// cookie), applying the cookie/Origin rule.
fn authenticate(
    node: &Node,
    headers: &HeaderMap,
    query: Option<&str>,
    endpoint: Endpoint,
) -> Result<Identity, AuthError> {
    let Some((token, source)) = auth::find_token(headers, query) else {
        if endpoint == Endpoint::MarketData && node.config.allow_anonymous_market_data {
            return Ok(Identity::anonymous());
        }
        return Err(AuthError::Missing);
    };
    if source == TokenSource::Cookie {
        auth::check_origin(headers, &node.config.allowed_origins)?;
    }
    auth::verify_within(
        &token,
        node.config.jwt_secret.as_bytes(),
        SystemTime::now(),
        node.config.max_token_ttl,
    )
}

fn auth_failure(node: &Node, e: AuthError) -> Response {
    node.metrics.handshake_rejected();
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = error_response(status, &e);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

async fn upgrade(node: Arc<Node>, endpoint: Endpoint, mut req: Request) -> Response {
    let headers = req.headers();
    let identity = if endpoint == Endpoint::Ingest {
        let key = auth::bearer(headers)
            .map(str::to_string)
            .or_else(|| req.uri().query().and_then(|q| auth::query_param(q, "api_key")));
        match auth::check_api_key(key.as_deref(), &node.config.api_keys) {
            Ok(index) => Identity::publisher(index),
            Err(e) => return auth_failure(&node, e),
        }
    } else {
        match authenticate(&node, headers, req.uri().query(), endpoint) {
            Ok(id) => id,
            Err(e) => return auth_failure(&node, e),
        }
    };
    let key = match websocket_key(headers) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    if !node.is_ready() && !node.shutdown.is_triggered() {
        // A cluster node without its Redis link cannot resume a client
        // correctly (it would answer from its own, possibly empty, memory):
        // send new clients elsewhere, as /ready says. Open ones stay.
        node.metrics.handshake_rejected();
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this node cannot reach Redis",
        );
    }
    let peer = peer_addr(&req);
    let permit = match admit(&node, peer) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let max_message = if endpoint == Endpoint::Ingest {
        node.config.max_publish_bytes
    } else {
        node.config.max_message_bytes
    };
    let read_buffer = if endpoint == Endpoint::Ingest {
        INGEST_READ_BUFFER_BYTES
    } else {
        READ_BUFFER_BYTES
    };
    let config = ws_config(max_message, read_buffer);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let Some(accepted) = Accepted::from_upgrade(upgraded, config, peer) else {
            tracing::warn!(%peer, "upgraded connection is not a TCP stream");
            return;
        };
        run_connection(accepted, node, endpoint, identity, permit).await;
    });
    switching_protocols(&key)
}

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request, or the
/// 426 that answers anything else (boxed, as in [`admit`]).
fn websocket_key(headers: &HeaderMap) -> Result<HeaderValue, Box<Response>> {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(Box::new(error_response(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an Upgrade request",
        )));
    };
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return Err(Box::new(error_response(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send an Upgrade request",
        )));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut resp = error_response(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is spoken",
        );
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    Ok(key)
}

fn peer_addr(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A place under the connection limits, or the 503/429 that refuses it
/// (boxed: a `Response` is large, and refusals are the rare path).
fn admit(node: &Arc<Node>, peer: SocketAddr) -> Result<ConnectionPermit, Box<Response>> {
    node.admit(peer.ip()).map_err(|(status, why)| {
        node.metrics.handshake_rejected();
        Box::new(error_response(status, why))
    })
}

/// The limits every WebSocket of a node is read and written with.
fn ws_config(max_message: NonZeroUsize, read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(max_message.get()))
        .max_frame_size(Some(max_message.get()))
}

fn switching_protocols(key: &HeaderValue) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()))
        .body(Body::empty())
        .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "handshake"))
}

/// `/ws/echo`, for the Autobahn conformance run only (feature `test-echo`):
/// no token, but the same handshake checks, connection limits and
/// WebSocket limits as `/ws/market-data/`.
#[cfg(feature = "test-echo")]
async fn upgrade_echo(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let key = match websocket_key(req.headers()) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    let peer = peer_addr(&req);
    let permit = match admit(&node, peer) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = ws_config(node.config.max_message_bytes, READ_BUFFER_BYTES);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Some(accepted) = Accepted::from_upgrade(upgraded, ws_config, peer) else {
            return;
        };
        crate::echo::serve(accepted, node.connections.clone()).await;
        drop(permit);
    });
    switching_protocols(&key)
}

async fn run_connection(
    accepted: Accepted,
    node: Arc<Node>,
    endpoint: Endpoint,
    identity: Identity,
    _permit: ConnectionPermit,
) {
    if endpoint == Endpoint::Ingest {
        let publisher = identity.publisher_key();
        // Boxed: the subscriber connections sharing this function should
        // not carry the publisher's future inline.
        Box::pin(connection::serve_ingest(
            accepted,
            node.connections.clone(),
            publisher,
        ))
        .await;
    } else {
        connection::serve_subscriber(accepted, node.connections.clone(), endpoint, identity).await;
    }
}

/// The request header naming a publish, so that a retry is taken once.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer that is (partly) an earlier attempt's.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// How much of a body over the limit is still read, and for how long,
/// before the 413 is sent and the connection closed: a client that writes
/// its whole body before it reads (Python's async httpx) would otherwise
/// have unread bytes on a closed socket, which the kernel answers with a
/// reset that destroys the 413 (nginx's "lingering close").
const LINGER_BYTES: usize = 64 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
    let publisher = match auth::check_api_key(auth::bearer(&headers), &node.config.api_keys) {
        Ok(index) => index,
        Err(e) => return auth_failure(&node, e),
    };
    let limit = node.config.max_publish_bytes.get();
    let bytes = match read_body(body, &headers, limit).await {
        Ok(b) => b,
        Err(BodyRefused::TooLarge) => {
            let mut resp = error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes"),
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Err(BodyRefused::Failed(e)) => {
            return error_response(StatusCode::BAD_REQUEST, format!("reading the body failed: {e}"))
        }
    };
    // Judged once the body is read, so the answer is not lost to a reset.
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(why) => {
            let errors = json!([{"code": ErrorCode::InvalidField.as_str(), "message": why}]);
            return json_response(StatusCode::BAD_REQUEST, json!({"accepted": 0, "errors": errors}));
        }
    };
    let outcome = match node
        .ingress
        .publish_keyed(&bytes, Some(publisher), key.as_deref())
        .await
    {
        Ok(o) => o,
        Err(e) if e.code == ErrorCode::RateLimited => {
            return json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"accepted": 0, "error": e.message}),
            );
        }
        Err(e) => {
            let errors = json!([{"index": 0, "code": e.code.as_str(), "message": e.message}]);
            return json_response(StatusCode::BAD_REQUEST, json!({"accepted": 0, "errors": errors}));
        }
    };
    let mut resp = publish_answer(&outcome, key.is_some());
    if outcome.replayed {
        resp.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// The answer to a publish, from what became of its entries.
fn publish_answer(outcome: &Outcome, keyed: bool) -> Response {
    let (status, body) = outcome.http_answer(keyed);
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
}

/// The request's `Idempotency-Key`, if it has one: at most one, of 1 to
/// 200 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Idempotency-Key header".into());
    }
    match value.to_str() {
        Ok(k) if idempotency::valid_key(k) => Ok(Some(k.to_string())),
        _ => Err(format!(
            "the Idempotency-Key must be 1 to {} printable ASCII characters",
            idempotency::MAX_KEY_BYTES
        )),
    }
}

enum BodyRefused {
    TooLarge,
    Failed(String),
}

/// A publish body of at most `limit` bytes. One over it is read on (and
/// thrown away) within [`LINGER_BYTES`] and [`LINGER_TIME`] before it is
/// refused, unless the client waits for `100 Continue` before sending it.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<bytes::Bytes, BodyRefused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        if !header_has(headers, header::EXPECT, "100-continue") {
            linger(&mut body).await;
        }
        return Err(BodyRefused::TooLarge);
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            linger(&mut body).await;
            Err(BodyRefused::TooLarge)
        }
        Err(e) => Err(BodyRefused::Failed(e.to_string())),
    }
}

/// Reads and drops what is left of a refused body, within the linger budget.
async fn linger(body: &mut Body) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut read = 0usize;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
            // The end of the body, a broken one, or the time is up.
            _ => return,
        }
    }
}

/// The symbols a polling request may see: all, or its token's claim
/// when it carries one (a token is optional on these endpoints).
fn optional_access(node: &Node, headers: &HeaderMap, query: Option<&str>) -> Result<SymbolAccess, AuthError> {
    match auth::find_token(headers, query) {
        None => Ok(SymbolAccess::All),
        Some(_) => authenticate(node, headers, query, Endpoint::MarketData).map(|id| id.symbols),
    }
}

async fn market_one(State(node): State<Arc<Node>>, Path(symbol): Path<String>, req: Request) -> Response {
    let access = match optional_access(&node, req.headers(), req.uri().query()) {
        Ok(a) => a,
        Err(e) => return auth_failure(&node, e),
    };
    if !access.allows(&symbol) {
        return error_response(
            StatusCode::FORBIDDEN,
            format!("your token does not allow {symbol}"),
        );
    }
    let remote = match &node.replication {
        Some(r) => r
            .fetch_latest(&symbol)
            .await
            .ok()
            .and_then(|f| f.entries.into_iter().last().map(|e| e.frame)),
        None => None,
    };
    match remote.or_else(|| node.fanout.latest.get(symbol.as_str()).map(|f| f.clone())) {
        Some(frame) => frame_response(frame),
        None => error_response(StatusCode::NOT_FOUND, format!("no market data for {symbol}")),
    }
}

async fn market_all(State(node): State<Arc<Node>>, req: Request) -> Response {
    let access = match optional_access(&node, req.headers(), req.uri().query()) {
        Ok(a) => a,
        Err(e) => return auth_failure(&node, e),
    };
    let remote = match &node.replication {
        Some(r) => r.fetch_all_latest().await.ok(),
        None => None,
    };
    let mut all: Vec<(String, Frame)> = remote.unwrap_or_else(|| {
        node.fanout
            .latest
            .iter()
            .map(|e| (e.key().to_string(), e.value().clone()))
            .collect()
    });
    all.retain(|(symbol, _)| access.allows(symbol));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    frame_response(encode::json_array(all.iter().map(|(_, f)| f)))
}

fn since_param(query: Option<&str>) -> Result<Seq, &'static str> {
    match query
        .and_then(|q| auth::query_param(q, "since"))
        .filter(|s| !s.is_empty())
    {
        None => Ok(Seq(0)),
        Some(s) => s
            .parse::<u64>()
            .map(Seq)
            .map_err(|_| "since must be a non-negative integer"),
    }
}

async fn signals(State(node): State<Arc<Node>>, req: Request) -> Response {
    let query = req.uri().query();
    let since = match since_param(query) {
        Ok(s) => s,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, why),
    };
    let param = |name| {
        query
            .and_then(|q| auth::query_param(q, name))
            .filter(|s| !s.is_empty())
    };
    let signal_type = match param("signal_type") {
        None => None,
        Some(t) => match SignalType::parse_loose(&t) {
            Some(t) => Some(t),
            None => return error_response(StatusCode::BAD_REQUEST, "signal_type must be BUY, SELL or HOLD"),
        },
    };
    // A token is optional here; when one is given, its `symbols` claim applies.
    let access = match auth::find_token(req.headers(), query) {
        None => SymbolAccess::All,
        Some(_) => match authenticate(&node, req.headers(), query, Endpoint::TradingSignals) {
            Ok(id) => id.symbols,
            Err(e) => return auth_failure(&node, e),
        },
    };
    let filter = SignalFilter {
        symbol: param("symbol").map(Arc::from),
        signal_type,
    };
    if let Some(r) = &node.replication {
        if let Ok(fetched) = r.fetch_history(&StreamKey::Signals, since).await {
            let frames = fetched.entries.iter().filter(|e| filter.admits(&e.meta, &access));
            return frame_response(encode::json_array(frames.map(|e| &e.frame)));
        }
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    node.fanout.control(
        &StreamKey::Signals,
        Control::QuerySignals {
            filter,
            access,
            since,
            reply,
        },
    );
    match answer.await {
        Ok(frame) => frame_response(frame),
        Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

async fn notifications(State(node): State<Arc<Node>>, req: Request) -> Response {
    let query = req.uri().query();
    let identity = match authenticate(&node, req.headers(), query, Endpoint::Notifications) {
        Ok(id) => id,
        Err(e) => return auth_failure(&node, e),
    };
    let since = match since_param(query) {
        Ok(s) => s,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, why),
    };
    let user = identity.user.clone();
    if let Some(r) = &node.replication {
        let key = StreamKey::User(user.clone());
        if let (Ok(history), Ok(unread)) = tokio::join!(r.fetch_history(&key, since), r.fetch_unread(&user)) {
            let unread: std::collections::HashSet<&str> = unread
                .entries
                .iter()
                .filter_map(|e| e.meta.notification_key.as_deref())
                .collect();
            let frames: Vec<Frame> = history
                .entries
                .iter()
                .map(|e| {
                    let read = e
                        .meta
                        .notification_key
                        .as_deref()
                        .is_none_or(|k| !unread.contains(k));
                    encode::with_flag(&e.frame, "read", read)
                })
                .collect();
            return frame_response(encode::json_array(frames.iter()));
        }
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    node.fanout.control(
        &StreamKey::User(user.clone()),
        Control::QueryNotifications { user, since, reply },
    );
    match answer.await {
        Ok(frame) => frame_response(frame),
        Err(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
    let mut stats = node.metrics.stats_json(&node.fanout.ring_depths());
    if let Some(r) = &node.replication {
        stats["redis"]["nodes"] = json!(r.nodes());
        stats["redis"]["node_id"] = json!(r.node_id());
    }
    json_response(StatusCode::OK, stats)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.prometheus(&node.fanout.ring_depths()),
    )
        .into_response()
}

/// Liveness: 200 while the node can do its work, 503 once it failed (a
/// fanout worker died) and is draining to exit.
async fn health(State(node): State<Arc<Node>>) -> Response {
    match node.shutdown.failure() {
        Some(why) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "failed", "error": why}),
        ),
        None => json_response(StatusCode::OK, json!({"status": "ok"})),
    }
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_triggered() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting down"}),
        );
    }
    if !node.is_ready() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "redis unavailable"}),
        );
    }
    json_response(StatusCode::OK, json!({"status": "ready"}))
}
