//! Keeping connections honest (issue 6): the server pings every
//! connection each `ping_interval_secs`; a client that answers (any frame,
//! pongs included) stays open, one that says nothing for
//! `idle_timeout_secs` is closed with 1001 "idle timeout".

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn quick_keepalive() -> TestServer {
    start_with(|o| {
        o.ping_interval_secs = Some(0.2);
        o.idle_timeout_secs = Some(1.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_a_client_that_answers_stays_open() {
    let s = quick_keepalive().await;
    let mut c = s.market("alice", &["BTC-USD"]).await;
    // Reading lets tungstenite answer each ping with a pong.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1800);
    while let Ok(msg) = tokio::time::timeout_at(until, c.ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => panic!("closed although it answered every ping: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection failed: {other:?}"),
        }
    }
    assert!(pings >= 4, "{pings} pings in 1.8 s at one per 0.2 s");
    c.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(c.recv_type("pong").await["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_with_1001_after_the_idle_timeout() {
    let s = quick_keepalive().await;
    let mut silent = s.market("bob", &["BTC-USD"]).await;
    let mut chatty = s.market("carol", &["BTC-USD"]).await;
    // Neither reads, so neither answers pings; carol sends commands.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        chatty.send(json!({"type": "ping", "id": i})).await;
    }
    let closed = silent.closed().await;
    assert_eq!(closed.code, Some(1001), "{closed:?}");
    assert_eq!(closed.reason, "idle timeout");
    // Commands count as being heard from.
    chatty.send(json!({"type": "ping", "id": "last"})).await;
    let mut ids = Vec::new();
    while ids.last() != Some(&json!("last")) {
        ids.push(chatty.recv_type("pong").await["id"].clone());
    }
    assert_eq!(ids.len(), 9, "every command answered: {ids:?}");
}
