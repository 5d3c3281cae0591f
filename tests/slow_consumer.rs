//! A subscriber that stops reading is cut off (close 4002) once its
//! outbound queue is full, is counted, and never delays the others; with
//! the market-data overflow policy `close` (the default `conflate` is
//! proven in conflation.rs).

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_and_the_others_get_everything() {
    // The stalled client asks the kernel for a small receive buffer, and
    // 300 × 64 KiB is far more than the socket buffers then hold, so its
    // queue must fill.
    const COUNT: usize = 300;
    const BATCH: usize = 10;
    let s = start_with(|o| {
        o.outbound_queue_frames = Some(64);
        o.market_data_overflow = Some("close".into());
    })
    .await;
    let mut stalled = s.tiny_buffer_market("stalled", &["BIG"]).await;
    let mut healthy = s.market("healthy", &["BIG"]).await;
    let padding = "x".repeat(64 * 1024);
    let mut received = Vec::with_capacity(COUNT);
    for chunk in 0..(COUNT / BATCH) {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| json!({"type": "market_update", "symbol": "BIG", "price": (chunk * BATCH + i) as f64, "pad": padding}))
            .collect();
        s.publish_ok(Value::Array(batch)).await;
        // The healthy subscriber keeps up: it reads each batch before the next.
        received.extend(seqs(&mut healthy, "market_update", BATCH).await);
    }
    assert_consecutive(&received, 1);

    eventually("the stalled subscriber was cut", || async {
        (s.stats().await["slow_consumer_cuts"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let closed = stalled.closed().await;
    assert_eq!(closed.code, Some(4002), "{closed:?}");
    assert_eq!(closed.reason, "slow consumer");
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("tickwire_slow_consumer_cuts_total 1"),
        "{metrics}"
    );
}
