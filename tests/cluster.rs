//! Cluster mode (DESIGN.md "Two modes"): tickwire nodes as child processes
//! around a real redis-server. Any node takes any publish and any
//! subscriber; all nodes deliver every stream in the same `seq` order; a
//! client resumes on another node; read state and unread notifications
//! outlive every node; the Redis ingest channel is taken exactly once; a
//! Redis restart or a cut pub/sub link loses and repeats nothing.
//!
//! Every test runs twice: against one redis-server (`single::`) and
//! against a three-master Redis Cluster (`redis_cluster::`), where nodes
//! use sharded pub/sub.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn node<B: Backend>(redis: &B) -> NodeProc {
    NodeProc::start(&["--redis", &redis.url()])
}

async fn ready_nodes<B: Backend>(redis: &B, n: usize) -> Vec<NodeProc> {
    let nodes: Vec<NodeProc> = (0..n).map(|_| node(redis)).collect();
    for n in &nodes {
        n.wait_ready(200).await;
    }
    nodes
}

async fn every_node_delivers_every_publish_in_the_same_order<B: Backend>() {
    let redis = B::start();
    let nodes = ready_nodes(&redis, 3).await;
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(n.market("alice", &["BTC-USD"]).await);
    }
    // Two publishers, on two different nodes, at once.
    let publish = |n: &NodeProc, tag: &'static str| {
        let (http, url) = (n.http.clone(), n.url("/api/publish"));
        tokio::spawn(async move {
            for chunk in 0..20 {
                let batch: Vec<Value> = (0..10)
                    .map(|i| json!({"type": "market_update", "symbol": "BTC-USD", "price": 1.0, "tag": tag, "n": chunk * 10 + i}))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        })
    };
    let (a, b) = (publish(&nodes[0], "a"), publish(&nodes[1], "b"));
    a.await.unwrap();
    b.await.unwrap();
    let mut orders = Vec::new();
    for s in &mut subs {
        let mut order = Vec::new();
        let mut last = std::collections::HashMap::new();
        for expected_seq in 1..=400u64 {
            let m = s.recv_type("market_update").await;
            assert_eq!(m["seq"], expected_seq, "gap, duplicate or reorder");
            let (tag, n) = (m["tag"].as_str().unwrap().to_string(), m["n"].as_i64().unwrap());
            assert!(
                n > *last.get(&tag).unwrap_or(&-1),
                "publisher {tag}'s order broken"
            );
            last.insert(tag.clone(), n);
            order.push((tag, n));
        }
        s.expect_silence().await;
        orders.push(order);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
}

async fn a_client_resumes_on_a_node_that_started_after_the_messages<B: Backend>() {
    let redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let mut c = nodes[0].market("alice", &["ETH-USD"]).await;
    nodes[1]
        .publish_ok(json!((0..5)
            .map(|i| market_update("ETH-USD", i as f64))
            .collect::<Vec<_>>()))
        .await;
    assert_eq!(seqs(&mut c, "market_update", 5).await, [1, 2, 3, 4, 5]);
    drop(c);
    nodes[1]
        .publish_ok(json!((0..7)
            .map(|i| market_update("ETH-USD", 10.0 + i as f64))
            .collect::<Vec<_>>()))
        .await;
    // A node that never saw any of it: it has only Redis to resume from.
    let late = node(&redis);
    late.wait_ready(200).await;
    let mut c = late.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["ETH-USD"], "since": {"ETH-USD": 5}}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(
        seqs(&mut c, "market_update", 7).await,
        (6..=12).collect::<Vec<u64>>()
    );
    c.expect_silence().await;
    nodes[0].publish_ok(market_update("ETH-USD", 99.0)).await;
    assert_eq!(c.recv().await["seq"], 13);
    // And the latest price is known everywhere at once.
    let mut fresh = late.connect("market-data", "bob").await;
    fresh
        .send(json!({"type": "subscribe", "symbols": ["ETH-USD"]}))
        .await;
    fresh.recv_type("subscribed").await;
    assert_eq!(fresh.recv().await["price"], 99.0);
}

