//! The polling endpoints (PROTOCOL.md 3): the latest market updates,
//! recent signals and a user's notifications, narrowed to what a token
//! allows when one is given.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::{auth_failure, authenticate, error_response, frame_response};
use crate::auth::{self, AuthError, SymbolAccess};
use crate::fanout::Control;
use crate::node::Node;
use crate::protocol::encode::{self, Frame};
use crate::protocol::{Endpoint, Seq, SignalType, StreamKey};
use crate::registry::SignalFilter;

/// The symbols a polling request may see: all, or its token's claim
/// when it carries one (a token is optional on these endpoints).
fn optional_access(node: &Node, headers: &HeaderMap, query: Option<&str>) -> Result<SymbolAccess, AuthError> {
    match auth::find_token(headers, query) {
        None => Ok(SymbolAccess::All),
        Some(_) => authenticate(node, headers, query, Endpoint::MarketData).map(|id| id.symbols),
    }
}

pub(super) async fn market_one(
    State(node): State<Arc<Node>>,
    Path(symbol): Path<String>,
    req: Request,
) -> Response {
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

pub(super) async fn market_all(State(node): State<Arc<Node>>, req: Request) -> Response {
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

pub(super) async fn signals(State(node): State<Arc<Node>>, req: Request) -> Response {
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

pub(super) async fn notifications(State(node): State<Arc<Node>>, req: Request) -> Response {
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
