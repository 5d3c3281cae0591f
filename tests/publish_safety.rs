//! A publisher can trust what `POST /api/publish` answers and retry
//! safely (issue 15, items 7 and 11):
//! - a `503` that says nothing was published is true: during a Redis pause
//!   a publish is either never delivered or answered `"outcome": "unknown"`;
//! - a publish retried with the same `Idempotency-Key` (or `/ws/ingest`
//!   `publish_id`) is delivered once, on one node or two, in both modes,
//!   and the retry gets the first answer, marked `Idempotent-Replayed`;
//! - a body over the limit, written whole before the client reads, gets
//!   its `413`, not a connection reset; and a far larger or a trickling
//!   one still ends in bounded time.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A publish with an `Idempotency-Key`: status, `Idempotent-Replayed`, body.
async fn publish_keyed(api: &Api, key: &str, body: &Value) -> (u16, bool, Value) {
    let resp = api
        .http
        .post(api.url("/api/publish"))
        .bearer_auth(API_KEY)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("publish request");
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        replayed,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn tagged(symbol: &str, tag: &str) -> Value {
    json!({"type": "market_update", "symbol": symbol, "price": 1.0, "tag": tag})
}

/// Every `market_update` a subscriber gets until it has been quiet for
/// `quiet`: the count of each tag, after checking that the seqs run on
/// from `*next` without a gap or a repeat (and moving `*next` on).
async fn deliveries_from(c: &mut Client, quiet: Duration, next: &mut u64) -> HashMap<String, usize> {
    let mut tags = HashMap::new();
    let mut seqs = Vec::new();
    while let Some(m) = c.recv_within(quiet).await {
        if m["type"] != "market_update" {
            continue;
        }
        assert!(
            m.get("publish_id").is_none(),
            "publish_id reached a subscriber: {m}"
        );
        seqs.push(m["seq"].as_u64().expect("seq"));
        *tags
            .entry(m["tag"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_consecutive(&seqs, *next);
    *next += seqs.len() as u64;
    tags
}

async fn deliveries(c: &mut Client, quiet: Duration) -> HashMap<String, usize> {
    deliveries_from(c, quiet, &mut 1).await
}

// ------------------------------------------------------------ embedded

#[tokio::test]
async fn embedded_same_key_twice_is_delivered_once_and_answered_as_the_first() {
    let s = start().await;
    let mut sub = s.market("alice", &["IDEM-E"]).await;
    let body = json!([tagged("IDEM-E", "a"), tagged("IDEM-E", "b")]);

    let first = publish_keyed(&s, "order-1", &body).await;
    assert_eq!(first, (202, false, json!({"accepted": 2})));
    let again = publish_keyed(&s, "order-1", &body).await;
    assert_eq!(again.0, first.0);
    assert_eq!(again.2, first.2, "the retry is answered as the first");
    assert!(again.1, "the retry says it is a replay");

    // The same key with another body is refused, not answered as the first.
    let other = publish_keyed(&s, "order-1", &json!(tagged("IDEM-E", "c"))).await;
    assert_eq!(other.0, 422, "{other:?}");

    let tags = deliveries(&mut sub, QUIET).await;
    assert_eq!(tags, HashMap::from([("a".into(), 1), ("b".into(), 1)]));
}

#[tokio::test]
async fn embedded_refused_entries_are_remembered_as_refused() {
    let s = start().await;
    let body = json!([
        {"type": "signal_update", "signal_id": "never-made", "confidence_score": 1},
        tagged("IDEM-R", "ok"),
    ]);
    let first = publish_keyed(&s, "mixed", &body).await;
    assert_eq!(first.0, 400, "{first:?}");
    assert_eq!(first.2["accepted"], 1);
    // The signal exists now; the retry is still answered as the first.
    s.publish_ok(
        json!({"type": "new_signal", "signal_id": "never-made", "symbol": "IDEM-R", "signal_type": "BUY"}),
    )
    .await;
    let again = publish_keyed(&s, "mixed", &body).await;
    assert_eq!((again.0, &again.2), (first.0, &first.2));
    assert!(again.1);
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused_as_invalid_field() {
    let s = start().await;
    for key in ["k".repeat(201), "tab\there".into(), "caf\u{e9}".into()] {
        let resp = s
            .http
            .post(s.url("/api/publish"))
            .bearer_auth(API_KEY)
            .header("idempotency-key", key.as_bytes())
            .json(&tagged("IDEM-B", "x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "key {key:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "invalid_field", "{v}");
    }
    let long_ok = "k".repeat(200);
    assert_eq!(publish_keyed(&s, &long_ok, &tagged("IDEM-B", "x")).await.0, 202);
    let (status, answer) = s
        .publish(json!({"type": "market_update", "symbol": "IDEM-B", "price": 1, "publish_id": 7}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["errors"][0]["code"], "invalid_field", "{answer}");
}

async fn ingest(api: &Api) -> Client {
    api.connect_url(&format!("ws://{}/ws/ingest?api_key={API_KEY}", api.addr))
        .await
        .expect("ingest handshake")
}

#[tokio::test]
async fn embedded_ingest_publish_id_is_taken_once_and_never_forwarded() {
    let s = start().await;
    let mut sub = s.market("alice", &["IDEM-W"]).await;
    let mut feed = ingest(&s).await;
    let mut second = ingest(&s).await;
    let mut named = tagged("IDEM-W", "w1");
    named["publish_id"] = json!("tick-1");
    feed.send(named.clone()).await;
    feed.send(json!([named.clone(), tagged("IDEM-W", "plain")])).await;
    second.send(named).await;
    let tags = deliveries(&mut sub, Duration::from_millis(500)).await;
    assert_eq!(tags, HashMap::from([("w1".into(), 1), ("plain".into(), 1)]));
    feed.expect_silence().await;
    second.expect_silence().await;
}

// ------------------------------------------------------------- cluster

async fn cluster_node(redis_url: String) -> TestServer {
    let node = start_with(|o| {
        o.redis = Some(redis_url);
        o.idempotency_window_secs = Some(120.0);
    })
    .await;
    node.wait_ready(200).await;
    node
}

#[allow(unsafe_code)]
fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) on a process this test started, with a valid signal.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// A redis-server stopped with SIGSTOP; SIGCONT when resumed or dropped.
struct Paused(libc::pid_t);

impl Paused {
    fn pause(redis: &Redis) -> Paused {
        let info = redis.cli(&["INFO", "server"]);
        let pid = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
            .and_then(|p| p.parse().ok())
            .expect("INFO server names process_id");
        signal(pid, libc::SIGSTOP);
        Paused(pid)
    }

    fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn during_a_redis_pause_a_503_is_true_or_says_unknown_and_a_keyed_retry_is_delivered_once() {
    let redis = Redis::start();
    let node = cluster_node(redis.url()).await;
    let mut sub = node.market("alice", &["PAUSE"]).await;
    let mut feed = ingest(&node).await;
    // Every publish script is loaded in Redis before the pause.
    node.publish_ok(tagged("PAUSE", "before")).await;
    assert_eq!(
        publish_keyed(&node, "pause-0", &tagged("PAUSE", "before"))
            .await
            .0,
        202
    );
    let mut next = 1;
    assert_eq!(deliveries_from(&mut sub, QUIET, &mut next).await["before"], 2);
    let mut fed = tagged("PAUSE", "fed");
    fed["publish_id"] = json!("pause-feed");

    let paused = Paused::pause(&redis);
    // Sent while the node still holds the link: they reach Redis's socket,
    // get no answer within the 2 s request timeout, and run when it resumes.
    let api = Api {
        addr: node.addr,
        http: node.api.http.clone(),
    };
    feed.send(fed.clone()).await;
    let keyed_body = tagged("PAUSE", "keyed");
    let (keyed, plain) = tokio::join!(
        publish_keyed(&api, "pause-1", &keyed_body),
        api.publish(tagged("PAUSE", "plain"))
    );
    let fed_answer = feed.recv().await;
    // Sent once the node knows the link is gone: nothing reaches Redis.
    node.wait_ready(503).await;
    let refused = publish_keyed(&node, "pause-2", &tagged("PAUSE", "refused")).await;

    let answers = [
        ("keyed", keyed.0, &keyed.2),
        ("plain", plain.0, &plain.1),
        ("refused", refused.0, &refused.2),
    ];
    for (what, status, answer) in answers {
        assert_eq!(status, 503, "{what}: {answer}");
    }

    paused.resume();
    node.wait_ready(200).await;
    // What Redis ran on resuming reaches the subscriber: only what was
    // answered "unknown" may be among it.
    let ran = deliveries_from(&mut sub, Duration::from_secs(1), &mut next).await;
    for (what, _, answer) in answers {
        if answer["outcome"] != "unknown" {
            assert!(
                !ran.contains_key(what),
                "{what} was answered {answer}, yet delivered: {ran:?}"
            );
        }
        assert!(
            answer["outcome"] == "unknown" || answer["outcome"] == "not_published",
            "{what}: a 503 says what became of the request: {answer}"
        );
    }
    assert_eq!(
        plain.1["outcome"], "unknown",
        "sent before the link was lost: {plain:?}"
    );
    assert_eq!(refused.2["outcome"], "not_published", "{refused:?}");
    assert_eq!(fed_answer["code"], "outcome_unknown", "{fed_answer}");
    assert!(
        ran.get("plain") == Some(&1) && ran.get("fed") == Some(&1),
        "the publishes answered unknown ran when Redis resumed (else this test proves less): {ran:?}"
    );

    // Retried with their keys: each is published once, whatever the first
    // attempt did in Redis, and answered as a success.
    for (key, tag) in [("pause-1", "keyed"), ("pause-2", "refused")] {
        let (status, _, answer) = publish_keyed(&node, key, &tagged("PAUSE", tag)).await;
        assert_eq!((status, answer), (202, json!({"accepted": 1})), "retry of {key}");
    }
    let again = publish_keyed(&node, "pause-1", &tagged("PAUSE", "keyed")).await;
    assert_eq!(again, (202, true, json!({"accepted": 1})));
    feed.send(fed).await;
    let retried = deliveries_from(&mut sub, Duration::from_secs(1), &mut next).await;
    let mut want = HashMap::from([("refused".to_string(), 1)]);
    if !ran.contains_key("keyed") {
        want.insert("keyed".into(), 1);
    }
    assert_eq!(retried, want, "the retries deliver exactly what never ran");
    feed.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_given_the_same_key_deliver_once() {
    two_nodes_deliver_once::<Redis>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_given_the_same_key_deliver_once_over_a_redis_cluster() {
    two_nodes_deliver_once::<RedisCluster>().await;
}

async fn two_nodes_deliver_once<B: Backend>() {
    let redis = B::start();
    let (a, b) = (cluster_node(redis.url()).await, cluster_node(redis.url()).await);
    let mut sub_a = a.market("alice", &["TWO"]).await;
    let mut sub_b = b.market("bob", &["TWO"]).await;
    let body = json!([tagged("TWO", "x"), tagged("TWO", "y")]);

    // At the same moment, and once more after.
    let (first, second) = tokio::join!(
        publish_keyed(&a, "shared", &body),
        publish_keyed(&b, "shared", &body)
    );
    let third = publish_keyed(&b, "shared", &body).await;
    for answer in [&first, &second, &third] {
        assert_eq!(
            (answer.0, &answer.2),
            (202, &json!({"accepted": 2})),
            "{answer:?}"
        );
    }
    assert!(first.1 || second.1, "one of the two is a replay");
    assert!(third.1);
    let other = publish_keyed(&a, "shared", &tagged("TWO", "z")).await;
    assert_eq!(other.0, 422, "{other:?}");

    // publish_id on /ws/ingest, one node each.
    let mut named = tagged("TWO", "w");
    named["publish_id"] = json!("feed-7");
    let (mut feed_a, mut feed_b) = (ingest(&a).await, ingest(&b).await);
    feed_a.send(named.clone()).await;
    feed_b.send(named).await;

    let want = HashMap::from([("x".into(), 1), ("y".into(), 1), ("w".into(), 1)]);
    assert_eq!(deliveries(&mut sub_a, Duration::from_secs(1)).await, want);
    assert_eq!(deliveries(&mut sub_b, Duration::from_secs(1)).await, want);
    feed_a.expect_silence().await;
    feed_b.expect_silence().await;
}

// ------------------------------------------------------------------ 413

fn request_head(addr: std::net::SocketAddr, length: Option<usize>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".into(),
    };
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\n{framing}\r\n"
    )
}

/// Reads the status line and head of an answer.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("reading the answer failed: {e} (after {} bytes)", got.len()),
            Err(_) => panic!("no answer within {WAIT:?}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_body_written_whole_before_reading_gets_its_413_not_a_reset() {
    const BODY: usize = 32 * 1024 * 1024;
    let s = start().await;
    let chunk = vec![b' '; 64 * 1024];
    for length in [Some(BODY), None] {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(request_head(s.addr, length).as_bytes())
            .await
            .unwrap();
        let mut sent = 0;
        while sent < BODY {
            let r = match length {
                Some(_) => tcp.write_all(&chunk).await,
                None => {
                    let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    tcp.write_all(&framed).await
                }
            };
            if let Err(e) = r {
                panic!("{length:?}: the server stopped reading after {sent} bytes: {e}");
            }
            sent += chunk.len();
        }
        if length.is_none() {
            tcp.write_all(b"0\r\n\r\n").await.unwrap();
        }
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 413"), "{length:?}: {head}");
        assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    }
    // The node is fine afterwards.
    s.publish_ok(tagged("AFTER", "x")).await;
}

#[tokio::test]
async fn a_body_far_over_the_linger_budget_ends_in_bounded_time() {
    let s = start().await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(request_head(s.addr, Some(1 << 30)).as_bytes())
        .await
        .unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 256 * 1024];
        let mut sent = 0usize;
        while sent < 1 << 30 {
            if tx.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), rx.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was still open after 15 s"),
        }
    }
    let sent = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer was stopped")
        .unwrap();
    assert!(sent < 200 << 20, "the server read {sent} bytes of a refused body");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );

    // A trickle: the linger time, not the body, ends it.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(request_head(s.addr, Some(4 << 20)).as_bytes())
        .await
        .unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        while tx.write_all(&[b' '; 512]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut got = Vec::new();
    // A reset ends it as well as an answer does: only the time is judged.
    let ended = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut got)).await;
    assert!(ended.is_ok(), "a trickling refused body held the connection 10 s");
    let head = String::from_utf8_lossy(&got);
    trickle.abort();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "answered before the linger time: {took:?}"
    );
    assert!(head.is_empty() || head.starts_with("HTTP/1.1 413"), "{head}");
}
