//! The HTTP endpoints beside the sockets (PROTOCOL.md 3): latest market
//! data per symbol and for all, the signals polling fallback with its
//! filters, a user's own notifications with their `read` flags, health and
//! readiness, Prometheus metrics and the dashboard's JSON that follow what
//! happens, 426 for a plain GET on a WebSocket path, and both spellings
//! (with and without the trailing slash) of each WebSocket path.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn get_with_token(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    let resp = server
        .http
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {list}"))
        .iter()
        .map(|v| v[field].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The value of one sample (`name{labels}`) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `/metrics` until `series` satisfies `ok`; returns the last text.
async fn metrics_until(server: &TestServer, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = server.get("/metrics").await;
        assert_eq!(status, 200);
        if sample(&text, series).is_some_and(&ok) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached the value; last:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_symbol_is_404_until_published_then_the_latest() {
    let server = start().await;
    let (status, body) = server.get_json("/api/market/HTTP-1").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");

    let mut sub = server.market("alice", &["HTTP-1"]).await;
    server
        .publish_ok(json!([
            market_update("HTTP-1", 1.0),
            market_update("HTTP-1", 2.0)
        ]))
        .await;
    seqs(&mut sub, "market_update", 2).await;
    let (status, body) = server.get_json("/api/market/HTTP-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "market_update");
    assert_eq!(body["symbol"], "HTTP-1");
    assert_eq!(body["price"].as_f64(), Some(2.0), "the latest: {body}");
    assert_eq!(body["seq"], 2);
    assert_eq!(
        server.get_json("/api/market/HTTP-2").await.0,
        404,
        "other symbols still have none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_lists_the_latest_of_every_symbol() {
    let server = start().await;
    let (status, body) = server.get_json("/api/market").await;
    assert_eq!((status, body), (200, json!([])));

    let mut sub = server.market("alice", &["ZZZ-1", "AAA-1", "MMM-1"]).await;
    server
        .publish_ok(json!([
            market_update("ZZZ-1", 1.0),
            market_update("AAA-1", 2.0),
            market_update("MMM-1", 3.0),
            market_update("AAA-1", 4.0),
        ]))
        .await;
    for _ in 0..4 {
        sub.recv_type("market_update").await;
    }
    let (status, body) = server.get_json("/api/market").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body, "symbol"),
        ["AAA-1", "MMM-1", "ZZZ-1"],
        "one per symbol, by symbol: {body}"
    );
    let prices: Vec<f64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["price"].as_f64().unwrap())
        .collect();
    assert_eq!(prices, [4.0, 3.0, 1.0], "{body}");
    assert!(body
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["type"] == "market_update" && u["seq"].is_u64()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_listed_with_symbol_type_and_since_filters() {
    let server = start().await;
    let mut watcher = server.connect("trading-signals", "alice").await;
    watcher.send(json!({"type": "ping"})).await;
    watcher.recv_type("pong").await;
    server
        .publish_ok(json!([
            new_signal("s1", "BTC-USD", "BUY"),
            new_signal("s2", "ETH-USD", "SELL"),
            new_signal("s3", "BTC-USD", "SELL"),
            new_signal("s4", "BTC-USD", "BUY"),
        ]))
        .await;
    seqs(&mut watcher, "new_signal", 4).await;

    for (query, want) in [
        ("", vec!["s1", "s2", "s3", "s4"]),
        ("?symbol=BTC-USD", vec!["s1", "s3", "s4"]),
        ("?signal_type=BUY", vec!["s1", "s4"]),
        ("?signal_type=sell", vec!["s2", "s3"]),
        ("?symbol=BTC-USD&signal_type=SELL", vec!["s3"]),
        ("?since=2", vec!["s3", "s4"]),
        ("?symbol=ETH-USD&since=2", vec![]),
        ("?symbol=&signal_type=&since=", vec!["s1", "s2", "s3", "s4"]),
        ("?since=4", vec![]),
    ] {
        let (status, body) = server.get_json(&format!("/api/signals{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(ids(&body, "signal_id"), want, "{query}: {body}");
    }
    let (_, body) = server.get_json("/api/signals").await;
    let seqs: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "oldest first, with their seq");

    // A token's symbols claim applies when one is given.
    let eth_only = token_with("bob", Some(&["ETH-*"]), Duration::from_secs(3600));
    let (status, body) = get_with_token(&server, "/api/signals", &eth_only).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body, "signal_id"), ["s2"], "{body}");

    assert_eq!(server.get_json("/api/signals?since=yesterday").await.0, 400);
    assert_eq!(server.get_json("/api/signals?signal_type=MAYBE").await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_lists_only_the_callers_with_read_flags() {
    let server = start().await;
    let (mut alice, _) = server.notifications("alice").await;
    let (mut bob, _) = server.notifications("bob").await;
    server
        .publish_ok(json!([
            notification("alice", "a1"),
            notification("bob", "b1"),
            notification("alice", "a2"),
            notification("alice", "a3"),
        ]))
        .await;
    seqs(&mut alice, "new_notification", 3).await;
    seqs(&mut bob, "new_notification", 1).await;

    let (status, list) = get_with_token(&server, "/api/notifications", &token("alice")).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        ids(&list, "notification_id"),
        ["a1", "a2", "a3"],
        "only alice's: {list}"
    );
    for n in list.as_array().unwrap() {
        assert_eq!(n["read"], false, "{n}");
        assert_eq!(n["type"], "new_notification");
        assert!(n.get("user_id").is_none(), "{n}");
    }
    let (_, list) = get_with_token(&server, "/api/notifications?since=1", &token("alice")).await;
    assert_eq!(ids(&list, "notification_id"), ["a2", "a3"], "{list}");
    // The token may come as the query parameter as well.
    let (status, list) = server
        .get_json(&format!("/api/notifications?since=2&token={}", token("alice")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&list, "notification_id"), ["a3"], "{list}");
    let (_, list) = get_with_token(&server, "/api/notifications", &token("bob")).await;
    assert_eq!(ids(&list, "notification_id"), ["b1"], "{list}");

    alice
        .send(json!({"type": "mark_read", "notification_id": "a2", "id": 1}))
        .await;
    let read = alice.recv_type("notification_read").await;
    assert_eq!(read["notification_id"], "a2");
    let (_, list) = get_with_token(&server, "/api/notifications", &token("alice")).await;
    let flags: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["notification_id"].as_str().unwrap().to_string(),
                n["read"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("a1".to_string(), false),
            ("a2".to_string(), true),
            ("a3".to_string(), false)
        ],
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_answer_200() {
    let server = start().await;
    assert_eq!(server.get_json("/health").await, (200, json!({"status": "ok"})));
    assert_eq!(server.get_json("/ready").await, (200, json!({"status": "ready"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_connections_and_deliveries() {
    let server = start().await;
    let resp = server.http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE tickwire_connections gauge"), "{text}");
    assert!(
        text.contains("# TYPE tickwire_messages_out_total counter"),
        "{text}"
    );
    let conns = r#"tickwire_connections{endpoint="market-data"}"#;
    assert_eq!(sample(&text, conns), Some(0.0), "{text}");
    let out_before = sample(&text, "tickwire_messages_out_total").expect("messages out");

    let mut sub = server.market("alice", &["MET-1"]).await;
    metrics_until(&server, conns, |v| v == 1.0).await;
    let text = metrics_until(&server, "tickwire_messages_out_total", |v| v > out_before).await;
    let out_after_subscribe = sample(&text, "tickwire_messages_out_total").unwrap();

    server.publish_ok(market_update("MET-1", 1.0)).await;
    sub.recv_type("market_update").await;
    let text = metrics_until(&server, "tickwire_messages_out_total", |v| {
        v > out_after_subscribe
    })
    .await;
    assert!(
        sample(&text, r#"tickwire_messages_in_total{type="market_update"}"#).is_some_and(|v| v >= 1.0),
        "{text}"
    );

    drop(sub);
    metrics_until(&server, conns, |v| v == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_carry_what_the_dashboard_reads() {
    let server = start().await;
    let mut sub = server.market("alice", &["STAT-1"]).await;
    server.publish_ok(market_update("STAT-1", 1.0)).await;
    sub.recv_type("market_update").await;

    let (status, s) = server.get_json("/api/stats").await;
    assert_eq!(status, 200, "{s}");
    assert!(s["uptime_s"].as_f64().is_some_and(|u| u >= 0.0), "{s}");
    assert_eq!(s["mode"], "embedded");
    assert_eq!(s["redis"]["configured"], false);
    assert!(s["redis"]["connected"].is_boolean(), "{s}");
    assert!(s["redis"]["nodes"].is_array(), "{s}");
    for endpoint in ["market-data", "trading-signals", "notifications", "ingest"] {
        assert!(s["connections"][endpoint].is_u64(), "connections.{endpoint}: {s}");
    }
    assert_eq!(s["connections"]["market-data"], 1, "{s}");
    for kind in ["market_update", "new_signal", "signal_update", "new_notification"] {
        assert!(s["messages_in"][kind].is_u64(), "messages_in.{kind}: {s}");
    }
    assert_eq!(s["messages_in"]["market_update"], 1, "{s}");
    for counter in [
        "messages_out",
        "bytes_out",
        "slow_consumer_cuts",
        "rejected_publishes",
    ] {
        assert!(s[counter].is_u64(), "{counter}: {s}");
    }
    for hist in ["publish_to_write", "publish_to_enqueue"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(s["latency_us"][hist][p].is_u64(), "latency_us.{hist}.{p}: {s}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_a_websocket_path_with_a_valid_token_gets_426() {
    let server = start().await;
    let t = token("alice");
    for path in [
        "/ws/market-data/",
        "/ws/market-data",
        "/ws/trading-signals/",
        "/ws/notifications/",
    ] {
        let (status, _) = server.get(&format!("{path}?token={t}")).await;
        assert_eq!(status, 426, "{path} with ?token=");
        let (status, _) = get_with_token(&server, path, &t).await;
        assert_eq!(status, 426, "{path} with a Bearer header");
        // Authentication comes first: without a token it is still 401.
        assert_eq!(server.get(path).await.0, 401, "{path} without a token");
    }
    let (status, _) = get_with_token(&server, "/ws/ingest", API_KEY).await;
    assert_eq!(status, 426, "/ws/ingest with the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_paths_work_with_and_without_the_trailing_slash() {
    let server = start().await;
    let t = token("alice");
    for endpoint in ["market-data", "trading-signals", "notifications"] {
        for path in [format!("/ws/{endpoint}/"), format!("/ws/{endpoint}")] {
            let url = format!("ws://{}{}?token={t}", server.addr, path);
            let mut c = server
                .connect_url(&url)
                .await
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            c.send(json!({"type": "ping", "id": path.clone()})).await;
            assert_eq!(c.recv_type("pong").await["id"], path.as_str());
        }
    }
    for path in ["/ws/market-data", "/ws/market-data/"] {
        let url = format!("ws://{}{}?token={t}", server.addr, path);
        let mut c = server.connect_url(&url).await.unwrap();
        c.send(json!({"type": "subscribe", "symbols": ["SLASH-1"]})).await;
        c.recv_type("subscribed").await;
        server.publish_ok(market_update("SLASH-1", 1.0)).await;
        assert_eq!(c.recv_type("market_update").await["symbol"], "SLASH-1", "{path}");
    }
}
