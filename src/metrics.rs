//! Counters and latency histograms of one node, rendered as Prometheus
//! text at `/metrics` and as JSON at `/api/stats` for the dashboard.
//! Hot paths touch a counter once per batch, not once per delivery, and
//! record latency into hdrhistograms behind mutexes held for a record.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::protocol::frame::{compression_counts, msgpack_count};
use crate::protocol::{Endpoint, UpdateKind};

/// Latency in microseconds, 1 µs to 60 s, 3 significant digits.
pub struct LatencyHistogram(Mutex<Histogram<u64>>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        // Bounds are constants that hdrhistogram accepts.
        let h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        LatencyHistogram(Mutex::new(h))
    }
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let us = micros(d);
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Saturating record never fails for values within bounds.
        h.saturating_record(us);
    }

    /// Records every sample gathered by a [`Samples`] and empties it, with
    /// one lock for all of them: a fanout worker records once per delivery
    /// and would otherwise take this lock (which the other workers and the
    /// connections' tasks share) for each.
    pub fn record_all(&self, samples: &mut Samples) {
        if samples.0.is_empty() {
            return;
        }
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for us in samples.0.drain(..) {
            h.saturating_record(us);
        }
    }

    fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 60_000_000)
}

/// Latencies gathered by one thread for a [`LatencyHistogram`], recorded
/// together by [`LatencyHistogram::record_all`].
#[derive(Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(micros(d));
    }
}

#[derive(Default)]
pub struct Metrics {
    started: std::sync::OnceLock<Instant>,
    /// Open connections per endpoint; signed so a racing decrement never wraps.
    connections: [AtomicI64; Endpoint::COUNT],
    connections_total: [AtomicU64; Endpoint::COUNT],
    rejected_handshakes: AtomicU64,
    messages_in: [AtomicU64; 4],
    rejected_publishes: AtomicU64,
    messages_out: AtomicU64,
    /// Times a subscriber's queued frames were written out (one `writev`
    /// or a few when the socket takes a batch in parts).
    write_turns: AtomicU64,
    bytes_out: AtomicU64,
    bytes_out_uncompressed: AtomicU64,
    /// Of `messages_out`, those written as MessagePack binary frames.
    messages_out_msgpack: AtomicU64,
    slow_consumer_cuts: AtomicU64,
    conflated_frames: AtomicU64,
    rate_limited_commands: AtomicU64,
    rate_limited_publishes: AtomicU64,
    rate_limit_closes: AtomicU64,
    commands: AtomicU64,
    command_errors: AtomicU64,
    pub publish_to_enqueue: LatencyHistogram,
    pub publish_to_write: LatencyHistogram,
    redis_configured: AtomicBool,
    redis_connected: AtomicBool,
}

/// What fanout reports of itself for the stats and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct FanoutGauges {
    /// Updates waiting in each shard's ring.
    pub ring_depths: Vec<usize>,
    /// Subscribers behind (the back-pressure signal's count).
    pub subscribers_behind: usize,
    /// Times a worker paused for back-pressure.
    pub backpressure_pauses: u64,
}

// All counters are Relaxed: each is an independent tally read for display.
impl Metrics {
    pub fn new(redis_configured: bool) -> Metrics {
        let m = Metrics::default();
        let _ = m.started.set(Instant::now());
        m.redis_configured.store(redis_configured, Ordering::Relaxed);
        m
    }

