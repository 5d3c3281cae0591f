//! Market data (PROTOCOL.md 1.2, 1.3): subscribe to one or many symbols,
//! get `subscribed` then the latest update, receive only the subscribed
//! symbols, stop after `unsubscribe`; ping/pong; `id` echo.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_symbols_arrive_and_others_do_not() {
    let s = start().await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD", "ETH-USD"], "id": 7}))
        .await;
    let ack = c.recv().await;
    assert_eq!(
        ack,
        json!({"type": "subscribed", "symbols": ["BTC-USD", "ETH-USD"], "id": 7})
    );

    s.publish_ok(json!([
        market_update("SOL-USD", 1.0),
        market_update("BTC-USD", 45000.0),
        market_update("ETH-USD", 3000.0)
    ]))
    .await;
    let a = c.recv().await;
    let b = c.recv().await;
    let mut got: Vec<&str> = vec![a["symbol"].as_str().unwrap(), b["symbol"].as_str().unwrap()];
    got.sort();
    assert_eq!(got, ["BTC-USD", "ETH-USD"]);
    assert_eq!(a["type"], "market_update");
    assert_eq!(a["seq"], 1);
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_symbol_form_and_path_without_slash() {
    let s = start().await;
    let url = format!("ws://{}/ws/market-data?token={}", s.addr, token("bob"));
    let mut c = s.connect_url(&url).await.expect("path without slash is accepted");
    c.send(json!({"type": "subscribe", "symbol": "BTC-USD"})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "subscribed", "symbols": ["BTC-USD"]})
    );
    s.publish_ok(market_update("BTC-USD", 1.5)).await;
    assert_eq!(c.recv().await["price"], 1.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_update_follows_subscribed_at_once() {
    let s = start().await;
    s.publish_ok(json!([
        market_update("BTC-USD", 1.0),
        market_update("BTC-USD", 2.0)
    ]))
    .await;
    // Wait until the second update is the latest one.
    let mut waited = 0;
    while s.get_json("/api/market/BTC-USD").await.1["price"] != 2.0 {
        waited += 1;
        assert!(waited < 200, "update never became the latest");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD", "NEW-SYM"]}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    let latest = c.recv().await;
    assert_eq!(latest["type"], "market_update");
    assert_eq!(latest["price"], 2.0);
    assert_eq!(latest["seq"], 2);
    // NEW-SYM has no update yet: nothing more.
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_of_that_symbol_only() {
    let s = start().await;
    let mut c = s.market("alice", &["BTC-USD", "ETH-USD"]).await;
    c.send(json!({"type": "unsubscribe", "symbols": ["BTC-USD"], "id": "u1"}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "unsubscribed", "symbols": ["BTC-USD"], "id": "u1"})
    );
    s.publish_ok(json!([
        market_update("BTC-USD", 1.0),
        market_update("ETH-USD", 2.0)
    ]))
    .await;
    assert_eq!(c.recv().await["symbol"], "ETH-USD");
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_does_not_repeat_the_snapshot() {
    let s = start().await;
    let mut c = s.market("alice", &["BTC-USD"]).await;
    s.publish_ok(market_update("BTC-USD", 1.0)).await;
    assert_eq!(c.recv().await["seq"], 1);
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"]})).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_rfc3339_utc_and_id() {
    let s = start().await;
    for endpoint in ["market-data", "trading-signals", "notifications"] {
        let mut c = s.connect(endpoint, "alice").await;
        c.send(json!({"type": "ping", "id": "p-1"})).await;
        let pong = c.recv_type("pong").await;
        assert_eq!(pong["id"], "p-1");
        let ts = pong["timestamp"].as_str().expect("timestamp is a string");
        assert!(ts.ends_with('Z'), "{ts}");
        humantime::parse_rfc3339(ts).expect("RFC 3339");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_a_symbol_gets_every_update() {
    let s = start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(s.market(&format!("user{i}"), &["BTC-USD"]).await);
    }
    let batch: Vec<_> = (0..50).map(|i| market_update("BTC-USD", i as f64)).collect();
    s.publish_ok(serde_json::Value::Array(batch)).await;
    for c in &mut clients {
        let got = seqs(c, "market_update", 50).await;
        assert_consecutive(&got, 1);
    }
}
