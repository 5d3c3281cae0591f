//! What a client socket reads, between TCP and tungstenite (whose client
//! has no compression): every byte read can be counted (`bench`'s bytes on
//! the wire per delivery), and on a socket that offered permessage-deflate
//! (RFC 7692, with no context takeover) the server's compressed messages
//! are inflated here and handed to tungstenite as plain frames, the way
//! the server's `connection::inflate` does for its inbound side.
//!
//! [`Wire`] first passes the server's HTTP answer through unchanged and
//! reads from it whether deflate was agreed; after it, the frames pass
//! through as they are, except a message whose first frame has RSV1: its
//! frames are gathered, inflated, and handed on as one final plain frame of
//! the same opcode. Control frames between its fragments pass as they come.
//! The inflater is one per thread (its window is 32 KiB and more), so an
//! idle socket holds only the frame header being read.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stats;

/// What the extension offer of the handshake says.
pub const OFFER: &str = "permessage-deflate; client_no_context_takeover";

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;
/// What a sync flush ends with; RFC 7692 removes it from every compressed
/// message, and the receiver appends it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The longest HTTP answer read for its `Sec-WebSocket-Extensions`.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// The largest message inflated (tungstenite's default message limit).
const MAX_MESSAGE: usize = 64 << 20;
/// What one read from the socket asks for, on an inflating socket.
const READ_CHUNK: usize = 8 * 1024;

