//! What a handshake's headers and query string go through before the
//! upgrade: finding the token (`Authorization`, `?token=`, the
//! `access_token` cookie), the bearer scheme, query parameters with
//! percent-decoding, and the cookie/Origin rule. Arbitrary header values
//! (any bytes `http` accepts) and query strings; never a panic, and what
//! is found is consistent with where it was found.
#![no_main]

use arbitrary::Arbitrary;
use http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tickwire::auth::{self, TokenSource};

#[derive(Debug, Arbitrary)]
struct Handshake<'a> {
    authorization: Option<&'a [u8]>,
    cookies: Vec<&'a [u8]>,
    origin: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    query: Option<&'a str>,
    allowed: Vec<String>,
}

fuzz_target!(|h: Handshake<'_>| {
    let mut headers = HeaderMap::new();
    let mut put = |name, value: Option<&[u8]>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.append(name, v);
        }
    };
    put(AUTHORIZATION, h.authorization);
    put(ORIGIN, h.origin);
    put(HOST, h.host);
    for c in h.cookies.iter().take(8) {
        put(COOKIE, Some(c));
    }
    let bearer = auth::bearer(&headers).map(str::to_string);
    if let Some(b) = &bearer {
        assert!(!b.is_empty() && b.trim() == b);
    }
    if let Some(q) = h.query {
        for name in ["token", "api_key", "since", "symbol", "signal_type"] {
            let _ = auth::query_param(q, name);
        }
    }
    match auth::find_token(&headers, h.query) {
        Some((t, TokenSource::Header)) => assert_eq!(Some(t), bearer),
        Some((t, TokenSource::Query)) => {
            assert!(bearer.is_none());
            assert_eq!(Some(t), h.query.and_then(|q| auth::query_param(q, "token")));
        }
        Some((_, TokenSource::Cookie)) => assert!(bearer.is_none()),
        None => assert!(bearer.is_none()),
    }
    let _ = auth::check_origin(&headers, &h.allowed);
    let presented = bearer.as_deref();
    let _ = auth::check_api_key(presented, &h.allowed);
});
