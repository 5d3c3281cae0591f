//! One socket for every stream (PROTOCOL.md 5.1): `/ws/stream/` carries
//! market data, signals and notifications together, each by the rules of
//! its own endpoint: isolation between users, `symbols` claims, resuming
//! with `since` on several streams at once, `mark_read` echoed to the
//! user's sockets on every endpoint, `invalid_field` for a command of a
//! stream the socket does not carry, one `pong` per `ping`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A `/ws/stream/` socket (with `query` after `?token=..&`), its
/// `unread_notifications` taken when it carries notifications.
async fn stream(s: &TestServer, user: &str, query: &str) -> (Client, Option<Value>) {
    let url = format!("ws://{}/ws/stream/?token={}&{query}", s.addr, token(user));
    let mut c = s.connect_url(&url).await.expect("handshake accepted");
    let carries_notifications = query.is_empty() || query.contains("notifications");
    let unread = match carries_notifications {
        true => Some(c.recv_type("unread_notifications").await),
        false => None,
    };
    (c, unread)
}

/// Waits until the latest update of `symbol` has `seq`.
async fn wait_head(s: &TestServer, symbol: &str, seq: u64) {
    eventually(&format!("{symbol} reached seq {seq}"), || async {
        (s.get_json(&format!("/api/market/{symbol}")).await.1["seq"] == seq).then_some(())
    })
    .await;
}

