//! permessage-deflate (PROTOCOL.md 5.2, RFC 7692): agreed when a
//! subscriber offers it (with `server_no_context_takeover`), never with
//! `compression = "off"`; large frames go compressed (RSV1), small ones
//! plain; compressed commands are inflated; a compression bomb closes its
//! socket with 1009 while other clients are served; and each broadcast is
//! compressed once for all its subscribers, which `/metrics` proves under
//! load.

mod common;

use common::raw::{RawWs, RSV1};
use common::*;
use serde_json::{json, Value};

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A market update whose JSON is well past the compression threshold.
fn big_update(symbol: &str, i: usize) -> Value {
    json!({"type": "market_update", "symbol": symbol, "price": 100.0 + i as f64, "volume": i,
           "note": "depth ".repeat(120)})
}

async fn deflate_market(addr: std::net::SocketAddr, user: &str, symbol: &str) -> RawWs {
    let path = format!("/ws/market-data/?token={}", token(user));
    let mut ws = RawWs::connect(addr, &path, Some(OFFER)).await;
    ws.send_json(&json!({"type": "subscribe", "symbols": [symbol]}), true)
        .await;
    let (answer, frame) = ws.recv_type("subscribed").await;
    assert_eq!(answer["symbols"], json!([symbol]));
    assert!(!frame.compressed(), "a small answer goes plain");
    ws
}

