//! What a subscriber's bad input earns it (PROTOCOL.md 1.5): each error code
//! comes back as `{"type":"error","code","message"}` with the command's `id`
//! echoed, and the connection keeps working; a too-big text frame closes
//! with 1009, a binary frame with 1003, invalid UTF-8 with 1007, an unmasked
//! frame with 1002, and a client that keeps breaking the rate limit is told
//! `rate_limited` and then closed with 1008, while the other clients of the
//! same server go on unaffected.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Sends `cmd` and returns the answer, which must be an error of `code`;
/// then proves the connection still works with a ping.
async fn expect_error(c: &mut Client, cmd: Value, code: &str) -> Value {
    c.send(cmd.clone()).await;
    let e = c.recv().await;
    assert_eq!(e["type"], "error", "{cmd} -> {e}");
    assert_eq!(e["code"], code, "{cmd} -> {e}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message for a person: {e}"
    );
    still_works(c).await;
    e
}

async fn still_works(c: &mut Client) {
    c.send(json!({"type": "ping", "id": "after"})).await;
    let pong = c.recv().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["id"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_answered_and_the_connection_stays() {
    let server = start().await;
    let mut c = server.connect("market-data", "alice").await;
    for text in [
        "{\"type\": x}",
        "not json at all",
        "{\"type\":\"ping\"",
        "[1,2]",
        "42",
        "",
    ] {
        c.send_text(text.to_string()).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{text:?} -> {e}");
        assert_eq!(e["code"], "invalid_json", "{text:?} -> {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        assert!(e.get("id").is_none(), "nothing to echo: {e}");
        still_works(&mut c).await;
    }
    c.send_text("{\"type\": x}".into()).await;
    let e = c.recv().await;
    assert!(
        e["message"].as_str().unwrap().contains("line 1 column"),
        "the parser's position: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_echoes_the_id() {
    let server = start().await;
    let mut c = server.connect("market-data", "alice").await;
    let e = expect_error(&mut c, json!({"type": "bogus", "id": 12}), "unknown_type").await;
    assert_eq!(e["id"], 12);
    let e = expect_error(&mut c, json!({"type": "bogus", "id": "str-id"}), "unknown_type").await;
    assert_eq!(e["id"], "str-id");
    // A command of another endpoint is unknown here.
    let e = expect_error(
        &mut c,
        json!({"type": "filter", "symbol": null, "id": 13}),
        "unknown_type",
    )
    .await;
    assert_eq!(e["id"], 13);
    let (mut n, _) = server.notifications("alice").await;
    let e = expect_error(
        &mut n,
        json!({"type": "subscribe", "symbols": ["BTC-USD"], "id": 14}),
        "unknown_type",
    )
    .await;
    assert_eq!(e["id"], 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_field_echoes_the_id() {
    let server = start().await;
    let mut c = server.connect("market-data", "alice").await;
    let e = expect_error(&mut c, json!({"symbols": ["BTC-USD"], "id": 3}), "missing_field").await;
    assert_eq!(e["id"], 3);
    let e = expect_error(&mut c, json!({"type": "subscribe", "id": "m1"}), "missing_field").await;
    assert_eq!(e["id"], "m1");
    let (mut n, _) = server.notifications("alice").await;
    let e = expect_error(&mut n, json!({"type": "mark_read", "id": 4}), "missing_field").await;
    assert_eq!(e["id"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_field_echoes_the_id() {
    let server = start().await;
    let mut c = server.connect("market-data", "alice").await;
    for (cmd, id) in [
        (json!({"type": "subscribe", "symbols": [1], "id": 5}), json!(5)),
        (
            json!({"type": "subscribe", "symbols": "BTC-USD", "id": 6}),
            json!(6),
        ),
        (json!({"type": "subscribe", "symbols": [], "id": 7}), json!(7)),
        (
            json!({"type": "subscribe", "symbols": ["BTC-USD"], "since": {"BTC-USD": -1}, "id": "s"}),
            json!("s"),
        ),
        (
            json!({"type": "subscribe", "symbols": ["BTC-USD"], "max_frequency": 0, "id": 8}),
            json!(8),
        ),
    ] {
        let e = expect_error(&mut c, cmd, "invalid_field").await;
        assert_eq!(e["id"], id, "{e}");
    }
    // An id that is neither a string nor a number is itself the invalid field.
    let e = expect_error(&mut c, json!({"type": "ping", "id": {"x": 1}}), "invalid_field").await;
    assert!(e.get("id").is_none(), "such an id is not echoed: {e}");

    let mut s = server.connect("trading-signals", "alice").await;
    let e = expect_error(
        &mut s,
        json!({"type": "filter", "signal_type": "MAYBE", "id": 9}),
        "invalid_field",
    )
    .await;
    assert_eq!(e["id"], 9);
    let (mut n, _) = server.notifications("alice").await;
    let e = expect_error(
        &mut n,
        json!({"type": "mark_read", "notification_id": "nope", "id": 10}),
        "invalid_field",
    )
    .await;
    assert_eq!(e["id"], 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_echoes_the_id() {
    let server = start().await;
    let t = token_with("alice", Some(&["BTC-USD"]), Duration::from_secs(3600));
    let mut c = server.connect_token("market-data", &t).await;
    let e = expect_error(
        &mut c,
        json!({"type": "subscribe", "symbols": ["ETH-USD"], "id": 11}),
        "forbidden",
    )
    .await;
    assert_eq!(e["id"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_subscriptions_subscribes_nothing_of_the_command() {
    let server = start_with(|o| o.max_subscriptions = Some(2)).await;
    let mut c = server.connect("market-data", "alice").await;
    c.send(json!({"type": "subscribe", "symbols": ["A-1", "A-2"]}))
        .await;
    c.recv_type("subscribed").await;
    let e = expect_error(
        &mut c,
        json!({"type": "subscribe", "symbols": ["A-3"], "id": 21}),
        "too_many_subscriptions",
    )
    .await;
    assert_eq!(e["id"], 21);
    let e = expect_error(
        &mut c,
        json!({"type": "subscribe", "symbols": ["A-1", "A-4"], "id": 22}),
        "too_many_subscriptions",
    )
    .await;
    assert_eq!(e["id"], 22);
    // Nothing of the refused commands was subscribed.
    server
        .publish_ok(json!([
            market_update("A-3", 1.0),
            market_update("A-4", 1.0),
            market_update("A-2", 2.0)
        ]))
        .await;
    let u = c.recv_type("market_update").await;
    assert_eq!(u["symbol"], "A-2", "{u}");
    c.expect_silence().await;
    // After an unsubscribe there is room again.
    c.send(json!({"type": "unsubscribe", "symbols": ["A-1"]})).await;
    c.recv_type("unsubscribed").await;
    c.send(json!({"type": "subscribe", "symbols": ["A-3"], "id": 23}))
        .await;
    let ok = c.recv_type("subscribed").await;
    assert_eq!(ok["id"], 23);
}

/// Sends `n` pings with ids `0..n` at once, without waiting for answers.
async fn flood(c: &mut Client, n: usize) {
    for i in 0..n {
        // The server may close the socket mid-flood; later sends may fail.
        if c.ws
            .feed(Message::Text(json!({"type": "ping", "id": i}).to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = c.ws.flush().await;
}

/// Every message until the connection ends, and its close code.
async fn until_closed(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => panic!("still open after {WAIT:?}; saw {seen:?}"),
            Ok(Some(Ok(Message::Text(t)))) => seen.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(f)))) => return (seen, f.map(|f| u16::from(f.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return (seen, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_commands_are_refused_and_the_connection_recovers() {
    let server = start_with(|o| {
        o.commands_per_second = Some(5.0);
        o.command_burst = Some(5);
        o.rate_limit_strikes = Some(1000);
    })
    .await;
    let mut c = server.connect("market-data", "alice").await;
    flood(&mut c, 30).await;
    let mut answers = Vec::new();
    for _ in 0..30 {
        answers.push(c.recv().await);
    }
    for a in &answers[..5] {
        assert_eq!(a["type"], "pong", "the burst is served: {a}");
    }
    let limited: Vec<&Value> = answers.iter().filter(|a| a["type"] == "error").collect();
    assert!(
        limited.len() >= 20,
        "most of a 30-command flood over a burst of 5 is refused: {answers:?}"
    );
    for e in &limited {
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    c.expect_silence().await;
    // The bucket refills and the connection is served again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        c.send(json!({"type": "ping", "id": "again"})).await;
        let a = c.recv().await;
        if a["type"] == "pong" {
            assert_eq!(a["id"], "again");
            break;
        }
        assert_eq!(a["code"], "rate_limited", "{a}");
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_answers_echo_the_command_id() {
    let server = start_with(|o| {
        o.commands_per_second = Some(1.0);
        o.command_burst = Some(1);
        o.rate_limit_strikes = Some(1000);
    })
    .await;
    let mut c = server.connect("market-data", "alice").await;
    flood(&mut c, 3).await;
    let first = c.recv().await;
    assert_eq!(first["type"], "pong");
    for _ in 0..2 {
        let e = c.recv().await;
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert!(
            e["id"].is_u64(),
            "PROTOCOL.md 1.2: the answer echoes the command's id: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_breaking_the_rate_limit_is_closed_with_1008_and_others_are_unaffected() {
    let server = start_with(|o| {
        o.commands_per_second = Some(1.0);
        o.command_burst = Some(3);
        o.rate_limit_strikes = Some(5);
    })
    .await;
    let mut other = server.market("bob", &["RL-1"]).await;
    let mut abuser = server.connect("market-data", "mallory").await;
    flood(&mut abuser, 200).await;

    // Meanwhile the other client is served.
    other.send(json!({"type": "ping", "id": "b"})).await;
    assert_eq!(other.recv().await["type"], "pong");

    let (seen, code) = until_closed(&mut abuser).await;

    // The other client still gets its pongs and its updates.
    other.send(json!({"type": "ping", "id": "b2"})).await;
    assert_eq!(other.recv().await["id"], "b2");
    server.publish_ok(market_update("RL-1", 7.0)).await;
    let u = other.recv_type("market_update").await;
    assert_eq!(u["symbol"], "RL-1");

    assert_eq!(code, Some(1008), "closed for the rate limit; saw {seen:?}");
    let refusals: Vec<&Value> = seen.iter().filter(|m| m["type"] == "error").collect();
    assert!(
        !refusals.is_empty(),
        "each refused command is answered `rate_limited`, so the client sees why before the 1008 close; saw {seen:?}"
    );
    for m in &refusals {
        assert_eq!(m["code"], "rate_limited", "{seen:?}");
    }
    assert!(
        refusals.len() <= 5,
        "closed at the fifth refusal in a row, not later: {seen:?}"
    );
    let pongs = seen.iter().take_while(|m| m["type"] == "pong").count();
    assert_eq!(pongs, 3, "the burst of 3 was answered first: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_over_max_message_bytes_closes_with_1009() {
    let server = start_with(|o| o.max_message_bytes = Some(1024)).await;
    let mut c = server.connect("market-data", "alice").await;
    // Just under the limit is a command like any other.
    let small = json!({"type": "ping", "id": 1, "pad": "x".repeat(900)}).to_string();
    assert!(small.len() < 1024);
    c.send_text(small).await;
    assert_eq!(c.recv().await["type"], "pong");
    let big = json!({"type": "ping", "pad": "x".repeat(2000)}).to_string();
    c.send_text(big).await;
    let closed = c.closed().await;
    assert_eq!(closed.code, Some(1009), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_frame_closes_with_1003() {
    let server = start().await;
    for endpoint in ["market-data", "trading-signals", "notifications"] {
        let mut c = server.connect(endpoint, "alice").await;
        c.ws.send(Message::Binary(br#"{"type":"ping"}"#.to_vec().into()))
            .await
            .expect("send");
        let closed = c.closed().await;
        assert_eq!(closed.code, Some(1003), "{endpoint}: {closed:?}");
    }
}

/// A WebSocket client written by hand, to send what a well-behaved library
/// never would: invalid UTF-8 in a text frame, unmasked frames.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

impl RawWs {
    async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::connect_with(addr, path, &[]).await
    }

    /// Connects, sending `early` (frames) in the same write as the
    /// handshake request, before the server could answer it.
    async fn connect_with(addr: SocketAddr, path: &str, early: &[u8]) -> RawWs {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        // The sample key of RFC 6455 section 1.3, with its known accept value.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut first = request.into_bytes();
        first.extend_from_slice(early);
        stream.write_all(&first).await.expect("write handshake");
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await, "connection ended during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        raw.buf.drain(..end);
        assert!(head.starts_with("HTTP/1.1 101"), "handshake answered {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        raw
    }

    /// Reads more bytes into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let frame = frame_bytes(opcode, payload, masked);
        self.stream.write_all(&frame).await.expect("write frame");
    }

    /// The next frame from the server (opcode, payload); `None` at the end.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((opcode, payload));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the server's close frame; its code.
    async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

/// A client frame: final, `opcode`, masked with [`MASK`] when `masked`.
fn frame_bytes(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => frame.push(mask_bit | n as u8),
        n if n < 65_536 => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        frame.extend_from_slice(payload);
    }
    frame
}

/// One unmasked server frame at the start of `buf`, if it is all there.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    Some((opcode, payload, at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = start().await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut raw = RawWs::connect(server.addr, &path).await;
    // The hand-made client speaks well-formed WebSocket: a ping is answered.
    raw.send_frame(0x1, br#"{"type":"ping","id":"raw"}"#, true).await;
    let (opcode, payload) = raw.read_frame().await.expect("a pong frame");
    assert_eq!(opcode, 0x1);
    let pong: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("raw")),
        "{pong}"
    );

    raw.send_frame(0x1, b"{\"type\":\"ping\",\"x\":\"\xff\xfe\xc3\"}", true)
        .await;
    assert_eq!(raw.close_code().await, Some(1007));
}

/// Bytes a client sends right behind its handshake, before the 101 can
/// have arrived, are read like any later ones (the HTTP layer may already
/// hold them when the socket changes hands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_with_the_handshake_is_answered() {
    let server = start().await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut early = frame_bytes(0x1, br#"{"type":"ping","id":"early"}"#, true);
    early.extend(frame_bytes(
        0x1,
        br#"{"type":"subscribe","symbols":["E-1"],"id":2}"#,
        true,
    ));
    let mut raw = RawWs::connect_with(server.addr, &path, &early).await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let (opcode, payload) = raw.read_frame().await.expect("answers");
        assert_eq!(opcode, 0x1);
        answers.push(serde_json::from_slice::<Value>(&payload).unwrap());
    }
    assert_eq!(
        (answers[0]["type"].as_str(), answers[0]["id"].as_str()),
        (Some("pong"), Some("early"))
    );
    assert_eq!(answers[1]["type"], "subscribed", "{}", answers[1]);
}

/// A WebSocket ping between messages gets a pong with the same payload,
/// and updates around it arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ping_is_answered_in_between_updates() {
    let server = start().await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut raw = RawWs::connect(server.addr, &path).await;
    raw.send_frame(0x1, br#"{"type":"subscribe","symbols":["P-1"]}"#, true)
        .await;
    let (_, subscribed) = raw.read_frame().await.expect("subscribed");
    assert!(String::from_utf8_lossy(&subscribed).contains("subscribed"));
    for round in 0..20 {
        server.publish_ok(market_update("P-1", round as f64)).await;
        raw.send_frame(0x9, format!("beat-{round}").as_bytes(), true)
            .await;
    }
    let (mut pongs, mut seqs) = (Vec::new(), Vec::new());
    while pongs.len() < 20 || seqs.len() < 20 {
        match raw.read_frame().await.expect("frames") {
            (0xA, payload) => pongs.push(String::from_utf8(payload).unwrap()),
            (0x1, payload) => {
                let v: Value = serde_json::from_slice(&payload).expect("whole JSON messages");
                seqs.push(v["seq"].as_u64().unwrap());
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(pongs, (0..20).map(|i| format!("beat-{i}")).collect::<Vec<_>>());
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_client_frame_closes_with_1002() {
    let server = start().await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut raw = RawWs::connect(server.addr, &path).await;
    raw.send_frame(0x1, br#"{"type":"ping"}"#, false).await;
    assert_eq!(raw.close_code().await, Some(1002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_bad_client_leaves_the_server_serving() {
    let server = start().await;
    let mut watcher = server.market("bob", &["OK-1"]).await;
    let path = format!("/ws/market-data/?token={}", token("alice"));
    let mut raw = RawWs::connect(server.addr, &path).await;
    raw.send_frame(0x1, b"\xff\xff\xff", true).await;
    assert_eq!(raw.close_code().await, Some(1007));
    let mut big = server.connect("market-data", "carol").await;
    big.send_text("x".repeat(128 * 1024)).await;
    assert_eq!(big.closed().await.code, Some(1009));
    server.publish_ok(market_update("OK-1", 1.0)).await;
    assert_eq!(watcher.recv_type("market_update").await["symbol"], "OK-1");
    still_works(&mut watcher).await;
}
