//! Who may open a socket (PROTOCOL.md 1.1): anonymous, expired, forged and
//! malformed tokens are refused with HTTP 401 before any upgrade; a token is
//! taken from the `Authorization: Bearer` header, the `token` query parameter
//! or the `access_token` cookie (the cookie only from the server's own origin
//! or an allowed one, else 403); the `symbols` claim limits what a connection
//! may subscribe to and see; an open connection whose token expires is closed
//! with 4001; anonymous market data exists only when switched on, and never on
//! the other endpoints or `/api/notifications`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::Error as WsError;

const ENDPOINTS: [&str; 3] = ["market-data", "trading-signals", "notifications"];

fn request(server: &TestServer, path_and_query: &str) -> Request {
    format!("ws://{}{}", server.addr, path_and_query)
        .into_client_request()
        .expect("a valid ws:// URL")
}

fn with_header(mut req: Request, name: &'static str, value: &str) -> Request {
    req.headers_mut()
        .insert(name, value.parse().expect("a valid header value"));
    req
}

/// What a refused handshake answered: its status, its `WWW-Authenticate`
/// header and its body. Panics if the handshake was accepted.
async fn refused(server: &TestServer, req: Request) -> (u16, Option<String>, Value) {
    match server.connect_request(req).await {
        Ok(_) => panic!("the handshake was accepted; a refusal was expected"),
        Err(WsError::Http(resp)) => {
            let www = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), www, body)
        }
        Err(e) => panic!("expected an HTTP refusal of the handshake, got {e}"),
    }
}

/// Opens a socket that must be accepted, and proves it works with a ping.
async fn accepted(server: &TestServer, req: Request) -> Client {
    let mut c = match server.connect_request(req).await {
        Ok(c) => c,
        Err(WsError::Http(resp)) => panic!("handshake refused with {}", resp.status()),
        Err(e) => panic!("handshake failed: {e}"),
    };
    c.send(json!({"type": "ping", "id": "alive"})).await;
    let pong = c.recv_type("pong").await;
    assert_eq!(pong["id"], "alive");
    c
}