/// A counter of `/metrics` (its unlabelled sample).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_is_agreed_and_large_frames_arrive_compressed_small_ones_plain() {
    let s = start().await;
    let mut ws = deflate_market(s.addr, "alice", "BTC-USD").await;
    let agreed = ws.extensions().expect("permessage-deflate agreed");
    assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
    assert!(agreed.contains("server_no_context_takeover"), "{agreed}");
    s.publish_ok(big_update("BTC-USD", 1)).await;
    let (v, frame) = ws.recv_type("market_update").await;
    assert!(frame.compressed(), "a large update goes compressed");
    assert!(frame.payload.len() * 3 < frame.message().len());
    assert_eq!((v["seq"].as_u64(), v["volume"].as_u64()), (Some(1), Some(1)));
    s.publish_ok(market_update("BTC-USD", 2.0)).await;
    let (v, frame) = ws.recv_type("market_update").await;
    assert!(!frame.compressed(), "a small update goes plain");
    assert_eq!(v["seq"], 2);
    // Commands come compressed or not, both understood.
    ws.send_json(&json!({"type": "ping", "id": "z"}), true).await;
    assert_eq!(ws.recv_type("pong").await.0["id"], "z");
    ws.send_json(&json!({"type": "ping", "id": "p"}), false).await;
    assert_eq!(ws.recv_type("pong").await.0["id"], "p");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_works_on_the_one_socket_and_a_declined_offer_still_opens() {
    let s = start().await;
    let path = format!("/ws/stream/?token={}", token("alice"));
    let mut ws = RawWs::connect(s.addr, &path, Some("permessage-deflate")).await;
    assert!(ws.extensions().is_some());
    ws.recv_type("unread_notifications").await;
    s.publish_ok(
        json!({"type": "new_notification", "user_id": "alice", "notification_id": "n1",
                        "title": "Trade Executed", "message": "x".repeat(600)}),
    )
    .await;
    let (v, frame) = ws.recv_type("new_notification").await;
    assert!(frame.compressed());
    assert_eq!(v["notification_id"], "n1");
    // An offer with a parameter the server does not know is declined.
    let plain = RawWs::connect(s.addr, &path, Some("permessage-deflate; bogus=1")).await;
    assert_eq!(plain.extensions(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_off_agrees_to_nothing() {
    let s = start_with(|o| o.compression = Some("off".into())).await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut ws = RawWs::connect(s.addr, &path, Some(OFFER)).await;
    assert_eq!(ws.extensions(), None);
    ws.send_json(&json!({"type": "subscribe", "symbols": ["A"]}), false)
        .await;
    ws.recv_type("subscribed").await;
    s.publish_ok(big_update("A", 1)).await;
    let (_, frame) = ws.recv_type("market_update").await;
    assert_eq!(frame.first & RSV1, 0);
    // Without the agreement, a compressed frame is a protocol error.
    ws.send_json(&json!({"type": "ping"}), true).await;
    assert_eq!(ws.close_code().await, Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_closes_with_1009_while_others_are_served() {
    let s = start().await;
    let mut bystander = s.market("bob", &["BTC-USD"]).await;
    let mut other = deflate_market(s.addr, "carol", "BTC-USD").await;
    let mut bomber = deflate_market(s.addr, "mallory", "BTC-USD").await;
    // 32 MiB of spaces inside a command, about 32 KiB compressed: far below
    // the 64 KiB message limit on the wire, far above it inflated.
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, " ".repeat(32 << 20));
    let bomb = tickwire::protocol::deflate::compress(huge.as_bytes());
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    bomber.send_frame(0x80 | RSV1 | 1, &bomb).await;
    assert_eq!(bomber.close_code().await, Some(1009));
    s.publish_ok(big_update("BTC-USD", 1)).await;
    assert_eq!(bystander.recv_type("market_update").await["seq"], 1);
    assert_eq!(other.recv_type("market_update").await.0["seq"], 1);
    // A message of nearly the limit that compression cannot shrink (so its
    // compressed form is a little longer than itself) is still taken.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: String = (0..65_400)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let near = format!(r#"{{"type":"ping","id":"n","pad":"{noise}"}}"#);
    assert!(near.len() < 64 * 1024);
    other
        .send_frame(
            0x80 | RSV1 | 1,
            &tickwire::protocol::deflate::compress(near.as_bytes()),
        )
        .await;
    assert_eq!(other.recv_type("pong").await.0["id"], "n");
    // A compressed frame already over the limit on the wire is refused too.
    let mut big = deflate_market(s.addr, "eve", "BTC-USD").await;
    big.send_frame(0x80 | RSV1 | 1, &vec![0u8; 70 * 1024 + 70 * 64])
        .await;
    assert_eq!(big.close_code().await, Some(1009));
}

/// Under load, in a process of its own (the compression counter is the
/// process's): every broadcast is compressed exactly once, however many
/// subscribers agreed to deflate, and fewer bytes go out than were encoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broadcast_is_compressed_once_for_all_its_subscribers() {
    let node = NodeProc::start(&[]);
    const SUBSCRIBERS: usize = 40;
    const UPDATES: usize = 300;
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        subs.push(deflate_market(node.addr, &format!("user{i}"), "LOAD").await);
    }
    let mut plain = node.api.market("plain", &["LOAD"]).await;
    for chunk in (0..UPDATES).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<Value> = chunk.iter().map(|&i| big_update("LOAD", i)).collect();
        node.publish_ok(Value::Array(batch)).await;
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(UPDATES);
                while seqs.len() < UPDATES {
                    let (v, frame) = ws.recv_type("market_update").await;
                    assert!(frame.compressed());
                    seqs.push(v["seq"].as_u64().unwrap());
                }
                seqs
            })
        })
        .collect();
    for r in readers {
        assert_consecutive(&r.await.unwrap(), 1);
    }
    assert_consecutive(&seqs(&mut plain, "market_update", UPDATES).await, 1);
    let (_, text) = node.get("/metrics").await;
    assert_eq!(
        metric(&text, "tickwire_frames_compressed_total"),
        UPDATES as f64,
        "one compression per broadcast, not per subscriber"
    );
    let written = metric(&text, "tickwire_bytes_out_total");
    let before = metric(&text, "tickwire_bytes_out_uncompressed_total");
    assert!(
        written * 3.0 < before,
        "written {written}, before compression {before}"
    );
}
