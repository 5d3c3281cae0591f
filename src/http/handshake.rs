//! WebSocket handshakes: the token or key checked before the upgrade
//! (PROTOCOL.md 1.1), the connection limits, the upgrade itself, and the
//! hand-over of the socket to its connection task.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::FutureExt;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{auth_failure, authenticate, error_response, PeerAddr};
use crate::auth::{self, Identity};
use crate::connection::{self, Accepted, OpenSubscriber};
use crate::node::{AdmitError, ConnectionPermit, Node};
use crate::protocol::deflate;
use crate::protocol::frame::{Deflate, Encoding, Format};
use crate::protocol::{Endpoint, Streams};

/// Bytes a subscriber connection reads from its socket at a time (a larger
/// message is still read whole, the buffer growing to hold it): commands
/// are small, and this buffer is held by every idle connection (`loadgen
/// idle`: 4 KiB of it was a third of an idle connection's memory, and 256
/// bytes still cost 190 more than this). A `subscribe` to a symbol or two
/// fits.
const READ_BUFFER_BYTES: usize = 64;
/// Publishers send large batches on `/ws/ingest`: read them in big chunks.
const INGEST_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Frames are written once this much is buffered, or at the end of a batch.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

pub(super) fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

pub(super) async fn upgrade(node: Arc<Node>, endpoint: Endpoint, mut req: Request) -> Response {
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
    let streams = match streams_of(endpoint, req.uri().query()) {
        Ok(s) => s,
        Err(refusal) => return *refusal,
    };
    let format = match format_of(endpoint, req.uri().query()) {
        Ok(f) => f,
        Err(refusal) => return *refusal,
    };
    let key = match websocket_key(headers) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    if !node.is_ready() && !node.shutdown.is_triggered() {
        // A cluster node without its Redis link cannot resume a client
        // correctly (it would answer from its own, possibly empty, memory):
        // send new clients elsewhere, as /ready says. Open ones stay.
        return *refuse(&node, AdmitError::NotReady);
    }
    // permessage-deflate for subscribers (PROTOCOL.md 5.2); publishers'
    // batches are not compressed.
    let agreed = (endpoint != Endpoint::Ingest && node.config.compression)
        .then(|| offered_deflate(req.headers()))
        .flatten();
    let encoding = encoding_for(format, agreed.as_ref(), node.config.compression_min_bytes);
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
    let opening = Opening {
        node,
        endpoint,
        streams,
        identity,
        config,
        peer,
        encoding,
    };
    tokio::spawn(connection_task(on_upgrade, opening, permit));
    switching_protocols(&key, agreed.as_ref())
}

/// The permessage-deflate offer of a handshake the server takes, if any.
fn offered_deflate(headers: &HeaderMap) -> Option<deflate::Agreed> {
    deflate::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// How a socket's frames are sent, from what its handshake asked and agreed.
fn encoding_for(format: Format, agreed: Option<&deflate::Agreed>, min_bytes: u16) -> Encoding {
    Encoding {
        format,
        deflate: agreed.map(|a| Deflate {
            min_bytes,
            window_bits: a.server_window_bits,
        }),
    }
}

/// What a subscriber socket carries: its endpoint's stream, or on
/// `/ws/stream/` the `streams` query parameter (all three when absent,
/// PROTOCOL.md 5.1); a list naming anything else is refused with 400
/// before the upgrade, like a bad token.
fn streams_of(endpoint: Endpoint, query: Option<&str>) -> Result<Streams, Box<Response>> {
    if endpoint != Endpoint::Stream {
        return Ok(Streams::of(endpoint));
    }
    match query.and_then(|q| auth::query_param(q, "streams")) {
        None => Ok(Streams::ALL),
        Some(list) => {
            Streams::parse(&list).map_err(|why| Box::new(error_response(StatusCode::BAD_REQUEST, why)))
        }
    }
}

/// The `format` query parameter (PROTOCOL.md 5.3): `json` (the default)
/// or `msgpack` on a subscriber endpoint; publishers speak JSON. Anything
/// else is refused with 400 before the upgrade.
fn format_of(endpoint: Endpoint, query: Option<&str>) -> Result<Format, Box<Response>> {
    let Some(asked) = query.and_then(|q| auth::query_param(q, "format")) else {
        return Ok(Format::Json);
    };
    match Format::parse(&asked) {
        Some(Format::MsgPack) if endpoint == Endpoint::Ingest => Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "/ws/ingest speaks JSON: `format=msgpack` is for subscriber endpoints",
        ))),
        Some(f) => Ok(f),
        None => Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "`format` is json or msgpack",
        ))),
    }
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
    node.admit(peer.ip()).map_err(|e| refuse(node, e))
}

