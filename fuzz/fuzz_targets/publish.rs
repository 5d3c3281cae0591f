//! The publish decoder (`POST /api/publish`, `/ws/ingest`, the Redis
//! ingest channel): any body decodes to per-entry results or one
//! `ProtocolError`, never a panic; an accepted entry never carries `seq`
//! (only the sequencer gives it) and always has a string `timestamp`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::update;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = update::decode_batch(data) else {
        return;
    };
    for update in entries.into_iter().flatten() {
        assert!(!update.body.contains_key("seq"), "a publisher's seq was kept");
        assert!(
            update.body.get("timestamp").is_some_and(|t| t.is_string()),
            "accepted without a string timestamp"
        );
    }
});
