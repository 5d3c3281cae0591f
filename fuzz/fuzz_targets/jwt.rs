//! Subscriber JWTs (`auth::verify`), two ways: the raw token as a client
//! may send it, and a token whose header and claims are the fuzzer's but
//! whose HS256 signature is right, so the claim parsing behind the
//! signature check is reached too. Never a panic; an accepted token has a
//! non-empty `sub` and an expiry after `now`.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tickwire::auth;

const SECRET: &[u8] = b"fuzzing-secret-0123456789";

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Raw(&'a str),
    Signed { header: &'a [u8], claims: &'a [u8] },
}

fuzz_target!(|input: Input<'_>| {
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let token = match input {
        Input::Raw(t) => t.to_string(),
        Input::Signed { header, claims } => {
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
            mac.update(signing_input.as_bytes());
            let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
            format!("{signing_input}.{sig}")
        }
    };
    if let Ok(identity) = auth::verify(&token, SECRET, now) {
        assert!(!identity.user.is_empty());
        assert!(identity.expires_at.is_some_and(|at| at > now));
        let _ = identity.symbols.allows("BTC-USD");
    }
});