/// A refused handshake, counted.
fn refuse(node: &Node, e: AdmitError) -> Box<Response> {
    node.metrics.handshake_rejected();
    Box::new(error_response(e.status(), e))
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

fn switching_protocols(key: &HeaderValue, deflate: Option<&deflate::Agreed>) -> Response {
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(key.as_bytes()));
    if let Some(agreed) = deflate {
        resp = resp.header(header::SEC_WEBSOCKET_EXTENSIONS, &agreed.response);
    }
    resp.body(Body::empty())
        .unwrap_or_else(|_| error_response(StatusCode::INTERNAL_SERVER_ERROR, "handshake"))
}

/// `/ws/echo`, for the Autobahn conformance run only (feature `test-echo`):
/// no token, but the same handshake checks, connection limits and
/// WebSocket limits as `/ws/market-data/`.
#[cfg(feature = "test-echo")]
pub(super) async fn upgrade_echo(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    mut req: Request,
) -> Response {
    let key = match websocket_key(req.headers()) {
        Ok(k) => k,
        Err(refusal) => return *refusal,
    };
    let peer = peer_addr(&req);
    let permit = match admit(&node, peer) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let agreed = node
        .config
        .compression
        .then(|| offered_deflate(req.headers()))
        .flatten();
    let encoding = encoding_for(Format::Json, agreed.as_ref(), node.config.compression_min_bytes);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ws_config = ws_config(node.config.max_message_bytes, READ_BUFFER_BYTES);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Some(accepted) = Accepted::from_upgrade(upgraded, ws_config, peer, encoding) else {
            return;
        };
        crate::echo::serve(accepted, node.connections.clone()).await;
        drop(permit);
    });
    switching_protocols(&key, agreed.as_ref())
}

/// A WebSocket connection's task, from the upgrade to the close. Its setup
/// ([`open`]) is boxed and freed once done, then the open connection is
/// served: `then` holds one of the two at a time, where a single async
/// block would keep everything it was given (the upgrade, the identity,
/// the config) beside the open connection for its whole life.
fn connection_task(
    on_upgrade: OnUpgrade,
    opening: Opening,
    permit: ConnectionPermit,
) -> impl Future<Output = ()> + Send + 'static {
    Box::pin(open(on_upgrade, opening)).then(|mut open| async move {
        let _permit = permit;
        // Served in place: moved out, it would be kept twice.
        if let Some(subscriber) = &mut open {
            subscriber.serve().await;
        }
    })
}

/// Everything a connection's setup is given.
struct Opening {
    node: Arc<Node>,
    endpoint: Endpoint,
    streams: Streams,
    identity: Identity,
    config: WebSocketConfig,
    peer: SocketAddr,
    encoding: Encoding,
}

/// Completes the upgrade; a subscriber's connection comes back set up, to
/// be served, a publisher's is served here to its end.
async fn open(on_upgrade: OnUpgrade, opening: Opening) -> Option<OpenSubscriber> {
    let Opening {
        node,
        endpoint,
        streams,
        identity,
        config,
        peer,
        encoding,
    } = opening;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "upgrade failed");
            return None;
        }
    };
    let Some(accepted) = Accepted::from_upgrade(upgraded, config, peer, encoding) else {
        tracing::warn!(%peer, "upgraded connection is not a TCP stream");
        return None;
    };
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
        return None;
    }
    Some(connection::open_subscriber(accepted, node.connections.clone(), endpoint, streams, identity).await)
}
