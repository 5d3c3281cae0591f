//! Subscriber tokens: loadgen mints its own HS256 JWTs from the server's
//! shared secret (`--jwt-secret`), with the claims of PROTOCOL.md 1.1:
//! `sub`, `exp` and optional `symbols`. Minting only; loadgen never verifies
//! a token outside its tests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The JOSE header of every token loadgen mints.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    pub sub: &'a str,
    /// Seconds since the UNIX epoch.
    pub exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbols: Option<&'a [String]>,
}

/// A compact HS256 JWT for `claims`, signed with `secret`.
pub fn mint(secret: &[u8], claims: &Claims<'_>) -> String {
    // Serializing a struct of strings and integers cannot fail.
    let payload = serde_json::to_string(claims).expect("claims serialize");
    sign_compact(secret, HEADER_JSON, &payload)
}

/// `base64url(header).base64url(payload).base64url(HMAC-SHA256)`.
fn sign_compact(secret: &[u8], header_json: &str, payload_json: &str) -> String {
    let mut token = String::with_capacity(64 + payload_json.len() * 4 / 3 + 44);
    URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload_json, &mut token);
    // HMAC takes a key of any length, so this constructor cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(token.as_bytes());
    let signature = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    token
}

/// Seconds since the UNIX epoch, for `exp`.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example token of jwt.io (and of countless JWT libraries' tests).
    const JWT_IO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
        eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
        SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn matches_the_jwt_io_vector() {
        let token = sign_compact(
            b"your-256-bit-secret",
            HEADER_JSON,
            r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
        );
        assert_eq!(token, JWT_IO_TOKEN);
    }

    #[test]
    fn mint_encodes_the_claims_and_a_valid_signature() {
        let symbols = vec!["BTC-USD".to_owned(), "ETH-*".to_owned()];
        let token = mint(
            b"s3cret",
            &Claims {
                sub: "alice",
                exp: 2_000_000_000,
                symbols: Some(&symbols),
            },
        );
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "alice", "exp": 2_000_000_000u64, "symbols": ["BTC-USD", "ETH-*"]})
        );

        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .expect("signature verifies");
    }

    #[test]
    fn symbols_are_left_out_when_absent() {
        let token = mint(
            b"k",
            &Claims {
                sub: "bob",
                exp: 1,
                symbols: None,
            },
        );
        let payload = token.split('.').nth(1).unwrap();
        let payload = URL_SAFE_NO_PAD.decode(payload).unwrap();
        assert_eq!(payload, br#"{"sub":"bob","exp":1}"#);
    }
}
