//! Who may connect and what they may see (PROTOCOL.md 1.1 and 2):
//! subscriber JWTs (HS256), their `symbols` claim, where a token is looked
//! for in a handshake, the cookie/Origin rule against cross-site WebSocket
//! hijacking, and publisher API keys. Pure functions over strings and
//! headers; the HTTP layer turns an [`AuthError`] into a 401 or 403.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted; bounds the work an attacker can ask for.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt>, ?token=<jwt> or the access_token cookie")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token must be signed with HS256")]
    UnsupportedAlgorithm,
    #[error("the token's signature does not match")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's `{0}` claim is invalid")]
    InvalidClaim(&'static str),
    #[error("the token lives longer than this server allows (auth.max_token_ttl_secs = {0})")]
    TooLongLived(u64),
    #[error("origin {0} may not use a cookie token")]
    OriginNotAllowed(String),
    #[error("invalid API key")]
    BadApiKey,
}

impl AuthError {
    /// 403 for a refused origin (the token may be fine), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::OriginNotAllowed(_) => 403,
            _ => 401,
        }
    }
}

/// One entry of the `symbols` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<str>),
    /// `"ETH-*"`: every symbol starting with `ETH-`.
    Prefix(Box<str>),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.into()),
            None => Pattern::Exact(s.into()),
        }
    }

    pub fn matches(&self, symbol: &str) -> bool {
        match self {
            Pattern::Exact(s) => **s == *symbol,
            Pattern::Prefix(p) => symbol.starts_with(&**p),
        }
    }
}

/// The symbols a subscriber may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolAccess {
    All,
    Only(Vec<Pattern>),
}

impl SymbolAccess {
    pub fn allows(&self, symbol: &str) -> bool {
        match self {
            SymbolAccess::All => true,
            SymbolAccess::Only(patterns) => patterns.iter().any(|p| p.matches(symbol)),
        }
    }
}

/// An authenticated subscriber.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub symbols: SymbolAccess,
    /// When the token stops being valid; `None` for anonymous market data.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            user: Arc::from(""),
            symbols: SymbolAccess::All,
            expires_at: None,
        }
    }

    /// A publisher on `/ws/ingest`, named by the index of its API key.
    pub fn publisher(key_index: usize) -> Identity {
        Identity {
            user: Arc::from(format!("api-key-{key_index}")),
            ..Identity::anonymous()
        }
    }

    /// The API key index of a publisher identity.
    pub fn publisher_key(&self) -> Option<usize> {
        self.user.strip_prefix("api-key-")?.parse().ok()
    }
}

/// Where a handshake carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// Finds the token: `Authorization: Bearer`, then `?token=`, then the
/// `access_token` cookie.
pub fn find_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(String, TokenSource)> {
    if let Some(t) = bearer(headers) {
        return Some((t.to_string(), TokenSource::Header));
    }
    if let Some(t) = query.and_then(|q| query_param(q, "token")) {
        return Some((t, TokenSource::Query));
    }
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((name, v)) = pair.trim().split_once('=') {
                if name == "access_token" && !v.is_empty() {
                    return Some((v.trim_matches('"').to_string(), TokenSource::Cookie));
                }
            }
        }
    }
    None
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// One query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cookie token is accepted only from a browser page of an allowed
/// origin or of this server itself: a cookie is sent by the browser to any
/// page's WebSocket, so without this any site could subscribe as the user.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AuthError> {
    let Some(origin) = headers.get(http::header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    if allowed.iter().any(|a| a == origin) {
        return Ok(());
    }
    let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    if host.is_some() && origin_host == host {
        return Ok(());
    }
    Err(AuthError::OriginNotAllowed(origin.chars().take(100).collect()))
}

/// [`verify`], and refuses a token whose `exp` lies more than `max_ttl`
/// after `now`: a token must not be valid (almost) forever.
pub fn verify_within(
    token: &str,
    secret: &[u8],
    now: SystemTime,
    max_ttl: Duration,
) -> Result<Identity, AuthError> {
    let identity = verify(token, secret, now)?;
    let left = identity
        .expires_at
        .and_then(|at| at.duration_since(now).ok())
        .unwrap_or_default();
    if left > max_ttl {
        return Err(AuthError::TooLongLived(max_ttl.as_secs()));
    }
    Ok(identity)
}

/// Checks an HS256 JWT against `secret` at time `now`.
pub fn verify(token: &str, secret: &[u8], now: SystemTime) -> Result<Identity, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header: serde_json::Value = decode_part(header)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| AuthError::BadSignature)?;
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;

    let claims: serde_json::Value = decode_part(payload)?;
    let user: Arc<str> = match claims.get("sub") {
        // No control characters: a user id ends up in logs and keys, where
        // a newline or an escape sequence could forge or hide a line.
        Some(serde_json::Value::String(s))
            if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) =>
        {
            Arc::from(s.as_str())
        }
        Some(serde_json::Value::Number(n)) if n.is_u64() || n.is_i64() => Arc::from(n.to_string()),
        None => return Err(AuthError::MissingClaim("sub")),
        Some(_) => return Err(AuthError::InvalidClaim("sub")),
    };
    let exp = match claims.get("exp") {
        None => return Err(AuthError::MissingClaim("exp")),
        Some(v) => v
            .as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .ok_or(AuthError::InvalidClaim("exp"))?,
    };
    let expires_at = UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e12));
    if expires_at <= now {
        return Err(AuthError::Expired);
    }
    let symbols = match claims.get("symbols") {
        None | Some(serde_json::Value::Null) => SymbolAccess::All,
        Some(serde_json::Value::Array(items)) => SymbolAccess::Only(
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(Pattern::parse)
                        .ok_or(AuthError::InvalidClaim("symbols"))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(AuthError::InvalidClaim("symbols")),
    };
    Ok(Identity {
        user,
        symbols,
        expires_at: Some(expires_at),
    })
}

