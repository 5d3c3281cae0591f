//! Market data under pressure (issue 6, PROTOCOL.md 1.2): a market-data
//! subscriber that cannot keep up is conflated (it gets the latest update
//! of each of its symbols, `seq` showing the jump) instead of being cut;
//! `max_frequency` caps the updates per symbol per second, always sending
//! the latest and never holding the last of a burst back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const SYMBOLS: [&str; 3] = ["A", "B", "C"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_market_subscriber_gets_the_latest_of_each_symbol_and_stays() {
    const ROUNDS: usize = 100;
    let s = start_with(|o| o.outbound_queue_frames = Some(16)).await;
    let mut phone = s.tiny_buffer_market("phone", &SYMBOLS).await;
    let padding = "x".repeat(32 * 1024);
    for round in 0..ROUNDS {
        let batch: Vec<Value> = SYMBOLS
            .iter()
            .map(|sym| json!({"type": "market_update", "symbol": sym, "price": round as f64, "pad": padding}))
            .collect();
        s.publish_ok(Value::Array(batch)).await;
    }
    // Wait until the server had to conflate.
    eventually("the queue overflowed and was conflated", || async {
        (s.stats().await["conflated_frames"].as_u64() > Some(0)).then_some(())
    })
    .await;
    assert_eq!(s.stats().await["slow_consumer_cuts"], 0);

    // Now the phone reads: every symbol ends at its latest price, in
    // rising seq order, with jumps where updates were skipped.
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let mut received = 0;
    while SYMBOLS.iter().any(|sym| last.get(*sym) != Some(&(ROUNDS as u64))) {
        let m = phone.recv_type("market_update").await;
        let (sym, seq) = (
            m["symbol"].as_str().unwrap().to_string(),
            m["seq"].as_u64().unwrap(),
        );
        let prev = last.insert(sym.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{sym}: seq {seq} after {prev}");
        if seq == ROUNDS as u64 {
            assert_eq!(m["price"], (ROUNDS - 1) as f64, "the latest price");
        }
        received += 1;
    }
    assert!(
        received < ROUNDS * SYMBOLS.len(),
        "some updates were conflated away ({received} received)"
    );
    phone.send(json!({"type": "ping"})).await;
    phone.recv_type("pong").await;
}

/// When most subscribers fall behind while they keep reading, it is the
/// server that is behind, not them: fanout pauses (the publishes wait in
/// the ring) until they catch up, and nobody is conflated or cut. (Clients
/// that stop reading altogether are another matter: they are conflated or
/// cut on their own, see `tests/hostile.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_subscriber_lags_fanout_waits_and_nothing_is_conflated() {
    const SUBSCRIBERS: usize = 20;
    const UPDATES: usize = 400;
    let s = start_with(|o| o.outbound_queue_frames = Some(128)).await;
    // Slow readers: one frame every 5 ms each, through a tiny receive
    // buffer, so their sockets are full most of the time but always moving.
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = s.tiny_buffer_market(&format!("user{i}"), &["A"]).await;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(UPDATES);
            while got.len() < UPDATES {
                let m = c.recv_type("market_update").await;
                got.push(m["seq"].as_u64().unwrap());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        }));
    }
    // 400 updates of 16 KiB, 6.4 MiB per subscriber: far more than the
    // socket buffers and each 128-frame queue hold.
    let padding = "x".repeat(16 * 1024);
    for chunk in (0..UPDATES).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"type": "market_update", "symbol": "A", "price": *i as f64, "pad": padding}))
            .collect();
        s.publish_ok(Value::Array(batch)).await;
    }
    // Everyone gets every update, in order.
    for r in readers {
        assert_consecutive(&r.await.unwrap(), 1);
    }
    let stats = s.stats().await;
    assert!(
        stats["backpressure_pauses"].as_u64() > Some(0),
        "fanout never paused: {stats}"
    );
    assert_eq!(stats["conflated_frames"], 0, "{stats}");
    assert_eq!(stats["slow_consumer_cuts"], 0, "{stats}");
    assert_eq!(stats["subscribers_behind"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_frequency_sends_at_most_that_many_and_always_the_latest() {
    let s = start().await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "max_frequency": 2}))
        .await;
    c.recv_type("subscribed").await;
    let mut plain = s.market("bob", &["BTC-USD"]).await;

    let burst: Vec<Value> = (1..=20).map(|i| market_update("BTC-USD", i as f64)).collect();
    s.publish_ok(Value::Array(burst)).await;
    let published = Instant::now();
    // The unthrottled subscriber gets all twenty.
    assert_consecutive(&seqs(&mut plain, "market_update", 20).await, 1);
    // The throttled one: the first at once, then the latest of the burst
    // within one interval (0.5 s), and nothing in between.
    let first = c.recv().await;
    assert_eq!(first["seq"], 1);
    let latest = c.recv().await;
    assert_eq!(latest["seq"], 20, "the newest update, not a stale one: {latest}");
    assert_eq!(latest["price"], 20.0);
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "the last of a burst is not held back"
    );
    c.expect_silence().await;

    // A second burst after a pause: again at most one now and the latest later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let burst: Vec<Value> = (21..=30).map(|i| market_update("BTC-USD", i as f64)).collect();
    s.publish_ok(Value::Array(burst)).await;
    let a = c.recv().await["seq"].as_u64().unwrap();
    let b = c.recv().await["seq"].as_u64().unwrap();
    assert_eq!((a, b), (21, 30));
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_frequency_must_be_positive() {
    let s = start().await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["A"], "max_frequency": 0, "id": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("invalid_field"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_its_keys_rate_is_refused_with_429() {
    let s = start_with(|o| {
        o.publishes_per_second_per_key = Some(10.0);
        o.publish_burst = Some(20);
    })
    .await;
    let mut c = s.market("alice", &["LIM"]).await;
    let batch = |n: usize| Value::Array((0..n).map(|i| market_update("LIM", i as f64)).collect());
    let (status, _) = s.publish(batch(15)).await;
    assert_eq!(status, 202);
    let (status, body) = s.publish(batch(15)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(seqs(&mut c, "market_update", 15).await.len(), 15);
    c.expect_silence().await;
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("tickwire_publishes_rate_limited_total 15"),
        "{metrics}"
    );
}