async fn unread_notifications_and_read_state_outlive_every_node<B: Backend>() {
    let redis = B::start();
    let mut nodes = ready_nodes(&redis, 2).await;
    let (mut alice_a, _) = nodes[0].notifications("alice").await;
    let (mut alice_b, _) = nodes[1].notifications("alice").await;
    nodes[0]
        .publish_ok(json!([
            notification("alice", "n1"),
            notification("alice", "n2"),
            notification("bob", "b1")
        ]))
        .await;
    assert_eq!(seqs(&mut alice_a, "new_notification", 2).await, [1, 2]);
    assert_eq!(seqs(&mut alice_b, "new_notification", 2).await, [1, 2]);
    alice_a
        .send(json!({"type": "mark_read", "notification_id": "n1", "id": 9}))
        .await;
    assert_eq!(
        alice_a.recv().await,
        json!({"type": "notification_read", "notification_id": "n1", "id": 9})
    );
    // The other node's tab of the same user hears of it too.
    assert_eq!(
        alice_b.recv().await,
        json!({"type": "notification_read", "notification_id": "n1"})
    );
    drop((alice_a, alice_b));
    for n in &mut nodes {
        n.kill();
    }
    let fresh = node(&redis);
    fresh.wait_ready(200).await;
    let (_c, unread) = fresh.notifications("alice").await;
    let ids: Vec<&str> = unread["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["notification_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n2"]);
    assert!(unread["notifications"][0].get("user_id").is_none());
    let t = token("alice");
    let r = fresh
        .http
        .get(fresh.url("/api/notifications"))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
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
    assert_eq!(flags, [("n1".to_string(), true), ("n2".to_string(), false)]);
}

async fn a_redis_publish_on_the_ingest_channel_is_delivered_once<B: Backend>() {
    let redis = B::start();
    let nodes = ready_nodes(&redis, 3).await;
    let mut c = nodes[2].market("alice", &["SOL-USD"]).await;
    let same = market_update("SOL-USD", 1.0).to_string();
    for _ in 0..3 {
        // The same bytes three times are three messages.
        redis.cli(&["PUBLISH", "rt:ingest", &same]);
    }
    let batch = json!([market_update("SOL-USD", 2.0), market_update("SOL-USD", 3.0)]).to_string();
    // (In a Redis Cluster, PUBLISH reaches the subscribers of every node.)
    redis.cli(&["PUBLISH", "rt:ingest", &batch]);
    let got = seqs(&mut c, "market_update", 5).await;
    assert_eq!(got, [1, 2, 3, 4, 5]);
    c.expect_silence().await;
}

async fn a_redis_restart_mid_stream_repeats_and_reorders_nothing<B: Backend>() {
    let mut redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let mut subs = vec![
        nodes[0].market("alice", &["XRP-USD"]).await,
        nodes[1].market("bob", &["XRP-USD"]).await,
    ];
    nodes[0]
        .publish_ok(json!((0..10)
            .map(|i| market_update("XRP-USD", i as f64))
            .collect::<Vec<_>>()))
        .await;
    for s in &mut subs {
        assert_consecutive(&seqs(s, "market_update", 10).await, 1);
    }
    redis.restart();
    // While Redis is away, or until the nodes have caught up, publishing
    // is refused rather than lost; keep trying until it is taken.
    let mut taken = 0;
    let mut tries = 0;
    while taken < 10 {
        let (status, _) = nodes[1]
            .publish(market_update("XRP-USD", 100.0 + taken as f64))
            .await;
        if status == 202 {
            taken += 1;
        } else {
            assert_eq!(status, 503);
            tries += 1;
            assert!(tries < 400, "publishing never came back");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    for s in &mut subs {
        let got = seqs(s, "market_update", 10).await;
        assert_consecutive(&got, 11);
        s.expect_silence().await;
    }
}

async fn while_redis_is_away_a_node_is_not_ready_but_keeps_its_subscribers<B: Backend>() {
    let mut redis = B::start();
    let nodes = ready_nodes(&redis, 1).await;
    let mut c = nodes[0].market("alice", &["ADA-USD"]).await;
    redis.stop();
    nodes[0].wait_ready(503).await;
    let (status, body) = nodes[0].publish(market_update("ADA-USD", 1.0)).await;
    assert_eq!(status, 503, "{body}");
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    redis.restart();
    nodes[0].wait_ready(200).await;
    nodes[0].publish_ok(market_update("ADA-USD", 2.0)).await;
    assert_eq!(c.recv().await["seq"], 1);
    assert!(
        nodes[0].logs().matches("Redis link lost").count() <= 2,
        "logged once per outage, not per message"
    );
}

async fn a_cut_subscription_catches_up_without_loss<B: Backend>() {
    let redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let mut c = nodes[1].market("alice", &["DOT-USD"]).await;
    let publisher = {
        let (http, url) = (nodes[0].http.clone(), nodes[0].url("/api/publish"));
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < 400 {
                let batch: Vec<Value> = (0..10)
                    .map(|i| market_update("DOT-USD", (sent + i) as f64))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(API_KEY)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 202 {
                    sent += 10;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Cut every pub/sub connection twice while publishing goes on.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        for n in &nodes {
            n.wait_ready(200).await;
        }
        let killed: u32 = redis
            .cli_all(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .iter()
            .map(|k| k.trim().parse::<u32>().unwrap())
            .sum();
        assert!(killed >= 2, "both nodes' subscriptions are cut");
    }
    publisher.await.unwrap();
    let got = seqs(&mut c, "market_update", 400).await;
    assert_consecutive(&got, 1);
    c.expect_silence().await;
    assert!(
        nodes[1].logs().contains("caught up from Redis history") || nodes[1].logs().contains("Redis link up")
    );
}

async fn when_a_node_dies_its_clients_resume_on_another_without_loss<B: Backend>() {
    let redis = B::start();
    let mut nodes = ready_nodes(&redis, 2).await;
    let mut c = nodes[0].market("alice", &["LTC-USD"]).await;
    nodes[1]
        .publish_ok(json!((0..20)
            .map(|i| market_update("LTC-USD", i as f64))
            .collect::<Vec<_>>()))
        .await;
    let first = seqs(&mut c, "market_update", 8).await;
    nodes[0].kill();
    nodes[1]
        .publish_ok(json!((0..20)
            .map(|i| market_update("LTC-USD", 50.0 + i as f64))
            .collect::<Vec<_>>()))
        .await;
    let mut c = nodes[1].connect("market-data", "alice").await;
    let last = *first.last().unwrap();
    c.send(json!({"type": "subscribe", "symbols": ["LTC-USD"], "since": {"LTC-USD": last}}))
        .await;
    c.recv_type("subscribed").await;
    let rest = seqs(&mut c, "market_update", (40 - last) as usize).await;
    let all: Vec<u64> = first.into_iter().chain(rest).collect();
    assert_consecutive(&all, 1);
    c.expect_silence().await;
}

async fn signals_and_their_updates_cross_nodes<B: Backend>() {
    let redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let mut c = nodes[1].connect("trading-signals", "alice").await;
    c.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": null}))
        .await;
    c.recv_type("filtered").await;
    nodes[0].publish_ok(new_signal("sig-9", "BTC-USD", "BUY")).await;
    // The update goes through the other node, which never saw the signal itself.
    nodes[1]
        .publish_ok(json!({"type": "signal_update", "signal_id": "sig-9", "confidence_score": 42}))
        .await;
    let (status, body) = nodes[1]
        .publish(json!({"type": "signal_update", "signal_id": "nope", "confidence_score": 1}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], "invalid_field");
    assert_eq!(c.recv().await["signal_id"], "sig-9");
    let u = c.recv().await;
    assert_eq!(
        (
            u["type"].as_str(),
            u["symbol"].as_str(),
            u["signal_type"].as_str()
        ),
        (Some("signal_update"), Some("BTC-USD"), Some("BUY"))
    );
    assert_eq!(u["confidence_score"], 42);
    let (_, list) = nodes[0].get_json("/api/signals?symbol=BTC-USD").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

async fn a_node_listens_only_to_the_groups_its_subscribers_need<B: Backend>() {
    use tickwire::protocol::StreamKey;
    use tickwire::replication::layout::{channel, group_of, stream_id};
    let redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let wanted = channel(group_of(&stream_id(&StreamKey::Symbol("AVAX-USD".into()))));
    assert_eq!(redis.listeners(&wanted), 0, "nobody subscribed yet");
    let c = nodes[0].market("alice", &["AVAX-USD"]).await;
    assert_eq!(
        redis.listeners(&wanted),
        1,
        "only the node with a subscriber listens"
    );
    nodes[1].publish_ok(market_update("AVAX-USD", 1.0)).await;
    drop(c);
    eventually(
        "the node stops listening once its last subscriber left",
        || async { (redis.listeners(&wanted) == 0).then_some(()) },
    )
    .await;
}

/// A publisher on `/ws/ingest` that never waits: its frames are in
/// flight to Redis together (ingress::pipeline), yet every subscriber gets
/// them in the order sent with consecutive seqs, and the error answers come
/// back in the order of the frames that earned them.
async fn an_ingest_socket_sending_without_waiting_keeps_its_order<B: Backend>() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    const FRAMES: usize = 600;
    const PER_FRAME: usize = 5;
    let redis = B::start();
    let nodes = ready_nodes(&redis, 2).await;
    let subs = vec![
        nodes[0].market("alice", &["A", "B"]).await,
        nodes[1].market("bob", &["A", "B"]).await,
    ];
    let bad_at = |f: usize| (f % 50 == 7).then_some((f / 50) % PER_FRAME);
    let expected_errors: Vec<u64> = (0..FRAMES).filter_map(bad_at).map(|b| b as u64).collect();
    let per_symbol = (FRAMES * PER_FRAME - expected_errors.len()) / 2;
    // Read while the publisher sends, as a live client does.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut last = std::collections::HashMap::new();
                for _ in 0..2 * per_symbol {
                    let m = s.recv_type("market_update").await;
                    let symbol = m["symbol"].as_str().unwrap().to_string();
                    let (seq, n) = (m["seq"].as_u64().unwrap(), m["n"].as_i64().unwrap());
                    let (last_seq, last_n) = last.insert(symbol.clone(), (seq, n)).unwrap_or((0, -1));
                    assert_eq!(seq, last_seq + 1, "gap or reorder on {symbol}");
                    assert!(
                        n > last_n,
                        "the publisher's order broken on {symbol}: {n} after {last_n}"
                    );
                }
                s
            })
        })
        .collect();
    let mut req = format!("ws://{}/ws/ingest", nodes[0].addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {API_KEY}").parse().unwrap());
    let (ingest, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ingest accepts the key");
    let (mut tx, mut rx) = ingest.split();
    // Every 50th frame has one invalid entry, at a place that names the frame.
    let sender = tokio::spawn(async move {
        for f in 0..FRAMES {
            let batch: Vec<Value> = (0..PER_FRAME)
                .map(|i| match bad_at(f) {
                    Some(b) if b == i => json!({"type": "market_update", "price": 1.0}),
                    _ => json!({"type": "market_update", "symbol": (["A", "B"][i % 2]), "price": 1.0, "n": f * PER_FRAME + i}),
                })
                .collect();
            tx.send(Message::Text(Value::Array(batch).to_string().into()))
                .await
                .unwrap();
        }
        tx
    });
    let mut errors = Vec::new();
    while errors.len() < expected_errors.len() {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.next())
            .await
            .expect("every refusal is answered")
            .unwrap()
            .unwrap();
        let m: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        assert_eq!(m["type"], "error", "{m}");
        errors.push(m["index"].as_u64().unwrap());
    }
    assert_eq!(errors, expected_errors, "answers in the order of their frames");
    let _tx = sender.await.unwrap();
    for reader in readers {
        let mut s = reader.await.unwrap();
        s.expect_silence().await;
    }
}

macro_rules! against {
    ($backend:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_node_delivers_every_publish_in_the_same_order() {
            super::every_node_delivers_every_publish_in_the_same_order::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_client_resumes_on_a_node_that_started_after_the_messages() {
            super::a_client_resumes_on_a_node_that_started_after_the_messages::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unread_notifications_and_read_state_outlive_every_node() {
            super::unread_notifications_and_read_state_outlive_every_node::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_redis_publish_on_the_ingest_channel_is_delivered_once() {
            super::a_redis_publish_on_the_ingest_channel_is_delivered_once::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_redis_restart_mid_stream_repeats_and_reorders_nothing() {
            super::a_redis_restart_mid_stream_repeats_and_reorders_nothing::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn while_redis_is_away_a_node_is_not_ready_but_keeps_its_subscribers() {
            super::while_redis_is_away_a_node_is_not_ready_but_keeps_its_subscribers::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cut_subscription_catches_up_without_loss() {
            super::a_cut_subscription_catches_up_without_loss::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn when_a_node_dies_its_clients_resume_on_another_without_loss() {
            super::when_a_node_dies_its_clients_resume_on_another_without_loss::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_node_listens_only_to_the_groups_its_subscribers_need() {
            super::a_node_listens_only_to_the_groups_its_subscribers_need::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_ingest_socket_sending_without_waiting_keeps_its_order() {
            super::an_ingest_socket_sending_without_waiting_keeps_its_order::<$backend>().await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn signals_and_their_updates_cross_nodes() {
            super::signals_and_their_updates_cross_nodes::<$backend>().await
        }
    };
}

mod single {
    use super::*;
    against!(Redis);
}

mod redis_cluster {
    use super::*;
    against!(RedisCluster);
}
