//! The HTTP face of a node: WebSocket handshakes (authenticated before the
//! upgrade, PROTOCOL.md 1.1: [`handshake`]), publishing (2: [`publish`]),
//! the polling endpoints (3: [`query`]), monitoring and the static pages.
//! Handlers parse and answer; the work is done by ingress, fanout and the
//! connection tasks. It is handed the node, which it may read, never the
//! other way round.

mod handshake;
mod publish;
mod query;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rust_embed::RustEmbed;
use serde_json::json;

use crate::auth::{self, AuthError, Identity, TokenSource};
use crate::node::Node;
use crate::protocol::encode::Frame;
use crate::protocol::Endpoint;
use handshake::upgrade;
#[cfg(feature = "test-echo")]
use handshake::upgrade_echo;
use publish::publish;
use query::{market_all, market_one, notifications, signals};

/// The client's address, put on each request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new();
    for (path, endpoint) in [
        ("/ws/market-data", Endpoint::MarketData),
        ("/ws/trading-signals", Endpoint::TradingSignals),
        ("/ws/notifications", Endpoint::Notifications),
        ("/ws/stream", Endpoint::Stream),
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

pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn frame_response(frame: Frame) -> Response {
    let body: bytes::Bytes = frame.into();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn error_response(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, json!({"error": message.to_string()}))
}

pub(super) fn redirect(to: &'static str) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
}

pub(super) fn asset(path: &str) -> Response {
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
pub(super) fn authenticate(
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

pub(super) fn auth_failure(node: &Node, e: AuthError) -> Response {
    node.metrics.handshake_rejected();
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = error_response(status, &e);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

async fn stats(State(node): State<Arc<Node>>) -> Response {
    let mut stats = node.metrics.stats_json(&node.fanout.gauges());
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
        node.metrics.prometheus(&node.fanout.gauges()),
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