fn minted(secret: &[u8], sub: &str, exp: SystemTime) -> String {
    tickwire::auth::mint(secret, sub, None, exp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_forged_and_malformed_tokens_get_401_and_no_socket() {
    let server = start().await;
    let expired = minted(
        SECRET.as_bytes(),
        "alice",
        SystemTime::now() - Duration::from_secs(60),
    );
    let forged = minted(
        b"some-other-secret-0123456789",
        "alice",
        SystemTime::now() + Duration::from_secs(3600),
    );
    let good = token("alice");
    let (head, rest) = good.split_once('.').unwrap();
    let tampered_payload = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let payload = b64.encode(json!({"sub": "admin", "exp": exp}).to_string());
        let signature = rest.rsplit('.').next().unwrap();
        format!("{head}.{payload}.{signature}")
    };
    let cases: [(&str, Option<String>); 6] = [
        ("no token", None),
        ("expired", Some(expired)),
        ("bad signature", Some(forged)),
        ("tampered payload", Some(tampered_payload)),
        ("malformed", Some("not-a-jwt".into())),
        ("malformed parts", Some("a.b.c".into())),
    ];
    for endpoint in ENDPOINTS {
        for (what, tok) in &cases {
            let path = match tok {
                Some(t) => format!("/ws/{endpoint}/?token={t}"),
                None => format!("/ws/{endpoint}/"),
            };
            let (status, www, body) = refused(&server, request(&server, &path)).await;
            assert_eq!(status, 401, "{what} on /ws/{endpoint}/");
            assert_eq!(
                www.as_deref(),
                Some("Bearer"),
                "{what}: 401 carries WWW-Authenticate: Bearer"
            );
            assert!(
                body["error"].is_string(),
                "{what}: body is {{\"error\": ...}}, got {body}"
            );
            // The same token in the header is refused too.
            if let Some(t) = tok {
                let req = with_header(
                    request(&server, &format!("/ws/{endpoint}/")),
                    "authorization",
                    &format!("Bearer {t}"),
                );
                assert_eq!(
                    refused(&server, req).await.0,
                    401,
                    "{what} as a Bearer header on /ws/{endpoint}/"
                );
            }
        }
    }
    // Nothing was opened by any of those handshakes.
    let stats = server.stats().await;
    for endpoint in ENDPOINTS {
        assert_eq!(stats["connections"][endpoint], 0, "{stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_accepted_from_header_query_and_cookie() {
    let server = start().await;
    let t = token("alice");
    for endpoint in ENDPOINTS {
        let path = format!("/ws/{endpoint}/");
        let by_header = with_header(request(&server, &path), "authorization", &format!("Bearer {t}"));
        accepted(&server, by_header).await;
        accepted(&server, request(&server, &format!("{path}?token={t}"))).await;
        let by_cookie = with_header(
            request(&server, &path),
            "cookie",
            &format!("theme=dark; access_token={t}"),
        );
        accepted(&server, by_cookie).await;
    }
    // The token names the user: alice's notification reaches each socket
    // opened with her token, whichever way it was carried, and not bob's.
    let mut sockets = Vec::new();
    for req in [
        with_header(
            request(&server, "/ws/notifications/"),
            "authorization",
            &format!("Bearer {t}"),
        ),
        request(&server, &format!("/ws/notifications/?token={t}")),
        with_header(
            request(&server, "/ws/notifications/"),
            "cookie",
            &format!("access_token={t}"),
        ),
    ] {
        let mut c = server.connect_request(req).await.expect("accepted");
        c.recv_type("unread_notifications").await;
        sockets.push(c);
    }
    let (mut bob, _) = server.notifications("bob").await;
    server.publish_ok(notification("alice", "n-auth-1")).await;
    for c in &mut sockets {
        let n = c.recv_type("new_notification").await;
        assert_eq!(n["notification_id"], "n-auth-1", "{n}");
    }
    bob.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_is_preferred_to_query_which_is_preferred_to_cookie() {
    let server = start().await;
    let good = token("alice");
    let bad = "not-a-jwt";
    // A good header wins over a bad query token.
    let req = with_header(
        request(&server, &format!("/ws/market-data/?token={bad}")),
        "authorization",
        &format!("Bearer {good}"),
    );
    accepted(&server, req).await;
    // A bad header is not rescued by a good query token: the header is the one used.
    let req = with_header(
        request(&server, &format!("/ws/market-data/?token={good}")),
        "authorization",
        &format!("Bearer {bad}"),
    );
    assert_eq!(refused(&server, req).await.0, 401);
    // A good query token wins over a bad cookie.
    let req = with_header(
        request(&server, &format!("/ws/market-data/?token={good}")),
        "cookie",
        &format!("access_token={bad}"),
    );
    accepted(&server, req).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_token_from_a_foreign_origin_gets_403() {
    let server = start_with(|o| o.allowed_origins = Some(vec!["https://app.example.com".into()])).await;
    let t = token("alice");
    let own_origin = format!("http://{}", server.addr);
    for endpoint in ENDPOINTS {
        let path = format!("/ws/{endpoint}/");
        let cookie = format!("access_token={t}");
        let foreign = with_header(
            with_header(request(&server, &path), "cookie", &cookie),
            "origin",
            "https://evil.example",
        );
        let (status, _, body) = refused(&server, foreign).await;
        assert_eq!(status, 403, "cookie token from a foreign origin on {path}");
        assert!(body["error"].is_string(), "{body}");

        let own = with_header(
            with_header(request(&server, &path), "cookie", &cookie),
            "origin",
            &own_origin,
        );
        accepted(&server, own).await;
        let allowed = with_header(
            with_header(request(&server, &path), "cookie", &cookie),
            "origin",
            "https://app.example.com",
        );
        accepted(&server, allowed).await;
        // The rule guards the ambient cookie only: a token the page itself
        // put in the request is accepted from any origin.
        let by_query = with_header(
            request(&server, &format!("{path}?token={t}")),
            "origin",
            "https://evil.example",
        );
        accepted(&server, by_query).await;
    }
    // Without --allowed-origin, that origin is foreign too.
    let plain = start().await;
    let req = with_header(
        with_header(
            request(&plain, "/ws/market-data/"),
            "cookie",
            &format!("access_token={t}"),
        ),
        "origin",
        "https://app.example.com",
    );
    assert_eq!(refused(&plain, req).await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_claim_limits_subscriptions_exactly_and_by_prefix() {
    let server = start().await;
    let t = token_with("carol", Some(&["BTC-USD", "ETH-*"]), Duration::from_secs(3600));
    let mut c = server.connect_token("market-data", &t).await;

    c.send(json!({"type": "subscribe", "symbols": ["BTC-USD", "ETH-USD", "ETH-BTC"], "id": 1}))
        .await;
    let ok = c.recv().await;
    assert_eq!(ok["type"], "subscribed", "{ok}");
    assert_eq!(ok["id"], 1);

    for (symbols, id) in [
        (json!(["SOL-USD"]), 2),
        (json!(["BTC-USDT"]), 3), // exact pattern: no prefix match
        (json!(["ETHX"]), 4),     // prefix `ETH-`, not `ETH`
        (json!(["ETH-EUR", "SOL-USD"]), 5),
    ] {
        c.send(json!({"type": "subscribe", "symbols": symbols, "id": id}))
            .await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{symbols}: {e}");
        assert_eq!(e["code"], "forbidden", "{symbols}: {e}");
        assert!(e["message"].is_string(), "{e}");
        assert_eq!(e["id"], id, "{e}");
    }
    // The connection stays usable.
    c.send(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.recv().await["type"], "pong");

    // The refused command subscribed nothing (not even its allowed ETH-EUR);
    // the allowed subscriptions deliver.
    server
        .publish_ok(json!([
            market_update("ETH-EUR", 1.0),
            market_update("ETH-USD", 2.0)
        ]))
        .await;
    let u = c.recv_type("market_update").await;
    assert_eq!(
        u["symbol"], "ETH-USD",
        "ETH-EUR must not have been subscribed: {u}"
    );
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbols_claim_limits_trading_signals() {
    let server = start().await;
    let t = token_with("dave", Some(&["ETH-*"]), Duration::from_secs(3600));
    let mut c = server.connect_token("trading-signals", &t).await;
    c.send(json!({"type": "filter", "symbol": "BTC-USD", "signal_type": null, "id": "f1"}))
        .await;
    let e = c.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{e}"
    );
    assert_eq!(e["id"], "f1");
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");

    // Without a filter it receives every signal it may see, and only those.
    server
        .publish_ok(json!([
            new_signal("s-btc", "BTC-USD", "BUY"),
            new_signal("s-eth", "ETH-USD", "SELL")
        ]))
        .await;
    let s = c.recv_type("new_signal").await;
    assert_eq!(s["signal_id"], "s-eth", "{s}");
    c.expect_silence().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connection_is_closed_with_4001_when_its_token_expires() {
    let server = start().await;
    // exp has one-second resolution: a whole second 2 to 3 s from now.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let exp = UNIX_EPOCH + Duration::from_secs(now + 3);
    let t = minted(SECRET.as_bytes(), "erin", exp);

    let mut market = server.connect_token("market-data", &t).await;
    market
        .send(json!({"type": "subscribe", "symbols": ["BTC-USD"]}))
        .await;
    market.recv_type("subscribed").await;
    let (mut notes, _) = {
        let mut c = server.connect_token("notifications", &t).await;
        let unread = c.recv_type("unread_notifications").await;
        (c, unread)
    };
    let (a, b) = tokio::join!(market.closed(), notes.closed());
    let closed_at = SystemTime::now();
    for closed in [a, b] {
        assert_eq!(closed.code, Some(4001), "{closed:?}");
        assert_eq!(closed.reason, "token expired");
    }
    assert!(
        closed_at + Duration::from_millis(50) >= exp,
        "closed {:?} before the token's exp",
        exp.duration_since(closed_at).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_market_data_only_when_switched_on_and_only_there() {
    // Off by default.
    let server = start().await;
    assert_eq!(
        refused(&server, request(&server, "/ws/market-data/")).await.0,
        401
    );

    let server = start_with(|o| o.allow_anonymous_market_data = Some(true)).await;
    let mut anon = accepted(&server, request(&server, "/ws/market-data/")).await;
    anon.send(json!({"type": "subscribe", "symbols": ["BTC-USD"]}))
        .await;
    anon.recv_type("subscribed").await;
    server.publish_ok(market_update("BTC-USD", 45000.0)).await;
    assert_eq!(anon.recv_type("market_update").await["symbol"], "BTC-USD");
    // A bad token is still refused: anonymity is for requests without one.
    assert_eq!(
        refused(&server, request(&server, "/ws/market-data/?token=not-a-jwt"))
            .await
            .0,
        401
    );

    for path in ["/ws/trading-signals/", "/ws/notifications/", "/ws/ingest"] {
        assert_eq!(
            refused(&server, request(&server, path)).await.0,
            401,
            "{path} without a token"
        );
    }
    let (status, _) = server.get("/api/notifications").await;
    assert_eq!(
        status, 401,
        "/api/notifications without a token, anonymous market data on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_notifications_needs_a_valid_jwt() {
    let server = start().await;
    let (status, body) = server.get_json("/api/notifications").await;
    assert_eq!(status, 401, "{body}");
    let expired = minted(
        SECRET.as_bytes(),
        "alice",
        SystemTime::now() - Duration::from_secs(60),
    );
    for bad in [expired.as_str(), "not-a-jwt"] {
        let resp = server
            .http
            .get(server.url("/api/notifications"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "token {bad}");
    }
    let resp = server
        .http
        .get(server.url("/api/notifications"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let list: Value = resp.json().await.unwrap();
    assert!(list.is_array(), "{list}");
}
