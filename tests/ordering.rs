//! Many concurrent publishers and subscribers: every subscriber gets every
//! message of its symbols once, in `seq` order, and each publisher's
//! messages keep the order it sent them in (PROTOCOL.md 1.4).

mod common;

use std::collections::HashMap;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SYMBOLS: [&str; 5] = ["A", "B", "C", "D", "E"];
const HTTP_PUBLISHERS: usize = 3;
const PER_PUBLISHER: usize = 400;
const BATCH: usize = 20;

fn tagged(publisher: usize, n: usize) -> Value {
    let symbol = SYMBOLS[n % SYMBOLS.len()];
    json!({"type": "market_update", "symbol": symbol, "price": n as f64, "pub": publisher, "n": n})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_duplicated_or_reordered_under_concurrency() {
    let s = start().await;
    let mut subscribers = Vec::new();
    for i in 0..20 {
        subscribers.push(s.market(&format!("u{i}"), &SYMBOLS).await);
    }
    let mut tasks = Vec::new();
    for p in 0..HTTP_PUBLISHERS {
        let http = s.http.clone();
        let url = s.url("/api/publish");
        tasks.push(tokio::spawn(async move {
            for start in (0..PER_PUBLISHER).step_by(BATCH) {
                let batch: Vec<Value> = (start..start + BATCH).map(|n| tagged(p, n)).collect();
                let r = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        }));
    }
    // One more publisher over the ingest socket.
    let ingest_pub = HTTP_PUBLISHERS;
    let mut req = format!("ws://{}/ws/ingest", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    let (mut ingest, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ingest accepts the key");
    tasks.push(tokio::spawn(async move {
        for start in (0..PER_PUBLISHER).step_by(BATCH) {
            let batch: Vec<Value> = (start..start + BATCH).map(|n| tagged(ingest_pub, n)).collect();
            ingest
                .send(Message::Text(Value::Array(batch).to_string().into()))
                .await
                .unwrap();
        }
        ingest.close(None).await.ok();
    }));
    for t in tasks {
        t.await.unwrap();
    }

    let total = (HTTP_PUBLISHERS + 1) * PER_PUBLISHER;
    let per_symbol = total / SYMBOLS.len();
    for c in &mut subscribers {
        let mut by_symbol: HashMap<String, Vec<u64>> = HashMap::new();
        let mut last_n: HashMap<(String, u64), i64> = HashMap::new();
        for _ in 0..total {
            let m = c.recv_type("market_update").await;
            let symbol = m["symbol"].as_str().unwrap().to_string();
            let (p, n) = (m["pub"].as_u64().unwrap(), m["n"].as_i64().unwrap());
            let prev = last_n.insert((symbol.clone(), p), n).unwrap_or(-1);
            assert!(
                n > prev,
                "publisher {p}'s order broken on {symbol}: {n} after {prev}"
            );
            by_symbol
                .entry(symbol)
                .or_default()
                .push(m["seq"].as_u64().unwrap());
        }
        for symbol in SYMBOLS {
            let got = &by_symbol[symbol];
            assert_eq!(got.len(), per_symbol);
            assert_consecutive(got, 1);
        }
        c.expect_silence().await;
    }
}
