//! Ordering and resume (PROTOCOL.md 1.4): `since` replays exactly the
//! missed messages and then live ones, with no gap and no duplicate, even
//! while publishing goes on; `reset` when the window does not reach back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn publish_n(s: &TestServer, symbol: &str, n: usize) {
    let batch: Vec<Value> = (0..n).map(|i| market_update(symbol, i as f64)).collect();
    s.publish_ok(Value::Array(batch)).await;
}

/// Waits until the latest update of `symbol` has `seq`.
async fn wait_head(s: &TestServer, symbol: &str, seq: u64) {
    eventually(&format!("{symbol} reached seq {seq}"), || async {
        (s.get_json(&format!("/api/market/{symbol}")).await.1["seq"] == seq).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_exactly_the_missed_then_live_ones() {
    let s = start().await;
    publish_n(&s, "BTC-USD", 10).await;
    wait_head(&s, "BTC-USD", 10).await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": 4}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_consecutive(&seqs(&mut c, "market_update", 6).await, 5);
    publish_n(&s, "BTC-USD", 1).await;
    assert_eq!(c.recv().await["seq"], 11);
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_is_up_to_date_gets_no_snapshot() {
    let s = start().await;
    publish_n(&s, "BTC-USD", 3).await;
    wait_head(&s, "BTC-USD", 3).await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": 3}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_comes_first_when_the_window_does_not_reach_back() {
    let s = start_with(|o| o.history_messages = Some(5)).await;
    publish_n(&s, "BTC-USD", 20).await;
    wait_head(&s, "BTC-USD", 20).await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": 3}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(
        c.recv().await,
        json!({"type": "reset", "stream": "BTC-USD", "seq": 16})
    );
    assert_consecutive(&seqs(&mut c, "market_update", 5).await, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_this_node_never_gave_resets_to_what_it_has() {
    let s = start().await;
    publish_n(&s, "BTC-USD", 3).await;
    wait_head(&s, "BTC-USD", 3).await;
    let mut c = s.connect("market-data", "alice").await;
    c.send(
        json!({"type": "subscribe", "symbols": ["BTC-USD", "NEVER"], "since": {"BTC-USD": 500, "NEVER": 9}}),
    )
    .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    let mut resets = Vec::new();
    let mut updates = Vec::new();
    while resets.len() < 2 || updates.len() < 3 {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("reset") => resets.push(m),
            Some("market_update") => {
                assert!(
                    resets.iter().any(|r| r["stream"] == "BTC-USD"),
                    "reset must come before the replay"
                );
                updates.push(m["seq"].as_u64().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(resets.contains(&json!({"type": "reset", "stream": "BTC-USD", "seq": 1})));
    assert!(resets.contains(&json!({"type": "reset", "stream": "NEVER", "seq": 1})));
    assert_eq!(updates, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_again_and_again_while_publishing_loses_and_repeats_nothing() {
    const TOTAL: u64 = 3000;
    let s = start().await;
    let publisher = {
        let http = s.http.clone();
        let url = s.url("/api/publish");
        tokio::spawn(async move {
            for chunk in 0..(TOTAL / 10) {
                let batch: Vec<Value> = (0..10)
                    .map(|i| market_update("RSM", (chunk * 10 + i) as f64))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                if chunk % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    while seen.last().copied() != Some(TOTAL) {
        let mut c = s.connect("market-data", "alice").await;
        let sub = match seen.last() {
            Some(last) => json!({"type": "subscribe", "symbols": ["RSM"], "since": {"RSM": last}}),
            None => json!({"type": "subscribe", "symbols": ["RSM"]}),
        };
        c.send(sub).await;
        assert_eq!(c.recv().await["type"], "subscribed");
        // Read a while, then drop the connection mid-stream.
        for _ in 0..150 {
            match c.recv_within(Duration::from_millis(500)).await {
                Some(m) => {
                    assert_eq!(
                        m["type"], "market_update",
                        "no reset expected within the window: {m}"
                    );
                    seen.push(m["seq"].as_u64().unwrap());
                }
                None => break,
            }
            if seen.last().copied() == Some(TOTAL) {
                break;
            }
        }
        reconnects += 1;
        assert!(reconnects < 500, "never caught up: last {:?}", seen.last());
    }
    publisher.await.unwrap();
    assert!(reconnects > 3, "the test must actually reconnect mid-stream");
    let first = seen[0];
    assert_consecutive(&seen, first);
}
