//! The `/ws/echo` connection, built only with the `test-echo` feature so
//! that the Autobahn|TestSuite cases (run by `scripts/autobahn`) can drive
//! tickwire's WebSocket layer: the same handshake and the same
//! `WebSocketConfig` limits as the subscriber endpoints, but no token and
//! no protocol. It sends back every text and binary message as received,
//! and closes with the subscriber endpoints' codes on the same read
//! errors (1009, 1007, 1002). Production builds never contain it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::connection::Socket;
use crate::outbox::CloseReason;
use crate::server::Node;

/// How long one echo may take to write before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Echoes until the client closes, a read fails, or the node shuts down.
pub async fn serve(mut ws: Socket, node: Arc<Node>) {
    let reason = loop {
        let msg = tokio::select! {
            biased;
            _ = node.shutdown.wait() => break CloseReason::GoingAway,
            msg = ws.next() => msg,
        };
        let echo = match msg {
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            // Pings are answered and close frames returned by tungstenite on
            // the next read; keep reading so that it can.
            Some(Ok(_)) => continue,
            Some(Err(WsError::Capacity(_))) => break CloseReason::TooBig,
            Some(Err(WsError::Utf8(_))) => break CloseReason::BadUtf8,
            Some(Err(WsError::Protocol(_))) => break CloseReason::ProtocolViolation,
            Some(Err(_)) => return,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, ws.send(echo)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    };
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.text().into(),
    };
    if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await {
        let _ = tokio::time::timeout(CLOSE_GRACE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    }
}
