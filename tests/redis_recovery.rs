//! A cluster node comes back from a Redis outage quickly and truthfully
//! (issue 15, items 4 and 12), over a real redis-server and a node run as
//! a child process:
//! - after a 2 s pause of Redis (SIGSTOP, SIGCONT), a node that has seen
//!   the notifications of 50 000 users and serves one subscriber on 200
//!   symbols is ready again within 2 s, stays ready, and its subscriber
//!   gets what is published next with no gap;
//! - after Redis restarts empty (no persistence), every subscriber of a
//!   stream whose counter was re-seeded gets a `reset` for it (on
//!   `/ws/notifications/`: `reset` with stream `notifications`, then the
//!   unread list as Redis now holds it), and what follows keeps rising:
//!   no `seq` it saw comes again; the same for a Redis that came back
//!   without its newest writes (an append-only file a second behind);
//! - a stream with no local subscriber, which a catch-up does not read,
//!   forgets its window rather than keep one with a hole: a later resume
//!   on it while Redis is away gets a `reset`, never a silent gap.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tickwire::protocol::StreamKey;
use tickwire::replication::layout::{group_of, prefix, stream_id, GROUPS};

#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) only takes two integers and touches none of our
    // memory; the pid is that of the redis-server this test started, which
    // its guard has not reaped yet.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// The process id of the redis-server, as it reports it.
fn redis_pid(redis: &Redis) -> i32 {
    redis
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("INFO server names process_id")
}

/// `n` symbol names whose streams fall into every stream group, so that
/// their subscriber makes the node listen to all of them (and so see
/// every user's notifications).
fn symbols_covering_every_group(n: usize) -> Vec<String> {
    let group = |s: &str| group_of(&stream_id(&StreamKey::Symbol(s.into())));
    let mut covered = HashSet::new();
    let mut chosen = Vec::new();
    let mut rest = Vec::new();
    for i in 0.. {
        if covered.len() as u64 == GROUPS && chosen.len() + rest.len() >= n {
            break;
        }
        let s = format!("SYM{i:04}");
        if covered.insert(group(&s)) {
            chosen.push(s);
        } else {
            rest.push(s);
        }
    }
    chosen.extend(rest);
    chosen.truncate(n);
    assert_eq!(
        chosen.iter().map(|s| group(s)).collect::<HashSet<_>>().len() as u64,
        GROUPS
    );
    chosen
}

/// Takes `n` market updates and checks each is the next of its symbol.
async fn take_in_order(c: &mut Client, n: usize, last: &mut HashMap<String, u64>) {
    for _ in 0..n {
        let m = c.recv_type("market_update").await;
        let symbol = m["symbol"].as_str().expect("symbol").to_string();
        let seq = m["seq"].as_u64().expect("seq");
        let before = last.insert(symbol.clone(), seq).unwrap_or(0);
        assert_eq!(seq, before + 1, "gap, duplicate or reorder on {symbol}");
    }
}

