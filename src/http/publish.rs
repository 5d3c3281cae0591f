//! `POST /api/publish` (PROTOCOL.md 2): the body read within its limit
//! (a body over it is read on for a while before the 413, so that the
//! client sees it), the `Idempotency-Key`, and the answer of ingress.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::handshake::header_has;
use super::{auth_failure, error_response, json_response};
use crate::auth::{self};
use crate::ingress::Outcome;
use crate::node::Node;
use crate::protocol::ErrorCode;
use crate::replication::idempotency;

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

pub(super) async fn publish(State(node): State<Arc<Node>>, headers: HeaderMap, body: Body) -> Response {
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