thread_local! {
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A socket as loadgen's WebSocket clients read it.
pub struct Wire<S> {
    inner: S,
    /// Whether the bytes read go into the run's wire-byte count.
    count: bool,
    /// Set when deflate was offered (boxed: plain sockets carry a pointer).
    inflate: Option<Box<Inflating>>,
}

impl<S> Wire<S> {
    /// `count`: add what is read to [`stats::wire_bytes`]; `deflate`: the
    /// handshake offers permessage-deflate (see [`OFFER`]).
    pub fn new(inner: S, count: bool, deflate: bool) -> Wire<S> {
        Wire {
            inner,
            count,
            inflate: deflate.then(|| Box::new(Inflating::new())),
        }
    }

    /// Whether the server's answer agreed to permessage-deflate.
    pub fn deflate_agreed(&self) -> bool {
        self.inflate.as_ref().is_some_and(|i| i.agreed)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inf) = this.inflate.as_mut() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if this.count {
                stats::record_wire_bytes((buf.filled().len() - before) as u64);
            }
            return Poll::Ready(Ok(()));
        };
        loop {
            if inf.out_at < inf.out.len() {
                let n = buf.remaining().min(inf.out.len() - inf.out_at);
                buf.put_slice(&inf.out[inf.out_at..inf.out_at + n]);
                inf.out_at += n;
                if inf.out_at == inf.out.len() {
                    inf.out.clear();
                    inf.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let input = read.filled();
            if input.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if this.count {
                stats::record_wire_bytes(input.len() as u64);
            }
            inf.feed(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why the server's bytes could not be handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The HTTP answer is longer than anything a server sends.
    HttpTooLong,
    /// A compressed frame where none may be (a data frame inside a
    /// compressed message, RSV1 on its continuation).
    Misplaced,
    /// A compressed message past the message limit.
    TooBig,
    /// Data that is not deflate.
    Corrupt,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireError::HttpTooLong => "the server's HTTP answer is too long",
            WireError::Misplaced => "a compressed frame out of place",
            WireError::TooBig => "a compressed message past the message limit",
            WireError::Corrupt => "a compressed message that is not valid deflate",
        })
    }
}

impl std::error::Error for WireError {}

/// The reading side of a socket that offered permessage-deflate.
struct Inflating {
    /// The HTTP answer so far, until its blank line; `None` after it.
    http: Option<Vec<u8>>,
    agreed: bool,
    /// The header of the frame being read, until it is whole.
    head: [u8; 14],
    head_len: usize,
    payload: Payload,
    /// A compressed message being gathered: its opcode and bytes so far.
    message: Option<(u8, Vec<u8>)>,
    /// What tungstenite is to read, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
}

enum Payload {
    /// Between frames: the next byte starts a header.
    None,
    /// Bytes that go to tungstenite as they are.
    Pass { left: u64 },
    /// Bytes of a compressed message.
    Take { left: u64, fin: bool },
}

impl Inflating {
    fn new() -> Inflating {
        Inflating {
            http: Some(Vec::new()),
            agreed: false,
            head: [0; 14],
            head_len: 0,
            payload: Payload::None,
            message: None,
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Reads `input`, appending what tungstenite is to read to `out`.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), WireError> {
        if let Some(head) = &mut self.http {
            let seen = head.len();
            head.extend_from_slice(input);
            // The blank line may straddle two reads: look from 3 bytes back.
            let from = seen.saturating_sub(3);
            let Some(end) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
                if head.len() > MAX_HTTP_HEAD {
                    return Err(WireError::HttpTooLong);
                }
                self.out.extend_from_slice(input);
                return Ok(());
            };
            let end = from + end + 4;
            self.agreed = agreed(&head[..end]);
            let taken = end - seen;
            self.out.extend_from_slice(&input[..taken]);
            input = &input[taken..];
            self.http = None;
        }
        if !self.agreed {
            self.out.extend_from_slice(input);
            return Ok(());
        }
        while !input.is_empty() {
            match &mut self.payload {
                Payload::Pass { left } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    self.out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.payload = Payload::None;
                    }
                }
                Payload::Take { left, fin } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    let Some((_, gathered)) = &mut self.message else {
                        return Err(WireError::Misplaced);
                    };
                    if gathered.len() + n > MAX_MESSAGE {
                        return Err(WireError::TooBig);
                    }
                    gathered.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        let fin = *fin;
                        self.payload = Payload::None;
                        if fin {
                            self.finish()?;
                        }
                    }
                }
                Payload::None => {
                    let take = (self.wanted() - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                    self.head_len += take;
                    input = &input[take..];
                    if self.head_len == self.wanted() {
                        self.start_frame()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// How long the header being read is, as far as its bytes so far tell.
    fn wanted(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // A server's frames are never masked; tungstenite refuses one that is.
        let mask = if self.head[1] & MASKED != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// A whole header was read: decides what its payload is for.
    fn start_frame(&mut self) -> Result<(), WireError> {
        let head = &self.head[..self.head_len];
        let (first, second) = (head[0], head[1]);
        let len = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => u64::from_be_bytes(head[2..10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        };
        let opcode = first & 0x0f;
        let compressed_start = first & RSV1 != 0 && (opcode == 1 || opcode == 2);
        let continues_compressed = opcode == 0 && self.message.is_some();
        self.head_len = 0;
        if !(compressed_start || continues_compressed) {
            if opcode < 8 && self.message.is_some() {
                return Err(WireError::Misplaced);
            }
            // Plain and control frames, and anything malformed, go to
            // tungstenite, which judges them.
            self.out.extend_from_slice(head);
            self.payload = if len == 0 {
                Payload::None
            } else {
                Payload::Pass { left: len }
            };
            return Ok(());
        }
        if second & MASKED != 0 || (continues_compressed && first & RSV1 != 0) {
            return Err(WireError::Misplaced);
        }
        if compressed_start {
            if self.message.is_some() {
                return Err(WireError::Misplaced);
            }
            self.message = Some((opcode, Vec::new()));
        }
        if len > MAX_MESSAGE as u64 {
            return Err(WireError::TooBig);
        }
        let fin = first & FIN != 0;
        self.payload = Payload::Take { left: len, fin };
        if len == 0 {
            self.payload = Payload::None;
            if fin {
                self.finish()?;
            }
        }
        Ok(())
    }

    /// The compressed message is complete: inflates it and hands it on as
    /// one final, plain, unmasked frame.
    fn finish(&mut self) -> Result<(), WireError> {
        let Some((opcode, gathered)) = self.message.take() else {
            return Err(WireError::Misplaced);
        };
        let inflated = inflate(&gathered)?;
        let len = inflated.len();
        self.out.push(FIN | opcode);
        if len < 126 {
            self.out.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.out.push(126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.out.extend_from_slice(&inflated);
        Ok(())
    }
}

/// Whether an HTTP answer's `Sec-WebSocket-Extensions` agrees to deflate.
fn agreed(http: &[u8]) -> bool {
    const NAME: &str = "sec-websocket-extensions:";
    String::from_utf8_lossy(http).lines().any(|line| {
        line.get(..NAME.len())
            .is_some_and(|name| name.eq_ignore_ascii_case(NAME))
            && line[NAME.len()..].contains("permessage-deflate")
    })
}

/// One message's payload inflated on its own (no context takeover).
fn inflate(input: &[u8]) -> Result<Vec<u8>, WireError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((input.len() * 4).max(256));
        for part in [input, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let consumed = (d.total_in() - start) as usize;
                let status = d
                    .decompress_vec(&part[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| WireError::Corrupt)?;
                let consumed = (d.total_in() - start) as usize;
                let room = out.len() < out.capacity();
                if out.len() > MAX_MESSAGE {
                    return Err(WireError::TooBig);
                }
                match status {
                    Status::StreamEnd => break,
                    _ if consumed == part.len() && room => break,
                    Status::BufError if room => return Err(WireError::Corrupt),
                    _ => {}
                }
                if !room {
                    out.reserve(out.capacity());
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    /// One message compressed as a permessage-deflate server sends it.
    fn deflate(input: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(input.len() + 64);
        c.compress_vec(input, &mut out, FlushCompress::Sync).unwrap();
        assert_eq!(c.total_in() as usize, input.len());
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// A server frame (unmasked).
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    const AGREED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";

    #[test]
    fn compressed_messages_come_out_plain_even_byte_by_byte_and_the_rest_unchanged() {
        let text = br#"{"type":"market_update","symbol":"BTC-USD","price":45000.0}"#.repeat(20);
        let packed = deflate(&text);
        let (a, b) = packed.split_at(packed.len() / 2);
        let plain = frame(FIN | 1, b"plain");
        let ping = frame(FIN | 0x9, b"p");
        let mut wire = AGREED.to_vec();
        wire.extend(&plain);
        wire.extend(frame(FIN | RSV1 | 1, &packed));
        wire.extend(frame(RSV1 | 2, a));
        wire.extend(&ping);
        wire.extend(frame(FIN, b));
        let mut expected = AGREED.to_vec();
        expected.extend(&plain);
        expected.extend(frame(FIN | 1, &text));
        expected.extend(&ping);
        expected.extend(frame(FIN | 2, &text));
        for step in [1, 7, wire.len()] {
            let mut inf = Inflating::new();
            for chunk in wire.chunks(step) {
                inf.feed(chunk).unwrap();
            }
            assert!(inf.agreed);
            assert_eq!(inf.out, expected, "fed {step} bytes at a time");
        }
    }

    #[test]
    fn without_the_agreement_every_byte_passes_and_junk_is_refused() {
        let declined = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        let mut wire = declined.to_vec();
        wire.extend(frame(FIN | RSV1 | 1, b"not deflate"));
        let mut inf = Inflating::new();
        inf.feed(&wire).unwrap();
        assert!(!inf.agreed);
        assert_eq!(inf.out, wire);
        let mut inf = Inflating::new();
        let mut wire = AGREED.to_vec();
        wire.extend(frame(FIN | RSV1 | 1, &[0xff; 16]));
        assert_eq!(inf.feed(&wire), Err(WireError::Corrupt));
        let mut inf = Inflating::new();
        let mut wire = AGREED.to_vec();
        wire.extend(frame(RSV1 | 1, &deflate(b"x")));
        wire.extend(frame(FIN | 1, b"a new message inside it"));
        assert_eq!(inf.feed(&wire), Err(WireError::Misplaced));
    }
}
