//! MessagePack (PROTOCOL.md 5.3): `format=msgpack` makes every message one
//! binary frame holding one MessagePack map with the JSON object's fields
//! and values (integers as integers, other numbers as 64-bit floats,
//! `null` as nil), for every message type, on every subscriber endpoint;
//! commands come as MessagePack binary frames or JSON text; bytes that are
//! not MessagePack are `invalid_json`; it composes with permessage-deflate.

mod common;

use std::time::Duration;

use common::raw::RawWs;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tickwire::protocol::msgpack;
use tokio_tungstenite::tungstenite::Message;

/// The next message, which must be a binary MessagePack frame.
async fn recv_mp(c: &mut Client) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        match msg {
            Message::Binary(b) => return msgpack::decode(&b).expect("valid MessagePack"),
            Message::Text(t) => panic!("a text frame on a msgpack socket: {t}"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => continue,
        }
    }
}

async fn recv_mp_type(c: &mut Client, kind: &str) -> Value {
    loop {
        let v = recv_mp(c).await;
        if v["type"] == kind {
            return v;
        }
    }
}

async fn send_mp(c: &mut Client, v: Value) {
    let mut bytes = Vec::new();
    msgpack::encode(&v, &mut bytes);
    c.ws.send(Message::Binary(bytes.into())).await.unwrap();
}