async fn ready(api: &Api) -> bool {
    matches!(api.http.get(api.url("/ready")).send().await, Ok(r) if r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_2s_redis_pause_a_node_that_saw_50000_streams_is_ready_within_2s() {
    const USERS: usize = 50_000;
    const PER_BODY: usize = 2_000;
    const TARGET: Duration = Duration::from_secs(2);
    let redis = Redis::start();
    let node = NodeProc::start(&["--redis", &redis.url()]);
    node.wait_ready(200).await;

    let symbols = symbols_covering_every_group(200);
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut sub = node.market("watcher", &names).await;
    let mut last = HashMap::new();
    node.publish_ok(json!(names
        .iter()
        .map(|s| market_update(s, 1.0))
        .collect::<Vec<_>>()))
        .await;
    take_in_order(&mut sub, names.len(), &mut last).await;

    for first in (0..USERS).step_by(PER_BODY) {
        let body: Vec<Value> = (first..first + PER_BODY)
            .map(|u| notification(&format!("user{u}"), &format!("n{u}")))
            .collect();
        node.publish_ok(json!(body)).await;
    }
    // Redis delivers its channels in order: once an update published after
    // the notifications arrives, the node has taken them all.
    node.publish_ok(market_update(names[0], 2.0)).await;
    take_in_order(&mut sub, 1, &mut last).await;

    let pid = redis_pid(&redis);
    send_signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    node.wait_ready(503).await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    send_signal(pid, libc::SIGCONT);
    let resumed = Instant::now();

    let mut took = None;
    while resumed.elapsed() < Duration::from_secs(15) {
        if ready(&node).await {
            took = Some(resumed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("ready again {took:?} after Redis resumed");
    let took = took.expect("the node turned ready again");
    assert!(took <= TARGET, "ready only {took:?} after Redis resumed");
    let ready_at = Instant::now();
    while ready_at.elapsed() < Duration::from_secs(3) {
        assert!(
            ready(&node).await,
            "turned not-ready again {:?} after recovering:\n{}",
            ready_at.elapsed(),
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let after: Vec<Value> = names[..20]
        .iter()
        .flat_map(|s| [market_update(s, 3.0), market_update(s, 4.0)])
        .collect();
    node.publish_ok(json!(after)).await;
    take_in_order(&mut sub, 40, &mut last).await;
    sub.expect_silence().await;
}

/// Publishes `body` until it is taken: while the node is not linked (or
/// catching up) it is refused with 503 and nothing of it is published.
async fn publish_until_taken(api: &Api, body: Value) {
    for _ in 0..400 {
        let (status, answer) = api.publish(body.clone()).await;
        if status == 202 {
            return;
        }
        assert_eq!(status, 503, "{answer}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("publishing never came back");
}

async fn after_redis_restarts_empty_subscribers_reset_and_see_no_seq_again<B: Backend>() {
    let mut redis = B::start();
    let node = NodeProc::start(&["--redis", &redis.url()]);
    node.wait_ready(200).await;
    let mut market = node.market("alice", &["XRP-USD"]).await;
    let mut signals = node.connect("trading-signals", "bob").await;
    let (mut notes, _) = node.notifications("carol").await;

    let mut before: Vec<Value> = (0..5).map(|i| market_update("XRP-USD", i as f64)).collect();
    before.extend((0..3).map(|i| new_signal(&format!("sig{i}"), "XRP-USD", "BUY")));
    before.extend((0..2).map(|i| notification("carol", &format!("note{i}"))));
    node.publish_ok(json!(before)).await;
    assert_consecutive(&seqs(&mut market, "market_update", 5).await, 1);
    assert_consecutive(&seqs(&mut signals, "new_signal", 3).await, 1);
    assert_consecutive(&seqs(&mut notes, "new_notification", 2).await, 1);

    redis.restart();

    let reset = market.recv_type("reset").await;
    assert_eq!(reset, json!({"type": "reset", "stream": "XRP-USD", "seq": 6}));
    let reset = signals.recv_type("reset").await;
    assert_eq!(reset, json!({"type": "reset", "stream": "signals", "seq": 4}));
    let reset = notes.recv_type("reset").await;
    assert_eq!(
        reset,
        json!({"type": "reset", "stream": "notifications", "seq": 3})
    );
    let unread = notes.recv().await;
    assert_eq!(
        unread,
        json!({"type": "unread_notifications", "notifications": []}),
        "the unread list as the emptied Redis holds it"
    );

    let mut after: Vec<Value> = (0..5)
        .map(|i| market_update("XRP-USD", 10.0 + i as f64))
        .collect();
    after.push(new_signal("sig9", "XRP-USD", "SELL"));
    after.push(notification("carol", "note9"));
    publish_until_taken(&node, json!(after)).await;
    assert_consecutive(&seqs(&mut market, "market_update", 5).await, 6);
    assert_consecutive(&seqs(&mut signals, "new_signal", 1).await, 4);
    assert_consecutive(&seqs(&mut notes, "new_notification", 1).await, 3);
    market.expect_silence().await;
    signals.expect_silence().await;
    notes.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_newest_writes_gets_its_counters_back_and_subscribers_reset() {
    let redis = Redis::start();
    let node = NodeProc::start(&["--redis", &redis.url()]);
    node.wait_ready(200).await;
    let mut market = node.market("alice", &["XRP-USD"]).await;
    node.publish_ok(json!((0..5)
        .map(|i| market_update("XRP-USD", i as f64))
        .collect::<Vec<_>>()))
        .await;
    assert_consecutive(&seqs(&mut market, "market_update", 5).await, 1);

    // What a Redis restored from an append-only file a second behind holds:
    // the counter at 3, the history without 4 and 5; the link drops.
    let sid = stream_id(&StreamKey::Symbol("XRP-USD".into()));
    let p = prefix(group_of(&sid));
    redis.cli(&["SET", &format!("{p}seq:{sid}"), "3"]);
    redis.cli(&["XDEL", &format!("{p}h:{sid}"), "4-1", "5-1"]);
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);

    let reset = market.recv_type("reset").await;
    assert_eq!(reset, json!({"type": "reset", "stream": "XRP-USD", "seq": 6}));
    publish_until_taken(
        &node,
        json!((0..5)
            .map(|i| market_update("XRP-USD", 10.0 + i as f64))
            .collect::<Vec<_>>()),
    )
    .await;
    assert_consecutive(&seqs(&mut market, "market_update", 5).await, 6);
    market.expect_silence().await;
}

/// A TCP relay to a Redis that the test can cut: while cut it drops every
/// connection it carries and every new one, so one node loses Redis while
/// the others keep it.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let links = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (open, links) = (open.clone(), links.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Relay {
            port,
            open,
            links,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_caught_up_gives_a_later_resume_a_reset_not_a_gap() {
    // Two symbols of one stream group: a subscriber of `held` keeps node A
    // listening to the group, so A sees `quiet` too, which nobody on A follows.
    let group = |s: &str| group_of(&stream_id(&StreamKey::Symbol(s.into())));
    let held = "HELD-0".to_string();
    let quiet = (1..)
        .map(|i| format!("QUIET-{i}"))
        .find(|s| group(s) == group(&held))
        .unwrap();
    let redis = Redis::start();
    let relay = Relay::start(redis.port).await;
    let a = NodeProc::start(&["--redis", &relay.url()]);
    let b = NodeProc::start(&["--redis", &redis.url()]);
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let mut c = a.market("alice", &[&held]).await;
    let mut last = HashMap::new();

    // A keeps `quiet` 1..3 in its window: the update of `held` published
    // after them arrives on the same channel after them.
    let quiet_then_held = |n: usize| {
        let mut body: Vec<Value> = (0..n).map(|i| market_update(&quiet, i as f64)).collect();
        body.push(market_update(&held, 0.0));
        json!(body)
    };
    b.publish_ok(quiet_then_held(3)).await;
    take_in_order(&mut c, 1, &mut last).await;

    // A loses Redis while `quiet` 4..6 are published through B; back, it
    // catches up `held` only, and then sees `quiet` 7 live.
    relay.cut();
    a.wait_ready(503).await;
    b.publish_ok(quiet_then_held(3)).await;
    relay.restore();
    a.wait_ready(200).await;
    take_in_order(&mut c, 1, &mut last).await;
    b.publish_ok(quiet_then_held(1)).await;
    take_in_order(&mut c, 1, &mut last).await;

    // Redis away again, A resumes `quiet` from 3 with what it holds alone.
    relay.cut();
    a.wait_ready(503).await;
    c.send(json!({"type": "subscribe", "symbols": [&quiet], "since": {&quiet: 3}}))
        .await;
    c.recv_type("subscribed").await;
    let first = c.recv().await;
    assert_eq!(
        first,
        json!({"type": "reset", "stream": &quiet, "seq": 7}),
        "4..6 are not on this node: it must say so"
    );
    let next = c.recv().await;
    assert_eq!(
        (next["symbol"].as_str(), next["seq"].as_u64()),
        (Some(&*quiet), Some(7))
    );
    c.expect_silence().await;
}

mod single {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_redis_restarts_empty_subscribers_reset_and_see_no_seq_again() {
        super::after_redis_restarts_empty_subscribers_reset_and_see_no_seq_again::<Redis>().await
    }
}

mod redis_cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_redis_restarts_empty_subscribers_reset_and_see_no_seq_again() {
        super::after_redis_restarts_empty_subscribers_reset_and_see_no_seq_again::<RedisCluster>().await
    }
}
