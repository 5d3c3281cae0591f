//! Trading signals (PROTOCOL.md 1.2, 1.3): a new connection sees every
//! signal it may see; `filter` narrows by symbol and type, `null` widens;
//! `signal_update` is completed from the signal's state and filtered by it.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfiltered_connections_see_every_signal() {
    let s = start().await;
    let mut c = s.connect("trading-signals", "alice").await;
    c.send(json!({"type": "ping"})).await;
    c.recv_type("pong").await;
    s.publish_ok(json!([
        new_signal("s1", "BTC-USD", "BUY"),
        new_signal("s2", "ETH-USD", "SELL")
    ]))
    .await;
    let a = c.recv().await;
    let b = c.recv().await;
    assert_eq!(
        (a["signal_id"].as_str(), a["seq"].as_u64()),
        (Some("s1"), Some(1))
    );
    assert_eq!(
        (b["signal_id"].as_str(), b["seq"].as_u64()),
        (Some("s2"), Some(2))
    );
    assert_eq!(a["type"], "new_signal");
    assert_eq!(a["confidence_score"], 85);
    assert_eq!(a["strength"], "STRONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_hides_other_symbols_and_types_and_null_means_any() {
    let s = start().await;
    let mut c = s.connect("trading-signals", "alice").await;
    c.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": "BUY", "id": 3}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "filtered", "symbol": "BTC-USD", "signal_type": "BUY", "id": 3})
    );
    s.publish_ok(json!([
        new_signal("s1", "BTC-USD", "SELL"),
        new_signal("s2", "ETH-USD", "BUY"),
        new_signal("s3", "BTC-USD", "BUY"),
    ]))
    .await;
    let got = c.recv().await;
    assert_eq!(got["signal_id"], "s3");
    c.expect_silence().await;

    c.send(json!({"type": "filter", "symbol": null, "signal_type": null}))
        .await;
    assert_eq!(
        c.recv().await,
        json!({"type": "filtered", "symbol": null, "signal_type": null})
    );
    s.publish_ok(new_signal("s4", "ETH-USD", "HOLD")).await;
    assert_eq!(c.recv().await["signal_id"], "s4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_updates_carry_and_are_filtered_by_the_signals_state() {
    let s = start().await;
    let mut btc = s.connect("trading-signals", "alice").await;
    btc.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": null}))
        .await;
    btc.recv_type("filtered").await;
    let mut eth = s.connect("trading-signals", "bob").await;
    eth.send(json!({"type": "filter", "symbol": "ETH-USD", "signal_type": null}))
        .await;
    eth.recv_type("filtered").await;

    s.publish_ok(new_signal("sig-1", "BTC-USD", "BUY")).await;
    assert_eq!(btc.recv().await["signal_id"], "sig-1");
    s.publish_ok(
        json!({"type": "signal_update", "signal_id": "sig-1", "confidence_score": 91, "target_price": 51000}),
    )
    .await;
    let u = btc.recv().await;
    assert_eq!(u["type"], "signal_update");
    assert_eq!(u["symbol"], "BTC-USD");
    assert_eq!(u["signal_type"], "BUY");
    assert_eq!(u["confidence_score"], 91);
    assert_eq!(u["target_price"], 51000);
    assert_eq!(u["seq"], 2);
    eth.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_signal_type_moves_the_signal_between_filters() {
    let s = start().await;
    let mut sells = s.connect("trading-signals", "alice").await;
    sells
        .send(json!({"type": "filter", "symbol": null, "signal_type": "SELL"}))
        .await;
    sells.recv_type("filtered").await;
    s.publish_ok(new_signal("sig-1", "BTC-USD", "BUY")).await;
    s.publish_ok(json!({"type": "signal_update", "signal_id": "sig-1", "signal_type": "SELL"}))
        .await;
    let u = sells.recv().await;
    assert_eq!(
        (u["type"].as_str(), u["signal_type"].as_str()),
        (Some("signal_update"), Some("SELL"))
    );
    s.publish_ok(json!({"type": "signal_update", "signal_id": "sig-1", "confidence_score": 10}))
        .await;
    assert_eq!(sells.recv().await["signal_type"], "SELL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limited_to_some_symbols_never_sees_others_signals() {
    let s = start().await;
    let t = token_with("carol", Some(&["ETH-*"]), std::time::Duration::from_secs(600));
    let mut c = s.connect_token("trading-signals", &t).await;
    c.send(json!({"type": "ping"})).await;
    c.recv_type("pong").await;
    s.publish_ok(json!([
        new_signal("a", "BTC-USD", "BUY"),
        new_signal("b", "ETH-USD", "BUY")
    ]))
    .await;
    assert_eq!(c.recv().await["signal_id"], "b");
    c.expect_silence().await;
    c.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": null, "id": 1}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("forbidden"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_with_since_replays_the_matching_missed_signals() {
    let s = start().await;
    s.publish_ok(json!([
        new_signal("a", "BTC-USD", "BUY"),
        new_signal("b", "ETH-USD", "BUY"),
        new_signal("c", "BTC-USD", "SELL"),
        new_signal("d", "BTC-USD", "BUY"),
    ]))
    .await;
    let mut c = s.connect("trading-signals", "alice").await;
    c.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": "BUY", "since": 1}))
        .await;
    assert_eq!(c.recv().await["type"], "filtered");
    let d = c.recv().await;
    assert_eq!((d["signal_id"].as_str(), d["seq"].as_u64()), (Some("d"), Some(4)));
    c.expect_silence().await;
}
