//! The subscriber command decoder, on every endpoint: whatever bytes a
//! client sends in a text frame decode to a command or to a
//! `ProtocolError`, never a panic; an echoed `id` is a string or a number,
//! and an error's message stays short (the server never reflects a
//! client's bytes back at length).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::{command, Endpoint};

/// Longest error message a command may earn.
const MAX_MESSAGE_BYTES: usize = 512;

fuzz_target!(|data: &[u8]| {
    for endpoint in Endpoint::ALL {
        let envelope = command::decode(data, endpoint);
        if let Some(id) = &envelope.id {
            assert!(id.is_string() || id.is_number(), "echoed id {id}");
        }
        if let Err(e) = &envelope.command {
            assert!(
                e.message.len() <= MAX_MESSAGE_BYTES,
                "error message of {} bytes",
                e.message.len()
            );
        }
    }
});
