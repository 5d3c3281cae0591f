//! Criterion benchmarks of the path one update takes through a node:
//! decoding a publish body and a subscriber command, encoding the update
//! once, the shard ring, and fanout of one update to 1, 100 and 10 000
//! subscribers, and permessage-deflate of one frame. Whole-system numbers (sockets, tokio, the kernel) come
//! from `loadgen`; these isolate the server's own user-space work.
//!
//! Fanout is measured two ways, because each alone misleads:
//! - `fanout_deliver/N`: the worker's inner loop on this thread, a clone of
//!   the frame pushed into each of N outboxes (`Outbox::push_deferred`),
//!   then one wake per outbox that went from empty to non-empty. This is
//!   the CPU cost per delivery, with no thread hand-off in it.
//! - `fanout_worker/N`: the real `Fanout` thread: an `Inbound` goes into
//!   the shard ring, the worker sequences it, encodes it, keeps it in
//!   history and the latest-price map and delivers it; the clock stops
//!   when the last subscriber's outbox holds the frame (a stream's
//!   subscribers are served in subscription order). This includes waking
//!   the parked worker, so for small N it is a hand-off latency, not a
//!   CPU cost. Outboxes are emptied between iterations, outside the clock,
//!   so every push is the first of its batch and owes a wake (as in the
//!   standard scenario, where each socket gets one frame at a time).

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use tickwire::auth::SymbolAccess;
use tickwire::fanout::{Control, Fanout, FanoutConfig, Inbound};
use tickwire::metrics::Metrics;
use tickwire::outbox::{Outbox, Outgoing, Overflow, Push};
use tickwire::protocol::command;
use tickwire::protocol::encode::{self, Frame};
use tickwire::protocol::update::{decode_batch, Update};
use tickwire::protocol::{Endpoint, Seq, StreamKey};
use tickwire::registry::{Member, Subscriber, SubscriberId};
use tickwire::ring::Ring;

/// The shape `loadgen bench` publishes (no `timestamp`: the server fills it).
fn market_json(i: usize) -> String {
    format!(
        r#"{{"type":"market_update","symbol":"SYM{:03}","price":100.{:02},"change":0.25,"volume":{},"t_ns":1764511805123456789}}"#,
        i % 100,
        i % 100,
        1_000_000 + i
    )
}

fn one_update() -> Update {
    decode_batch(market_json(7).as_bytes())
        .expect("valid JSON")
        .pop()
        .expect("one entry")
        .expect("a valid update")
}

fn subscriber(capacity: usize) -> Arc<Subscriber> {
    Arc::new(Subscriber {
        id: SubscriberId::next(),
        outbox: Arc::new(Outbox::new(capacity, Overflow::Conflate)),
        access: SymbolAccess::All,
    })
}

/// Empties an outbox the way the connection's writer does.
fn drain(outbox: &Outbox, batch: &mut VecDeque<Outgoing>) -> usize {
    // The outbox holds frames, so `next_batch` returns without awaiting.
    let _ = outbox.next_batch(batch).now_or_never();
    let n = batch.len();
    batch.clear();
    n
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let one = market_json(1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_body_1", |b| {
        b.iter(|| decode_batch(black_box(one.as_bytes())))
    });
    let ten = format!("[{}]", (0..10).map(market_json).collect::<Vec<_>>().join(","));
    g.throughput(Throughput::Elements(10));
    g.bench_function("publish_body_batch_10", |b| {
        b.iter(|| decode_batch(black_box(ten.as_bytes())))
    });
    let subscribe =
        br#"{"type":"subscribe","symbols":["BTC-USD","ETH-USD"],"since":{"BTC-USD":1041},"id":7}"#;
    g.throughput(Throughput::Elements(1));
    g.bench_function("command_subscribe", |b| {
        b.iter(|| command::decode(black_box(subscribe), Endpoint::MarketData))
    });
    let ping = br#"{"type":"ping"}"#;
    g.bench_function("command_ping", |b| {
        b.iter(|| command::decode(black_box(ping), Endpoint::MarketData))
    });
    g.finish();
}

fn encode_update(c: &mut Criterion) {
    let update = one_update();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0;
    g.bench_function("update", |b| {
        b.iter(|| {
            seq += 1;
            encode::update(black_box(&update.body), Seq(seq))
        })
    });
    g.finish();
}

