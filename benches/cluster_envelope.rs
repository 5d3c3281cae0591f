//! Criterion benchmarks of cluster mode's own work per update, on both
//! sides of Redis (the script in between is measured by loadgen runs, as
//! Redis's CPU):
//! - `script_args/N`: a publish body of N market updates decoded and
//!   turned into the publishing script's arguments, as ingress and the
//!   batcher do before the call (`replication::script_entry`);
//! - `envelope_decode/N`: a `v2` envelope of N updates, as `publish.lua`
//!   writes it, parsed and turned into the frames fanout takes
//!   (`layout::decode_envelope`, then one `Frame` per update), as the
//!   link does with each message from Redis;
//! - `envelope_encode/N`: the same envelope written by the Rust encoder
//!   the tests use, for comparison with the decode.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickwire::protocol::encode::Frame;
use tickwire::protocol::update::decode_batch;
use tickwire::protocol::{Seq, StreamKey, UpdateKind};
use tickwire::replication::layout::{self, Envelope, Sequenced};
use tickwire::replication::script_entry;

fn body(n: usize) -> String {
    let entries: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"type":"market_update","symbol":"SYM{:03}","price":100.{:02},"change":0.25,"volume":{},"t_ns":1764511805123456789}}"#,
                i % 100,
                i % 100,
                1_000_000 + i
            )
        })
        .collect();
    format!("[{}]", entries.join(","))
}

fn frames(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"type":"market_update","symbol":"SYM{:03}","price":100.{:02},"change":0.25,"volume":{},"t_ns":1764511805123456789,"timestamp":"2026-12-04T19:20:05.123456Z","seq":{}}}"#,
                i % 100,
                i % 100,
                1_000_000 + i,
                40_000 + i
            )
        })
        .collect()
}

fn updates(frames: &[String]) -> Vec<Sequenced<'_>> {
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let symbol = format!("SYM{:03}", i % 100);
            Sequenced {
                kind: UpdateKind::MarketUpdate,
                stream: StreamKey::Symbol(symbol.as_str().into()),
                seq: Seq(40_000 + i as u64),
                micros: 1_764_511_805_123_456,
                meta: tickwire::history::EntryMeta {
                    symbol: Some(symbol.as_str().into()),
                    ..Default::default()
                },
                frame,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("script_args");
    for n in [1usize, 32] {
        let body = body(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| {
                let entries: Vec<_> = decode_batch(body.as_bytes())
                    .expect("valid JSON")
                    .into_iter()
                    .map(|u| script_entry(u.expect("valid"), None, 1_764_511_805_123_456))
                    .collect();
                black_box(entries)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("envelope_decode");
    for n in [1usize, 32] {
        let frames = frames(n);
        let text = layout::encode_updates(&updates(&frames));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let Some(Envelope::Updates(updates)) = layout::decode_envelope(black_box(text)) else {
                    panic!("a valid envelope")
                };
                let frames: Vec<Frame> = updates.into_iter().map(|u| Frame::from(u.frame)).collect();
                black_box(frames)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("envelope_encode");
    for n in [1usize, 32] {
        let frames = frames(n);
        let updates = updates(&frames);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &updates, |b, updates| {
            b.iter(|| black_box(layout::encode_updates(updates)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
