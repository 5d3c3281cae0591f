//! A WebSocket client written on the bytes, for what tungstenite's client
//! cannot do: permessage-deflate (RSV1 frames both ways) and frames a
//! well-behaved client would never send (a compression bomb).

use std::net::SocketAddr;

use serde_json::Value;
use tickwire::protocol::deflate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub const RSV1: u8 = 0x40;

/// One frame as it came: its first byte (FIN, RSV, opcode) and payload.
#[derive(Debug)]
pub struct RawFrame {
    pub first: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    pub fn compressed(&self) -> bool {
        self.first & RSV1 != 0
    }

    /// The message's bytes, inflated when compressed.
    pub fn message(&self) -> Vec<u8> {
        if self.compressed() {
            deflate::inflate(&self.payload, 64 << 20).expect("valid deflate from the server")
        } else {
            self.payload.clone()
        }
    }

    /// A close frame's code.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The handshake's answer, headers included.
    pub response: String,
}

impl RawWs {
    /// Opens `path` (with its query) offering `extensions` (a
    /// `Sec-WebSocket-Extensions` value) when given.
    pub async fn connect(addr: SocketAddr, path: &str, extensions: Option<&str>) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let ext = extensions
            .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("handshake answer in time")
                .unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let response = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        buf.drain(..end);
        RawWs { tcp, buf, response }
    }

    /// The agreed `Sec-WebSocket-Extensions`, if any.
    pub fn extensions(&self) -> Option<String> {
        self.response.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| v.trim().to_string())
        })
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&f).await.unwrap();
    }

    /// Sends a text command, compressed (RSV1) or not.
    pub async fn send_json(&mut self, v: &Value, compressed: bool) {
        let text = v.to_string();
        if compressed {
            self.send_frame(0x80 | RSV1 | 1, &deflate::compress(text.as_bytes()))
                .await;
        } else {
            self.send_frame(0x81, text.as_bytes()).await;
        }
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = [0u8; 65536];
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// The next frame; `None` when the connection ended.
    pub async fn frame(&mut self) -> Option<RawFrame> {
        if !self.fill(2).await {
            return None;
        }
        let (first, len7) = (self.buf[0], self.buf[1] & 0x7f);
        let (len, start) = match len7 {
            126 => {
                self.fill(4).await;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10).await;
                (
                    u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                    10,
                )
            }
            n => (n as usize, 2),
        };
        if !self.fill(start + len).await {
            return None;
        }
        let payload = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Some(RawFrame { first, payload })
    }

    /// The next data frame (pings and pongs skipped); panics on a close.
    pub async fn data(&mut self) -> RawFrame {
        loop {
            let f = self.frame().await.expect("connection open");
            match f.opcode() {
                1 | 2 => return f,
                8 => panic!("closed with {:?}", f.close_code()),
                _ => continue,
            }
        }
    }

    /// The next JSON message, inflated when compressed.
    pub async fn recv(&mut self) -> Value {
        serde_json::from_slice(&self.data().await.message()).expect("JSON")
    }

    /// The next message of `type`, with its frame.
    pub async fn recv_type(&mut self, kind: &str) -> (Value, RawFrame) {
        loop {
            let f = self.data().await;
            let v: Value = serde_json::from_slice(&f.message()).expect("JSON");
            if v["type"] == kind {
                return (v, f);
            }
        }
    }

    /// Reads until the close frame; its code (`None`: ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some(f) = self.frame().await {
            if f.opcode() == 8 {
                return f.close_code();
            }
        }
        None
    }
}