/// permessage-deflate of one frame, as each broadcast is compressed once:
/// the tick the bench publishes (about 165 bytes as sent) and a frame of
/// about 1 KiB, by the fixed-code encoder (`compress`) and by zlib's
/// method (`compress_with_zlib`, miniz_oxide reset per message).
fn deflate_frame(c: &mut Criterion) {
    let tick = encode::update(&one_update().body, Seq(1042));
    let tick = tick.as_str().as_bytes().to_vec();
    let mut book = String::from(r#"{"type":"market_update","symbol":"BTC-USD","bids":["#);
    for i in 0..40 {
        book.push_str(&format!(
            "[{}.{:02},{}.{:03}],",
            45_000 - i,
            (i * 37) % 100,
            i % 7,
            (i * 113) % 1000
        ));
    }
    book.push_str(r#"[1.0,1.0]],"seq":1042}"#);
    let mut g = c.benchmark_group("deflate");
    g.throughput(Throughput::Elements(1));
    for (name, payload) in [("tick", tick.as_slice()), ("book_1k", book.as_bytes())] {
        g.bench_function(format!("fixed/{name}"), |b| {
            b.iter(|| tickwire::protocol::deflate::compress(black_box(payload)))
        });
        g.bench_function(format!("zlib/{name}"), |b| {
            b.iter(|| tickwire::protocol::deflate::compress_with_zlib(black_box(payload)))
        });
    }
    g.finish();
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    let (ring, _parker) = Ring::<u64, ()>::new(65_536);
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_pop_1", |b| {
        b.iter(|| {
            let _ = ring.try_push(black_box(1));
            ring.pop_update()
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("push_64_pop_64", |b| {
        b.iter(|| {
            for i in 0..64 {
                let _ = ring.try_push(black_box(i));
            }
            while let Some(v) = ring.pop_update() {
                black_box(v);
            }
        })
    });
    // What ingress puts in the ring for real: an `Inbound` (a decoded body).
    let (inbound_ring, _parker) = Ring::<Inbound, ()>::new(65_536);
    let update = one_update();
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_pop_inbound", |b| {
        b.iter_batched(
            || Inbound::fresh(update.clone(), Instant::now()),
            |inbound| {
                let _ = inbound_ring.try_push(inbound);
                inbound_ring.pop_update()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

const FANOUT_SIZES: [usize; 3] = [1, 100, 10_000];

/// The worker's per-update inner loop (`fanout::deliver` / `push_one`),
/// rebuilt from the public API, then the once-per-batch wakes.
fn fanout_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_deliver");
    let update = one_update();
    let frame: Frame = encode::update(&update.body, Seq(1));
    let conflation_key = Some(1);
    for n in FANOUT_SIZES {
        let members: Vec<Member> = (0..n)
            .map(|_| Member {
                sub: subscriber(4_096),
                floor: Seq(0),
                throttle: None,
            })
            .collect();
        let mut wakes: Vec<Arc<Outbox>> = Vec::with_capacity(n);
        let mut batch = VecDeque::new();
        let received_at = Instant::now();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for i in 0..iters {
                    let t = Instant::now();
                    for m in members.iter().filter(|m| m.wants(Seq(i + 1))) {
                        let (pushed, wake) =
                            m.sub
                                .outbox
                                .push_deferred(&frame, Some(received_at), conflation_key);
                        debug_assert_eq!(pushed, Push::Queued);
                        if wake {
                            wakes.push(m.sub.outbox.clone());
                        }
                    }
                    for o in wakes.drain(..) {
                        o.wake();
                    }
                    spent += t.elapsed();
                    // The writers' side, off the clock: each frame is taken
                    // before the next one comes, so every push owes a wake.
                    for m in &members {
                        drain(&m.sub.outbox, &mut batch);
                    }
                }
                spent
            })
        });
    }
    g.finish();
}

/// One update through the real fanout thread, until the last of N
/// subscribers holds it.
fn fanout_worker(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_worker");
    g.sample_size(20);
    let update = one_update();
    let symbol = update.symbol.clone().expect("a market update has a symbol");
    let key = StreamKey::Symbol(symbol.clone());
    for n in FANOUT_SIZES {
        let fanout = Fanout::start(
            FanoutConfig {
                shards: 1,
                ring_capacity: 65_536,
                history_messages: 1_000,
                history_max_age: Duration::from_secs(3_600),
                max_unread_per_user: 1_000,
            },
            Arc::new(Metrics::new(false)),
            Arc::new(tickwire::shutdown::Shutdown::default()),
        );
        let subs: Vec<Arc<Subscriber>> = (0..n).map(|_| subscriber(4_096)).collect();
        for s in &subs {
            fanout.control(
                &key,
                Control::Subscribe {
                    sub: s.clone(),
                    symbol: symbol.clone(),
                    since: None,
                    fetched: None,
                    min_interval: None,
                },
            );
        }
        let last = subs.last().expect("at least one subscriber").clone();
        let mut batch = VecDeque::new();
        // A first update, so that every subscription is in place.
        let mut send = |update: &Update| {
            let inbound = Inbound::fresh(update.clone(), Instant::now());
            let t = Instant::now();
            assert!(fanout.shard_for(&key).try_push(inbound).is_ok(), "ring full");
            while last.outbox.is_empty() {
                std::hint::spin_loop();
            }
            let spent = t.elapsed();
            for s in &subs {
                drain(&s.outbox, &mut batch);
            }
            spent
        };
        send(&update);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| (0..iters).map(|_| send(&update)).sum())
        });
        fanout.stop();
    }
    g.finish();
}

criterion_group!(
    benches,
    decode,
    encode_update,
    deflate_frame,
    ring,
    fanout_deliver,
    fanout_worker
);
criterion_main!(benches);
