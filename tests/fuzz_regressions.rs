//! Inputs the fuzz targets in `fuzz/` found crashing, replayed through the
//! same functions on every `cargo test` (docs/fuzzing.md tells the story
//! of each). Each runs on a thread with the 2 MiB stack of a tokio worker,
//! where the server decodes what clients send.

use std::time::SystemTime;

use tickwire::protocol::{command, update, Endpoint, ErrorCode};

/// The stack size of a tokio runtime thread, on which frames are decoded.
const RUNTIME_STACK_BYTES: usize = 2 * 1024 * 1024;

fn on_runtime_sized_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(RUNTIME_STACK_BYTES)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("decoding did not panic")
}

/// `[[[[…]]]]`, `depth` deep.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.resize(depth * 2, b']');
    v
}

/// `{"a":{"a":…{"a":1}…}}`, `depth` deep.
fn nested_objects(depth: usize) -> Vec<u8> {
    let mut v = br#"{"a":"#.repeat(depth);
    v.push(b'1');
    v.resize(v.len() + depth, b'}');
    v
}

/// Found by `fuzz/` target `command`: 5 000 nested arrays (a 10 KB text
/// frame, well under `max_message_bytes`) overflowed the stack while
/// simd-json built a `serde_json::Value`, aborting the whole process.
#[test]
fn a_deeply_nested_command_is_invalid_json_not_a_stack_overflow() {
    for input in [
        nested_arrays(5_000),
        nested_arrays(32 * 1024),
        nested_objects(6_000),
    ] {
        let codes = on_runtime_sized_stack(move || {
            Endpoint::ALL
                .map(|e| command::decode(&input, e).command.unwrap_err().code)
                .to_vec()
        });
        assert!(codes.iter().all(|c| *c == ErrorCode::InvalidJson), "{codes:?}");
    }
}

/// The same input as a publish body (`POST /api/publish`, `/ws/ingest`,
/// the Redis ingest channel), up to `max_publish_bytes` of it.
#[test]
fn a_deeply_nested_publish_is_invalid_json_not_a_stack_overflow() {
    for input in [
        nested_arrays(5_000),
        nested_arrays(512 * 1024),
        nested_objects(100_000),
    ] {
        let code = on_runtime_sized_stack(move || update::decode_batch(&input).unwrap_err().code);
        assert_eq!(code, ErrorCode::InvalidJson);
    }
}

/// Nesting up to the limit still decodes, one level past it does not.
#[test]
fn nesting_up_to_the_limit_is_still_json() {
    use tickwire::protocol::MAX_JSON_DEPTH;
    let mut ok = br#"{"type":"ping","x":"#.to_vec();
    ok.extend(nested_arrays(MAX_JSON_DEPTH - 1));
    ok.push(b'}');
    assert_eq!(
        command::decode(&ok, Endpoint::MarketData).command,
        Ok(command::Command::Ping)
    );
    let mut deep = br#"{"type":"ping","x":"#.to_vec();
    deep.extend(nested_arrays(MAX_JSON_DEPTH));
    deep.push(b'}');
    assert_eq!(
        command::decode(&deep, Endpoint::MarketData)
            .command
            .unwrap_err()
            .code,
        ErrorCode::InvalidJson
    );
}

/// JWT claims are parsed by serde_json, whose recursion limit already
/// holds; kept so that a change of parser there is caught too.
#[test]
fn a_deeply_nested_token_is_malformed() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(nested_arrays(2_500));
    let token = format!("{header}.e30.c2ln");
    let verdict = on_runtime_sized_stack(move || {
        tickwire::auth::verify(&token, b"some-secret-of-16-bytes", SystemTime::now())
    });
    assert_eq!(verdict.unwrap_err(), tickwire::auth::AuthError::Malformed);
}
