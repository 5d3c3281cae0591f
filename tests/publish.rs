//! Publishing (PROTOCOL.md 2): `POST /api/publish` takes one message or a
//! batch, answers 202/400/401/413 as documented, publishes the valid entries
//! of a partly invalid batch, and numbers a batch's messages in order;
//! `/ws/ingest` does the same over a socket, answering only errors (with
//! their `index`); what a publisher sets is forwarded as published, except
//! `user_id` and `seq`; a `signal_update` of an unknown signal is refused.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

async fn ingest(server: &TestServer) -> Client {
    let mut req = format!("ws://{}/ws/ingest", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    server
        .connect_request(req)
        .await
        .expect("ingest accepts the API key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_message_is_accepted_with_202_and_delivered() {
    let server = start().await;
    let mut sub = server.market("alice", &["BTC-USD"]).await;
    let (status, body) = server.publish(market_update("BTC-USD", 45000.5)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 1}));
    let u = sub.recv_type("market_update").await;
    assert_eq!(u["price"], 45000.5);
    assert_eq!(u["seq"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_entries_of_a_batch_get_400_with_per_index_errors_and_the_valid_ones_are_delivered() {
    let server = start().await;
    let mut sub = server.market("alice", &["MIX-1"]).await;
    let batch = json!([
        market_update("MIX-1", 1.0),
        {"type": "market_update", "price": 2.0},
        {"type": "no_such_type", "symbol": "MIX-1"},
        {"type": "market_update", "symbol": "MIX-1", "price": "three"},
        {"type": "new_signal", "signal_id": "s", "symbol": "MIX-1", "signal_type": "MAYBE"},
        {"type": "new_notification", "title": "no user"},
        {"symbol": "MIX-1", "price": 6.0},
        market_update("MIX-1", 7.0),
    ]);
    let (status, body) = server.publish(batch).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    let errors = body["errors"].as_array().expect("errors array");
    let got: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, "missing_field"),
            (2, "unknown_type"),
            (3, "invalid_field"),
            (4, "invalid_field"),
            (5, "missing_field"),
            (6, "missing_field"),
        ],
        "{body}"
    );
    let a = sub.recv_type("market_update").await;
    let b = sub.recv_type("market_update").await;
    assert_eq!(
        (a["price"].as_f64(), a["seq"].as_u64()),
        (Some(1.0), Some(1)),
        "{a}"
    );
    assert_eq!(
        (b["price"].as_f64(), b["seq"].as_u64()),
        (Some(7.0), Some(2)),
        "{b}"
    );
    sub.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_gets_400_invalid_json() {
    let server = start().await;
    let (status, body) = server.publish_raw("{not json".into(), API_KEY).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["errors"][0]["code"], "invalid_json", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_without_the_api_key_gets_401_and_publishes_nothing() {
    let server = start().await;
    let mut sub = server.market("alice", &["KEY-1"]).await;
    let body = market_update("KEY-1", 1.0).to_string();
    let (status, _) = server.publish_raw(body.clone(), "wrong-api-key-value").await;
    assert_eq!(status, 401);
    let resp = server
        .http
        .post(server.url("/api/publish"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no Authorization header");
    // A subscriber's JWT is not a publisher key.
    let (status, _) = server.publish_raw(body, &token("alice")).await;
    assert_eq!(status, 401, "a JWT as the key");
    sub.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_publish_bytes_gets_413() {
    let server = start_with(|o| o.max_publish_bytes = Some(1024)).await;
    let mut sub = server.market("alice", &["BIG-1"]).await;
    let mut big = market_update("BIG-1", 1.0);
    big["pad"] = json!("x".repeat(2000));
    let (status, body) = server.publish(big).await;
    assert_eq!(status, 413, "{body}");
    sub.expect_silence().await;
    // Below the limit is fine.
    server.publish_ok(market_update("BIG-1", 2.0)).await;
    assert_eq!(sub.recv_type("market_update").await["price"], 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_its_seqs_in_order() {
    let server = start().await;
    let mut sub = server.market("alice", &["ORD-1"]).await;
    let batch: Vec<Value> = (0..100).map(|i| market_update("ORD-1", i as f64)).collect();
    let (status, body) = server.publish(Value::Array(batch)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 100);
    for i in 0..100u64 {
        let u = sub.recv_type("market_update").await;
        assert_eq!(u["seq"], i + 1, "{u}");
        assert_eq!(
            u["price"].as_f64(),
            Some(i as f64),
            "entry {i} took seq {}",
            u["seq"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_publishes_single_and_array_frames_in_order() {
    let server = start().await;
    let mut sub = server.market("alice", &["ING-1"]).await;
    let mut feed = ingest(&server).await;
    feed.send(market_update("ING-1", 0.0)).await;
    for frame in 0..5 {
        let batch: Vec<Value> = (0..10)
            .map(|i| market_update("ING-1", (1 + frame * 10 + i) as f64))
            .collect();
        feed.send(Value::Array(batch)).await;
    }
    for i in 0..51u64 {
        let u = sub.recv_type("market_update").await;
        assert_eq!(u["seq"], i + 1, "{u}");
        assert_eq!(u["price"].as_f64(), Some(i as f64), "{u}");
    }
    // Publishes are not acknowledged: the feed hears nothing.
    feed.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_errors_with_their_index_and_publishes_the_rest() {
    let server = start().await;
    let mut sub = server.market("alice", &["ING-2"]).await;
    let mut feed = ingest(&server).await;
    feed.send(json!([
        market_update("ING-2", 1.0),
        {"type": "market_update", "symbol": "ING-2"},
        {"type": "bogus"},
        market_update("ING-2", 4.0),
    ]))
    .await;
    let e1 = feed.recv().await;
    let e2 = feed.recv().await;
    for (e, index, code) in [(&e1, 1, "missing_field"), (&e2, 2, "unknown_type")] {
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["code"], code, "{e}");
        assert_eq!(e["index"], index, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let a = sub.recv_type("market_update").await;
    let b = sub.recv_type("market_update").await;
    assert_eq!((a["price"].as_f64(), b["price"].as_f64()), (Some(1.0), Some(4.0)));

    // A single bad message is entry 0.
    feed.send(json!({"type": "market_update", "symbol": "ING-2", "price": "x"}))
        .await;
    let e = feed.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["index"].as_u64()),
        (Some("invalid_field"), Some(0)),
        "{e}"
    );
    // A frame that is not JSON is answered too, and the socket stays open.
    feed.send_text("{oops".into()).await;
    let e = feed.recv().await;
    assert_eq!(e["code"], "invalid_json", "{e}");
    feed.send(market_update("ING-2", 5.0)).await;
    assert_eq!(sub.recv_type("market_update").await["price"], 5.0);
    feed.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_needs_the_api_key() {
    let server = start().await;
    for url in [
        format!("ws://{}/ws/ingest", server.addr),
        format!("ws://{}/ws/ingest?api_key=wrong-api-key-value", server.addr),
        format!("ws://{}/ws/ingest?token={}", server.addr, token("alice")),
    ] {
        match server.connect_url(&url).await {
            Ok(_) => panic!("{url}: accepted without the API key"),
            Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401, "{url}"),
            Err(e) => panic!("{url}: {e}"),
        }
    }
    let mut wrong = format!("ws://{}/ws/ingest", server.addr)
        .into_client_request()
        .unwrap();
    wrong
        .headers_mut()
        .insert("authorization", "Bearer wrong-api-key-value".parse().unwrap());
    match server.connect_request(wrong).await {
        Ok(_) => panic!("accepted a wrong key"),
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("{e}"),
    }
    // The query parameter works for tools that cannot set headers.
    let mut sub = server.market("alice", &["ING-3"]).await;
    let mut feed = server
        .connect_url(&format!("ws://{}/ws/ingest?api_key={API_KEY}", server.addr))
        .await
        .expect("?api_key= accepted");
    feed.send(market_update("ING-3", 3.0)).await;
    assert_eq!(sub.recv_type("market_update").await["price"], 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_fields_are_forwarded_as_published() {
    let server = start().await;
    let mut sub = server.market("alice", &["FWD-1"]).await;
    let body = r#"{"type":"market_update","symbol":"FWD-1","price":45000,"change":-2.5,"volume":1000000,
        "bid":45000.00,"venue":"XNAS","extra":{"levels":[1,2,3],"ok":true,"none":null},
        "timestamp":"2024-01-15T10:30:00.123456789Z","seq":999}"#;
    let (status, answer) = server.publish_raw(body.into(), API_KEY).await;
    assert_eq!(status, 202, "{answer}");
    let u = sub.recv_type("market_update").await;
    assert!(u["price"].is_u64(), "an integer stays an integer: {u}");
    assert_eq!(u["price"], 45000);
    assert!(u["volume"].is_u64(), "{u}");
    assert_eq!(u["volume"], 1_000_000);
    assert_eq!(u["change"].as_f64(), Some(-2.5));
    assert_eq!(u["bid"].as_f64(), Some(45000.0), "the same number: {u}");
    assert_eq!(u["venue"], "XNAS");
    assert_eq!(u["extra"], json!({"levels": [1, 2, 3], "ok": true, "none": null}));
    assert_eq!(u["timestamp"], "2024-01-15T10:30:00.123456789Z", "kept verbatim");
    assert_eq!(u["seq"], 1, "the publisher's seq is ignored: {u}");

    // Without a timestamp the server fills one, RFC 3339 UTC.
    server.publish_ok(market_update("FWD-1", 1.0)).await;
    let u = sub.recv_type("market_update").await;
    let ts = u["timestamp"].as_str().expect("timestamp filled");
    assert!(ts.ends_with('Z'), "UTC: {ts}");
    let at = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("`{ts}` is not RFC 3339: {e}"));
    let skew = std::time::SystemTime::now()
        .duration_since(at)
        .unwrap_or_default();
    assert!(skew < WAIT, "the fill is the publish time: {ts}");
    assert_eq!(u["seq"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_is_never_forwarded() {
    let server = start().await;
    let mut n = {
        let (c, unread) = server.notifications("alice").await;
        assert_eq!(unread["notifications"], json!([]));
        c
    };
    let mut note = notification("alice", "n-1");
    note["extra"] = json!("kept");
    server.publish_ok(note).await;
    let m = n.recv_type("new_notification").await;
    assert!(m.get("user_id").is_none(), "{m}");
    assert_eq!(m["extra"], "kept");
    assert_eq!(m["notification_id"], "n-1");
    assert_eq!(m["seq"], 1);
    // Nor in the unread list of a later connection, nor over HTTP.
    let (_, unread) = server.notifications("alice").await;
    let listed = &unread["notifications"][0];
    assert_eq!(listed["notification_id"], "n-1", "{unread}");
    assert!(listed.get("user_id").is_none(), "{unread}");
    let resp = server
        .http
        .get(server.url("/api/notifications"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    let list: Value = resp.json().await.unwrap();
    assert!(list[0].get("user_id").is_none(), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_update_of_an_unknown_signal_is_refused_with_invalid_field() {
    let server = start().await;
    let mut s = server.connect("trading-signals", "alice").await;
    s.send(json!({"type": "ping"})).await;
    s.recv_type("pong").await;
    let (status, body) = server
        .publish(json!({"type": "signal_update", "signal_id": "never-published", "confidence_score": 90}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["errors"][0]["index"], 0);
    assert_eq!(body["errors"][0]["code"], "invalid_field", "{body}");
    s.expect_silence().await;

    // An update of a known signal goes through, completed from its state.
    server.publish_ok(new_signal("sig-1", "BTC-USD", "BUY")).await;
    server
        .publish_ok(json!({"type": "signal_update", "signal_id": "sig-1", "confidence_score": 90}))
        .await;
    s.recv_type("new_signal").await;
    let u = s.recv_type("signal_update").await;
    assert_eq!(u["confidence_score"], 90);
    assert_eq!(
        (u["symbol"].as_str(), u["signal_type"].as_str()),
        (Some("BTC-USD"), Some("BUY")),
        "{u}"
    );
}