    pub fn connection_opened(&self, e: Endpoint) {
        self.connections[e.index()].fetch_add(1, Ordering::Relaxed);
        self.connections_total[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, e: Endpoint) {
        self.connections[e.index()].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_connections(&self) -> i64 {
        self.connections.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn handshake_rejected(&self) {
        self.rejected_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn published(&self, kind: UpdateKind) {
        self.messages_in[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn publish_rejected(&self, n: u64) {
        self.rejected_publishes.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages written (`binary` of them as MessagePack) in `turns` write
    /// turns: their payload bytes as written (compressed where
    /// permessage-deflate was), and the same before compression.
    pub fn wrote(&self, frames: u64, bytes: u64, plain_bytes: u64, binary: u64, turns: u64) {
        self.write_turns.fetch_add(turns, Ordering::Relaxed);
        self.messages_out.fetch_add(frames, Ordering::Relaxed);
        if binary > 0 {
            self.messages_out_msgpack.fetch_add(binary, Ordering::Relaxed);
        }
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        self.bytes_out_uncompressed
            .fetch_add(plain_bytes, Ordering::Relaxed);
    }

    pub fn slow_consumer_cut(&self) {
        self.slow_consumer_cuts.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames a lagging conflating subscriber never got, newer ones of the
    /// same symbol having replaced them.
    pub fn conflated(&self, n: u64) {
        self.conflated_frames.fetch_add(n, Ordering::Relaxed);
    }

    pub fn publish_rate_limited(&self, n: u64) {
        self.rate_limited_publishes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn command(&self, ok: bool) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.command_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rate_limited(&self) {
        self.rate_limited_commands.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limit_closed(&self) {
        self.rate_limit_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_redis_connected(&self, up: bool) {
        self.redis_connected.store(up, Ordering::Relaxed);
    }

    pub fn messages_out(&self) -> u64 {
        self.messages_out.load(Ordering::Relaxed)
    }

    pub fn slow_consumer_cuts(&self) -> u64 {
        self.slow_consumer_cuts.load(Ordering::Relaxed)
    }

    fn uptime(&self) -> Duration {
        self.started.get().map(Instant::elapsed).unwrap_or_default()
    }

    /// The JSON of `/api/stats`.
    pub fn stats_json(&self, fanout: &FanoutGauges) -> Value {
        let ring_depths = &fanout.ring_depths;
        let conns: serde_json::Map<String, Value> = Endpoint::ALL
            .iter()
            .map(|e| {
                (
                    e.name().to_string(),
                    json!(self.connections[e.index()].load(Ordering::Relaxed).max(0)),
                )
            })
            .collect();
        let ins: serde_json::Map<String, Value> = UpdateKind::ALL
            .iter()
            .map(|k| {
                (
                    k.wire_name().to_string(),
                    json!(self.messages_in[k.index()].load(Ordering::Relaxed)),
                )
            })
            .collect();
        let configured = self.redis_configured.load(Ordering::Relaxed);
        json!({
            "uptime_s": self.uptime().as_secs_f64(),
            "mode": if configured { "cluster" } else { "embedded" },
            "redis": {"configured": configured, "connected": self.redis_connected.load(Ordering::Relaxed), "nodes": []},
            "connections": conns,
            "messages_in": ins,
            "messages_out": self.messages_out.load(Ordering::Relaxed),
            "write_turns": self.write_turns.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "bytes_out_uncompressed": self.bytes_out_uncompressed.load(Ordering::Relaxed),
            "frames_compressed": compression_counts().0,
            "messages_out_by_format": {
                "json": self.messages_out.load(Ordering::Relaxed).saturating_sub(self.messages_out_msgpack.load(Ordering::Relaxed)),
                "msgpack": self.messages_out_msgpack.load(Ordering::Relaxed),
            },
            "slow_consumer_cuts": self.slow_consumer_cuts.load(Ordering::Relaxed),
            "conflated_frames": self.conflated_frames.load(Ordering::Relaxed),
            "rate_limited_publishes": self.rate_limited_publishes.load(Ordering::Relaxed),
            "rejected_publishes": self.rejected_publishes.load(Ordering::Relaxed),
            "rate_limited_commands": self.rate_limited_commands.load(Ordering::Relaxed),
            "ring_depths": ring_depths,
            "subscribers_behind": fanout.subscribers_behind,
            "backpressure_pauses": fanout.backpressure_pauses,
            "latency_us": {
                "publish_to_enqueue": percentiles(&self.publish_to_enqueue.snapshot()),
                "publish_to_write": percentiles(&self.publish_to_write.snapshot()),
            },
        })
    }

    /// The Prometheus text of `/metrics`.
    pub fn prometheus(&self, fanout: &FanoutGauges) -> String {
        let ring_depths = &fanout.ring_depths;
        let mut out = String::with_capacity(4096);
        let r = Ordering::Relaxed;
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let per_endpoint = |a: &[AtomicI64; Endpoint::COUNT]| -> Vec<(String, f64)> {
            Endpoint::ALL
                .iter()
                .map(|e| {
                    (
                        format!("{{endpoint=\"{}\"}}", e.name()),
                        a[e.index()].load(r).max(0) as f64,
                    )
                })
                .collect()
        };
        family(
            "tickwire_connections",
            "gauge",
            "Open connections by endpoint.",
            &per_endpoint(&self.connections),
        );
        family(
            "tickwire_connections_total",
            "counter",
            "Connections accepted by endpoint.",
            &Endpoint::ALL
                .iter()
                .map(|e| {
                    (
                        format!("{{endpoint=\"{}\"}}", e.name()),
                        self.connections_total[e.index()].load(r) as f64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        family(
            "tickwire_handshakes_rejected_total",
            "counter",
            "WebSocket handshakes refused (auth, origin, limits).",
            &[(String::new(), self.rejected_handshakes.load(r) as f64)],
        );
        family(
            "tickwire_messages_in_total",
            "counter",
            "Messages published, by type.",
            &UpdateKind::ALL
                .iter()
                .map(|k| {
                    (
                        format!("{{type=\"{}\"}}", k.wire_name()),
                        self.messages_in[k.index()].load(r) as f64,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let simple: [(&str, &str, &str, &AtomicU64); 12] = [
            (
                "tickwire_conflated_frames_total",
                "counter",
                "Frames a lagging market-data subscriber skipped for a newer one of the same symbol.",
                &self.conflated_frames,
            ),
            (
                "tickwire_publishes_rate_limited_total",
                "counter",
                "Published entries refused by an API key's rate limit.",
                &self.rate_limited_publishes,
            ),
            (
                "tickwire_publishes_rejected_total",
                "counter",
                "Published entries refused as invalid.",
                &self.rejected_publishes,
            ),
            (
                "tickwire_messages_out_total",
                "counter",
                "Frames written to subscribers.",
                &self.messages_out,
            ),
            (
                "tickwire_write_turns_total",
                "counter",
                "Times a subscriber's waiting frames were written out; messages_out over this is frames per write.",
                &self.write_turns,
            ),
            (
                "tickwire_bytes_out_total",
                "counter",
                "Payload bytes written to subscribers, as written (after permessage-deflate where it was used).",
                &self.bytes_out,
            ),
            (
                "tickwire_bytes_out_uncompressed_total",
                "counter",
                "The same payloads' bytes before compression.",
                &self.bytes_out_uncompressed,
            ),
            (
                "tickwire_slow_consumer_cuts_total",
                "counter",
                "Subscribers closed for a full outbound queue.",
                &self.slow_consumer_cuts,
            ),
            (
                "tickwire_rate_limited_commands_total",
                "counter",
                "Commands refused by the rate limit.",
                &self.rate_limited_commands,
            ),
            (
                "tickwire_rate_limit_closes_total",
                "counter",
                "Connections closed for breaking the rate limit.",
                &self.rate_limit_closes,
            ),
            (
                "tickwire_commands_total",
                "counter",
                "Commands received from subscribers.",
                &self.commands,
            ),
            (
                "tickwire_command_errors_total",
                "counter",
                "Commands answered with an error.",
                &self.command_errors,
            ),
        ];
        for (name, kind, help, v) in simple {
            family(name, kind, help, &[(String::new(), v.load(r) as f64)]);
        }
        let msgpack_out = self.messages_out_msgpack.load(r);
        family(
            "tickwire_messages_out_by_format_total",
            "counter",
            "Frames written to subscribers, by format (json text, msgpack binary).",
            &[
                (
                    "{format=\"json\"}".to_string(),
                    self.messages_out.load(r).saturating_sub(msgpack_out) as f64,
                ),
                ("{format=\"msgpack\"}".to_string(), msgpack_out as f64),
            ],
        );
        family(
            "tickwire_frames_encoded_msgpack_total",
            "counter",
            "Frames given a MessagePack form: once per frame, however many subscribers get it.",
            &[(String::new(), msgpack_count() as f64)],
        );
        let (compressed, compressed_in, compressed_out) = compression_counts();
        family(
            "tickwire_frames_compressed_total",
            "counter",
            "Frames compressed for permessage-deflate: once per frame, however many subscribers it goes to.",
            &[(String::new(), compressed as f64)],
        );
        family(
            "tickwire_compression_in_bytes_total",
            "counter",
            "Bytes of the frames compressed, before compression.",
            &[(String::new(), compressed_in as f64)],
        );
        family(
            "tickwire_compression_out_bytes_total",
            "counter",
            "Bytes of the frames compressed, after compression.",
            &[(String::new(), compressed_out as f64)],
        );
        family(
            "tickwire_ring_depth",
            "gauge",
            "Updates waiting in each fanout shard's ring.",
            &ring_depths
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("{{shard=\"{i}\"}}"), *d as f64))
                .collect::<Vec<_>>(),
        );
        family(
            "tickwire_subscribers_behind",
            "gauge",
            "Subscribers with a quarter of their queue (at most 256 frames) waiting; a quarter of all (and at least 16) pauses fanout.",
            &[(String::new(), fanout.subscribers_behind as f64)],
        );
        family(
            "tickwire_backpressure_pauses_total",
            "counter",
            "Times a fanout worker stopped taking updates because subscribers as a whole were behind.",
            &[(String::new(), fanout.backpressure_pauses as f64)],
        );
        family(
            "tickwire_redis_connected",
            "gauge",
            "1 when Redis is configured and reachable.",
            &[(
                String::new(),
                (self.redis_connected.load(r) && self.redis_configured.load(r)) as u8 as f64,
            )],
        );
        family(
            "tickwire_uptime_seconds",
            "gauge",
            "Seconds since start.",
            &[(String::new(), self.uptime().as_secs_f64())],
        );
        if let Some(p) = process_stats() {
            family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident set size.",
                &[(String::new(), p.rss_bytes as f64)],
            );
            family(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time.",
                &[(String::new(), p.cpu_seconds)],
            );
        }
        for (name, h) in [
            (
                "tickwire_publish_to_enqueue_seconds",
                self.publish_to_enqueue.snapshot(),
            ),
            (
                "tickwire_publish_to_write_seconds",
                self.publish_to_write.snapshot(),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} Latency from receipt of a publish.\n# TYPE {name} summary"
            );
            for q in [0.5, 0.9, 0.99, 0.999] {
                let _ = writeln!(
                    out,
                    "{name}{{quantile=\"{q}\"}} {}",
                    h.value_at_quantile(q) as f64 / 1e6
                );
            }
            let _ = writeln!(out, "{name}_count {}", h.len());
        }
        out
    }
}

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "count": h.len(),
    })
}

pub struct ProcessStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// This process's RSS and CPU time, from /proc (Linux only).
pub fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ is 100 on every Linux platform tickwire targets.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    Some(ProcessStats {
        rss_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_family() {
        let m = Metrics::new(false);
        m.connection_opened(Endpoint::MarketData);
        m.wrote(3, 300, 300, 0, 2);
        m.publish_to_write.record(Duration::from_micros(250));
        let gauges = FanoutGauges {
            ring_depths: vec![0, 1],
            ..FanoutGauges::default()
        };
        let text = m.prometheus(&gauges);
        assert!(text.contains("tickwire_connections{endpoint=\"market-data\"} 1"));
        assert!(text.contains("tickwire_messages_out_total 3"));
        assert!(text.contains("tickwire_ring_depth{shard=\"1\"} 1"));
        assert!(text.contains("tickwire_publish_to_write_seconds_count 1"));
        let stats = m.stats_json(&gauges);
        assert_eq!(stats["connections"]["market-data"], 1);
        assert_eq!(stats["mode"], "embedded");
    }
}