async fn connect_mp(s: &TestServer, path: &str, user: &str) -> Client {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!("ws://{}{path}{sep}format=msgpack&token={}", s.addr, token(user));
    s.connect_url(&url).await.expect("handshake accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_round_trips_with_integers_kept_integers() {
    let s = start_with(|o| o.history_messages = Some(2)).await;
    let mut c = connect_mp(&s, "/ws/stream/", "alice").await;
    assert_eq!(
        recv_mp(&mut c).await,
        json!({"type": "unread_notifications", "notifications": []})
    );
    send_mp(
        &mut c,
        json!({"type": "subscribe", "symbols": ["BTC-USD"], "id": 1}),
    )
    .await;
    assert_eq!(
        recv_mp(&mut c).await,
        json!({"type": "subscribed", "symbols": ["BTC-USD"], "id": 1})
    );
    s.publish_ok(
        json!({"type": "market_update", "symbol": "BTC-USD", "price": 45000.0,
                        "change": 2.5, "volume": 1000000, "timestamp": "2024-01-15T10:30:00Z"}),
    )
    .await;
    let m = recv_mp_type(&mut c, "market_update").await;
    assert!(m["price"].is_f64() && m["change"].is_f64(), "{m}");
    assert!(m["volume"].is_u64() && m["seq"].is_u64(), "{m}");
    assert_eq!(
        m,
        json!({"type": "market_update", "symbol": "BTC-USD", "price": 45000.0, "change": 2.5,
               "volume": 1000000, "timestamp": "2024-01-15T10:30:00Z", "seq": 1})
    );
    s.publish_ok(new_signal("sig1", "BTC-USD", "BUY")).await;
    let sig = recv_mp_type(&mut c, "new_signal").await;
    assert!(
        sig["confidence_score"].is_u64() && sig["entry_price"].is_f64(),
        "{sig}"
    );
    assert_eq!(sig["seq"], 1);
    s.publish_ok(
        json!({"type": "signal_update", "signal_id": "sig1", "confidence_score": -3,
                        "extra": null}),
    )
    .await;
    let upd = recv_mp_type(&mut c, "signal_update").await;
    assert!(
        upd["confidence_score"].is_i64() && upd["extra"].is_null(),
        "{upd}"
    );
    assert_eq!(
        (upd["symbol"].as_str(), upd["seq"].as_u64()),
        (Some("BTC-USD"), Some(2))
    );
    s.publish_ok(notification("alice", "n1")).await;
    let n = recv_mp_type(&mut c, "new_notification").await;
    assert_eq!(
        (n["notification_id"].as_str(), n["seq"].as_u64()),
        (Some("n1"), Some(1))
    );
    // Commands as JSON text are understood on a msgpack socket too.
    c.send(json!({"type": "mark_read", "notification_id": "n1", "id": "m"}))
        .await;
    assert_eq!(
        recv_mp(&mut c).await,
        json!({"type": "notification_read", "notification_id": "n1", "id": "m"})
    );
    send_mp(
        &mut c,
        json!({"type": "filter", "symbol": "BTC-USD", "signal_type": null, "id": 2.5}),
    )
    .await;
    let f = recv_mp(&mut c).await;
    assert_eq!(
        f,
        json!({"type": "filtered", "symbol": "BTC-USD", "signal_type": null, "id": 2.5})
    );
    assert!(f["id"].is_f64());
    send_mp(&mut c, json!({"type": "ping", "id": 7})).await;
    let pong = recv_mp(&mut c).await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(7))
    );
    assert!(pong["timestamp"].is_string());
    send_mp(&mut c, json!({"type": "unsubscribe", "symbols": ["BTC-USD"]})).await;
    assert_eq!(
        recv_mp(&mut c).await,
        json!({"type": "unsubscribed", "symbols": ["BTC-USD"]})
    );
    send_mp(&mut c, json!({"type": "nope", "id": -1})).await;
    let e = recv_mp(&mut c).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_i64()),
        (Some("unknown_type"), Some(-1))
    );
    // reset: the window keeps 2 of 4.
    s.publish_ok(Value::Array(
        (0..4).map(|i| market_update("ETH-USD", i as f64)).collect(),
    ))
    .await;
    eventually("ETH-USD at 4", || async {
        (s.get_json("/api/market/ETH-USD").await.1["seq"] == 4).then_some(())
    })
    .await;
    send_mp(
        &mut c,
        json!({"type": "subscribe", "symbols": ["ETH-USD"], "since": {"ETH-USD": 0}}),
    )
    .await;
    recv_mp_type(&mut c, "subscribed").await;
    assert_eq!(
        recv_mp(&mut c).await,
        json!({"type": "reset", "stream": "ETH-USD", "seq": 3})
    );
    let stats = s.stats().await;
    assert!(
        stats["messages_out_by_format"]["msgpack"].as_u64() > Some(10),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_notifications_arrive_as_one_map_on_the_notifications_endpoint() {
    let s = start().await;
    s.publish_ok(json!([notification("bob", "a"), notification("bob", "b")]))
        .await;
    let list = eventually("two unread kept", || async {
        let mut c = connect_mp(&s, "/ws/notifications/", "bob").await;
        let v = recv_mp(&mut c).await;
        (v["notifications"].as_array().map(Vec::len) == Some(2)).then_some(v)
    })
    .await;
    assert_eq!(list["type"], "unread_notifications");
    assert_eq!(list["notifications"][1]["notification_id"], "b");
    assert!(list["notifications"][1]["seq"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_msgpack_are_invalid_json_and_the_socket_stays() {
    let s = start().await;
    let mut c = connect_mp(&s, "/ws/market-data/", "alice").await;
    c.ws.send(Message::Binary(vec![0xc1, 0x00].into())).await.unwrap();
    let e = recv_mp(&mut c).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid_json"))
    );
    c.ws.send(Message::Binary(vec![0x93, 1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(recv_mp(&mut c).await["code"], "invalid_json");
    c.ws.send(Message::Binary(vec![0x91; 300].into())).await.unwrap();
    assert_eq!(recv_mp(&mut c).await["code"], "invalid_json");
    send_mp(&mut c, json!({"type": "ping"})).await;
    assert_eq!(recv_mp(&mut c).await["type"], "pong");
    // On a JSON socket a binary frame is still 1003.
    let mut plain = s.connect("market-data", "alice").await;
    plain.ws.send(Message::Binary(vec![0x80].into())).await.unwrap();
    assert_eq!(plain.closed().await.code, Some(1003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_format_is_refused_before_the_upgrade() {
    let s = start().await;
    for (path, query) in [
        ("/ws/market-data/", "format=cbor"),
        ("/ws/stream/", "format="),
        ("/ws/ingest", "format=msgpack"),
    ] {
        let url = format!(
            "ws://{}{path}?{query}&token={}&api_key={API_KEY}",
            s.addr,
            token("a")
        );
        match s.connect_url(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{path}?{query}")
            }
            Err(e) => panic!("{path}?{query}: {e}"),
            Ok(_) => panic!("{path}?{query} was accepted"),
        }
    }
    let url = format!("ws://{}/ws/market-data/?format=json&token={}", s.addr, token("a"));
    let mut c = s.connect_url(&url).await.unwrap();
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_deflate_together_compress_the_binary_form() {
    let s = start().await;
    let path = format!("/ws/trading-signals/?format=msgpack&token={}", token("alice"));
    let mut ws = RawWs::connect(s.addr, &path, Some("permessage-deflate")).await;
    assert!(ws.extensions().is_some());
    let mut json_sub = s.connect("trading-signals", "bob").await;
    let mut signal = new_signal("big", "BTC-USD", "SELL");
    signal["note"] = json!("z".repeat(800));
    s.publish_ok(signal).await;
    let f = tokio::time::timeout(Duration::from_secs(10), ws.data())
        .await
        .unwrap();
    assert_eq!(f.first, 0xc2, "final, compressed, binary");
    let v = msgpack::decode(&f.message()).unwrap();
    assert_eq!(
        (v["signal_id"].as_str(), v["seq"].as_u64()),
        (Some("big"), Some(1))
    );
    assert_eq!(json_sub.recv().await["signal_id"], "big");
}