fn decode_part(part: &str) -> Result<serde_json::Value, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)
}

/// Signs a token for `sub`, valid until `expires_at`.
pub fn mint(secret: &[u8], sub: &str, symbols: Option<&[String]>, expires_at: SystemTime) -> String {
    let exp = expires_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = serde_json::json!({"sub": sub, "exp": exp});
    if let Some(symbols) = symbols {
        claims["symbols"] = serde_json::json!(symbols);
    }
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Compares a presented API key with each configured one in constant
/// time; returns the index of the key that matched (for its rate limit).
pub fn check_api_key(presented: Option<&str>, keys: &[String]) -> Result<usize, AuthError> {
    let presented = presented.ok_or(AuthError::BadApiKey)?.as_bytes();
    let mut found = None;
    for (index, key) in keys.iter().enumerate() {
        let key = key.as_bytes();
        let mut diff = (key.len() != presented.len()) as u8;
        for (i, b) in key.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        if diff == 0 {
            found = Some(index);
        }
    }
    found.ok_or(AuthError::BadApiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-some-length";

    fn in_an_hour() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn minted_tokens_verify() {
        let t = mint(
            SECRET,
            "alice",
            Some(&["ETH-*".into(), "BTC-USD".into()]),
            in_an_hour(),
        );
        let id = verify(&t, SECRET, SystemTime::now()).unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.symbols.allows("ETH-USD"));
        assert!(id.symbols.allows("BTC-USD"));
        assert!(!id.symbols.allows("BTC-EUR"));
    }

    #[test]
    fn a_known_vector_from_another_implementation_verifies() {
        // jwt.io's HS256 example, signed with "your-256-bit-secret"; its exp is added by us below.
        let t = mint(b"your-256-bit-secret", "1234567890", None, in_an_hour());
        assert!(verify(&t, b"your-256-bit-secret", SystemTime::now()).is_ok());
        let io = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        // Signature is right, but it carries no exp: refused for that reason, not the signature.
        assert_eq!(
            verify(io, b"your-256-bit-secret", SystemTime::now()).unwrap_err(),
            AuthError::MissingClaim("exp")
        );
        assert_eq!(
            verify(io, b"another-secret", SystemTime::now()).unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn expired_tampered_and_unsigned_tokens_are_refused() {
        let old = mint(SECRET, "a", None, SystemTime::now() - Duration::from_secs(5));
        assert_eq!(
            verify(&old, SECRET, SystemTime::now()).unwrap_err(),
            AuthError::Expired
        );
        let t = mint(SECRET, "a", None, in_an_hour());
        assert_eq!(
            verify(&t, b"other-secret-xxxxxxxx", SystemTime::now()).unwrap_err(),
            AuthError::BadSignature
        );
        let (h, rest) = t.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","exp":99999999999}"#);
        let sig = rest.rsplit('.').next().unwrap();
        assert_eq!(
            verify(&format!("{h}.{forged_payload}.{sig}"), SECRET, SystemTime::now()).unwrap_err(),
            AuthError::BadSignature
        );
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            forged_payload
        );
        assert_eq!(
            verify(&none, SECRET, SystemTime::now()).unwrap_err(),
            AuthError::UnsupportedAlgorithm
        );
        assert_eq!(
            verify("garbage", SECRET, SystemTime::now()).unwrap_err(),
            AuthError::Malformed
        );
    }

    #[test]
    fn token_is_found_in_header_then_query_then_cookie() {
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, "a=b; access_token=C".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("x=1")),
            Some(("C".into(), TokenSource::Cookie))
        );
        assert_eq!(
            find_token(&h, Some("token=Q%2Eq")),
            Some(("Q.q".into(), TokenSource::Query))
        );
        h.insert(http::header::AUTHORIZATION, "Bearer H".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("token=Q")),
            Some(("H".into(), TokenSource::Header))
        );
    }

    #[test]
    fn cookie_origins_must_be_allowed_or_same_site() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "127.0.0.1:8000".parse().unwrap());
        assert!(check_origin(&h, &[]).is_ok());
        h.insert(http::header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(check_origin(&h, &[]).is_ok());
        h.insert(http::header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(check_origin(&h, &[]).is_err());
        assert!(check_origin(&h, &["https://evil.example".into()]).is_ok());
    }

    #[test]
    fn api_keys_compare_whole() {
        let keys = vec!["key-number-one".to_string()];
        assert!(check_api_key(Some("key-number-one"), &keys).is_ok());
        assert!(check_api_key(Some("key-number-on"), &keys).is_err());
        assert!(check_api_key(Some("key-number-one!"), &keys).is_err());
        assert!(check_api_key(None, &keys).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(s in "\\PC{0,300}") {
            let _ = verify(&s, SECRET, SystemTime::now());
        }
    }
}