/// Waits until the signals polling endpoint lists the signal of `seq`.
async fn wait_signals(s: &TestServer, seq: u64) {
    let path = format!("/api/signals?token={}", token("poller"));
    eventually(&format!("signal {seq} kept"), || async {
        let (_, v) = s.get_json(&path).await;
        let list = v.as_array()?;
        list.iter().any(|x| x["seq"] == seq).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_receives_all_three_kinds_and_nothing_of_another_user() {
    let s = start().await;
    let (mut alice, unread) = stream(&s, "alice", "").await;
    assert_eq!(
        unread.unwrap(),
        json!({"type": "unread_notifications", "notifications": []})
    );
    alice
        .send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "id": 1}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "subscribed", "symbols": ["BTC-USD"], "id": 1})
    );
    s.publish_ok(notification("bob", "for-bob")).await;
    s.publish_ok(market_update("ETH-USD", 1.0)).await;
    s.publish_ok(market_update("BTC-USD", 2.0)).await;
    s.publish_ok(new_signal("sig1", "ETH-USD", "BUY")).await;
    s.publish_ok(notification("alice", "for-alice")).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(alice.recv().await);
    }
    got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
    assert_eq!(got[0]["type"], "market_update");
    assert_eq!(
        (got[0]["symbol"].as_str(), got[0]["seq"].as_u64()),
        (Some("BTC-USD"), Some(1))
    );
    assert_eq!(got[1]["type"], "new_notification");
    assert_eq!(got[1]["notification_id"], "for-alice");
    assert!(got[1].get("user_id").is_none(), "user_id leaked: {}", got[1]);
    assert_eq!(got[2]["type"], "new_signal");
    assert_eq!(got[2]["signal_id"], "sig1");
    // Neither bob's notification nor a symbol alice did not subscribe to.
    alice.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_symbols_claim_holds_for_market_data_and_signals_on_the_one_socket() {
    let s = start().await;
    let t = token_with("carol", Some(&["ETH-*"]), Duration::from_secs(3600));
    let url = format!(
        "ws://{}/ws/stream/?token={t}&streams=market-data,trading-signals",
        s.addr
    );
    let mut c = s.connect_url(&url).await.unwrap();
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"]})).await;
    assert_eq!(c.recv().await["code"], "forbidden");
    c.send(json!({"type": "filter", "symbol": "BTC-USD"})).await;
    assert_eq!(c.recv().await["code"], "forbidden");
    s.publish_ok(new_signal("btc", "BTC-USD", "BUY")).await;
    s.publish_ok(new_signal("eth", "ETH-USD", "SELL")).await;
    let v = c.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["signal_id"].as_str()),
        (Some("new_signal"), Some("eth"))
    );
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_on_market_data_and_signals_at_once() {
    let s = start().await;
    s.publish_ok(Value::Array(
        (0..6).map(|i| market_update("BTC-USD", i as f64)).collect(),
    ))
    .await;
    s.publish_ok(Value::Array(
        (0..4)
            .map(|i| new_signal(&format!("s{i}"), "BTC-USD", "BUY"))
            .collect(),
    ))
    .await;
    wait_head(&s, "BTC-USD", 6).await;
    wait_signals(&s, 4).await;
    let (mut c, _) = stream(&s, "alice", "streams=market-data,trading-signals").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": 2}}))
        .await;
    c.send(json!({"type": "filter", "symbol": null, "signal_type": null, "since": 1}))
        .await;
    let mut market = Vec::new();
    let mut signals = Vec::new();
    let mut answers = Vec::new();
    while market.len() < 4 || signals.len() < 3 || answers.len() < 2 {
        let v = c.recv().await;
        match v["type"].as_str().unwrap() {
            "market_update" => market.push(v["seq"].as_u64().unwrap()),
            "new_signal" => signals.push(v["seq"].as_u64().unwrap()),
            "subscribed" | "filtered" => answers.push(v),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_consecutive(&market, 3);
    assert_consecutive(&signals, 2);
    // Then live ones of both, with no gap and no duplicate.
    s.publish_ok(market_update("BTC-USD", 9.0)).await;
    s.publish_ok(new_signal("live", "BTC-USD", "SELL")).await;
    let mut live: Vec<(String, u64)> = Vec::new();
    for _ in 0..2 {
        let v = c.recv().await;
        live.push((v["type"].as_str().unwrap().into(), v["seq"].as_u64().unwrap()));
    }
    live.sort();
    assert_eq!(live, [("market_update".into(), 7), ("new_signal".into(), 5)]);
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_names_its_stream_on_the_one_socket() {
    let s = start_with(|o| o.history_messages = Some(3)).await;
    s.publish_ok(Value::Array(
        (0..8).map(|i| market_update("BTC-USD", i as f64)).collect(),
    ))
    .await;
    s.publish_ok(Value::Array(
        (0..8)
            .map(|i| new_signal(&format!("s{i}"), "BTC-USD", "BUY"))
            .collect(),
    ))
    .await;
    wait_head(&s, "BTC-USD", 8).await;
    wait_signals(&s, 8).await;
    let (mut c, _) = stream(&s, "alice", "streams=trading-signals,market-data").await;
    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": 1}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(
        c.recv().await,
        json!({"type": "reset", "stream": "BTC-USD", "seq": 6})
    );
    assert_consecutive(&seqs(&mut c, "market_update", 3).await, 6);
    c.send(json!({"type": "filter", "since": 1})).await;
    assert_eq!(c.recv().await["type"], "filtered");
    assert_eq!(
        c.recv().await,
        json!({"type": "reset", "stream": "signals", "seq": 6})
    );
    assert_consecutive(&seqs(&mut c, "new_signal", 3).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_of_a_stream_not_carried_is_invalid_field_and_nothing_of_it_arrives() {
    let s = start().await;
    let (mut c, unread) = stream(&s, "alice", "streams=market-data").await;
    assert!(unread.is_none());
    c.send(json!({"type": "filter", "symbol": null, "id": "f"})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("invalid_field"), Some("f"))
    );
    c.send(json!({"type": "mark_read", "notification_id": "n1", "id": 2}))
        .await;
    assert_eq!(c.recv().await["code"], "invalid_field");
    c.send(json!({"type": "nonsense"})).await;
    assert_eq!(c.recv().await["code"], "unknown_type");
    s.publish_ok(new_signal("sig", "BTC-USD", "BUY")).await;
    s.publish_ok(notification("alice", "n1")).await;
    c.expect_silence().await;
    // The other way round: no market data on a socket without it.
    let (mut n, _) = stream(&s, "alice", "streams=notifications,trading-signals").await;
    n.send(json!({"type": "subscribe", "symbols": ["BTC-USD"]})).await;
    assert_eq!(n.recv().await["code"], "invalid_field");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_streams_list_or_no_token_is_refused_before_the_upgrade() {
    let s = start_with(|o| o.allow_anonymous_market_data = Some(true)).await;
    for query in ["streams=", "streams=market-data,ingest", "streams=everything"] {
        let url = format!("ws://{}/ws/stream/?token={}&{query}", s.addr, token("alice"));
        match s.connect_url(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{query}")
            }
            Err(e) => panic!("{query}: {e}"),
            Ok(_) => panic!("{query} was accepted"),
        }
    }
    // Anonymous market data is `/ws/market-data/`'s switch alone.
    let url = format!("ws://{}/ws/stream?streams=market-data", s.addr);
    match s.connect_url(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("anonymous accepted on /ws/stream: {:?}", other.is_ok()),
    }
    // Without the slash, with a token, it opens.
    let url = format!("ws://{}/ws/stream?token={}", s.addr, token("alice"));
    let mut c = s.connect_url(&url).await.unwrap();
    c.recv_type("unread_notifications").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_once() {
    let s = start().await;
    let (mut c, _) = stream(&s, "alice", "").await;
    c.send(json!({"type": "ping", "id": 7})).await;
    let pong = c.recv().await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_i64()),
        (Some("pong"), Some(7))
    );
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_reaches_the_users_sockets_on_every_endpoint() {
    let s = start().await;
    let (mut multi, _) = stream(&s, "alice", "").await;
    let (mut tab, _) = s.notifications("alice").await;
    let (mut other, _) = stream(&s, "bob", "").await;
    s.publish_ok(json!([notification("alice", "n1"), notification("alice", "n2")]))
        .await;
    for c in [&mut multi, &mut tab] {
        assert_eq!(seqs(c, "new_notification", 2).await, [1, 2]);
    }
    multi
        .send(json!({"type": "mark_read", "notification_id": "n1", "id": 5}))
        .await;
    assert_eq!(
        multi.recv().await,
        json!({"type": "notification_read", "notification_id": "n1", "id": 5})
    );
    assert_eq!(
        tab.recv().await,
        json!({"type": "notification_read", "notification_id": "n1"})
    );
    tab.send(json!({"type": "mark_read", "notification_id": "n2"}))
        .await;
    assert_eq!(tab.recv().await["type"], "notification_read");
    assert_eq!(
        multi.recv().await,
        json!({"type": "notification_read", "notification_id": "n2"})
    );
    other.expect_silence().await;
    // Stored: a new socket of either kind has nothing unread.
    drop(multi);
    let (_again, unread) = stream(&s, "alice", "streams=notifications").await;
    assert_eq!(unread.unwrap()["notifications"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_socket_is_counted_as_its_own_endpoint() {
    let s = start().await;
    let (_c, _) = stream(&s, "alice", "").await;
    let (_m, _) = (s.market("alice", &["A"]).await, ());
    let stats = s.stats().await;
    assert_eq!(stats["connections"]["stream"], 1, "{stats}");
    assert_eq!(stats["connections"]["market-data"], 1, "{stats}");
    let (_, text) = s.get("/metrics").await;
    assert!(
        text.contains("tickwire_connections{endpoint=\"stream\"} 1"),
        "{text}"
    );
}
