//! Inbound permessage-deflate, between the socket and tungstenite (which
//! has no compression of its own and refuses RSV1): the client's bytes
//! pass through frame by frame, unchanged, except a compressed message
//! (its first frame has RSV1), which is gathered, inflated within the
//! message limit and handed on as one plain frame of the same opcode. So
//! tungstenite keeps judging everything else (masking, control frames,
//! fragmentation, UTF-8 of the inflated text) as on any socket.
//!
//! A state machine over bytes, with no socket, so its tests feed it
//! frames. Its own refusals close the connection: a message that
//! inflates (or arrives compressed) past the limit with 1009, data that is
//! not deflate, an unmasked or misplaced compressed frame with 1002.

use crate::protocol::close::CloseReason;
use crate::protocol::deflate::{self, InflateError};

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const MASKED: u8 = 0x80;

/// The inbound side of one socket that agreed to permessage-deflate.
pub struct Inflating {
    /// The largest message accepted, compressed or inflated.
    max_bytes: usize,
    /// The header of the frame being read, until it is whole.
    head: [u8; 14],
    head_len: usize,
    /// What the rest of the current frame's payload is for.
    payload: Payload,
    /// A compressed message being gathered: its opcode and its compressed
    /// (unmasked) bytes so far.
    message: Option<(u8, Vec<u8>)>,
}

enum Payload {
    /// Between frames: the next byte starts a header.
    None,
    /// Bytes that go to tungstenite as they are.
    Pass { left: u64 },
    /// Bytes of a compressed message, masked with `mask` from `at`.
    Take {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
}

impl Inflating {
    pub fn new(max_bytes: usize) -> Inflating {
        Inflating {
            max_bytes,
            head: [0; 14],
            head_len: 0,
            payload: Payload::None,
            message: None,
        }
    }

    /// Reads `input`, appending what tungstenite is to read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), CloseReason> {
        let max_compressed = self.max_compressed();
        while !input.is_empty() {
            match &mut self.payload {
                Payload::Pass { left } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *left -= n as u64;
                    if *left == 0 {
                        self.payload = Payload::None;
                    }
                }
                Payload::Take { left, mask, at, fin } => {
                    let n = (*left).min(input.len() as u64) as usize;
                    let Some((_, gathered)) = &mut self.message else {
                        return Err(CloseReason::ProtocolViolation);
                    };
                    if gathered.len() + n > max_compressed {
                        return Err(CloseReason::TooBig);
                    }
                    gathered.extend(
                        input[..n]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(*at + i) % 4]),
                    );
                    *at += n;
                    *left -= n as u64;
                    input = &input[n..];
                    if *left == 0 {
                        let fin = *fin;
                        self.payload = Payload::None;
                        if fin {
                            self.finish(out)?;
                        }
                    }
                }
                Payload::None => {
                    let take = (self.wanted() - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                    self.head_len += take;
                    input = &input[take..];
                    if self.head_len == self.wanted() {
                        self.start_frame(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The most compressed bytes a message may have: its limit and what
    /// deflate adds to data it cannot shrink (5 bytes per stored block,
    /// which a compressor with little memory makes as small as 128 bytes:
    /// 4 %; Python's `websockets` adds 0.25 %), so that a message of the
    /// limit's size is never refused for arriving compressed.
    fn max_compressed(&self) -> usize {
        self.max_bytes.saturating_add(self.max_bytes / 16 + 64)
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
        let mask = if self.head[1] & MASKED != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// A whole header was read: decides what its payload is for.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), CloseReason> {
        let head = &self.head[..self.head_len];
        let (first, second) = (head[0], head[1]);
        let len = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            // The first 8 bytes after the two: the extended length.
            127 => u64::from_be_bytes(head[2..10].try_into().unwrap_or([0xff; 8])),
            n => u64::from(n),
        };
        let opcode = first & 0x0f;
        let compressed_start = first & RSV1 != 0 && (opcode == 1 || opcode == 2);
        let continues_compressed = opcode == 0 && self.message.is_some();
        if !(compressed_start || continues_compressed) {
            // Control frames, plain messages and anything malformed go to
            // tungstenite, which judges them (RSV1 on a control frame or a
            // plain continuation is its 1002).
            if opcode < 8 && self.message.is_some() {
                // A new data frame in the middle of a compressed message.
                return Err(CloseReason::ProtocolViolation);
            }
            out.extend_from_slice(head);
            self.head_len = 0;
            self.payload = if len == 0 {
                Payload::None
            } else {
                Payload::Pass { left: len }
            };
            return Ok(());
        }
        if second & MASKED == 0 || (continues_compressed && first & RSV1 != 0) {
            return Err(CloseReason::ProtocolViolation);
        }
        if compressed_start {
            if self.message.is_some() {
                return Err(CloseReason::ProtocolViolation);
            }
            self.message = Some((opcode, Vec::new()));
        }
        if len > self.max_compressed() as u64 {
            return Err(CloseReason::TooBig);
        }
        let n = self.head_len;
        let mask = [head[n - 4], head[n - 3], head[n - 2], head[n - 1]];
        let fin = first & FIN != 0;
        self.head_len = 0;
        self.payload = Payload::Take {
            left: len,
            mask,
            at: 0,
            fin,
        };
        if len == 0 {
            self.payload = Payload::None;
            if fin {
                self.finish(out)?;
            }
        }
        Ok(())
    }

    /// The compressed message is complete: inflates it and hands it on as
    /// one final, plain frame (masked with a zero key, which changes nothing).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), CloseReason> {
        let Some((opcode, gathered)) = self.message.take() else {
            return Err(CloseReason::ProtocolViolation);
        };
        let inflated = deflate::inflate(&gathered, self.max_bytes).map_err(|e| match e {
            InflateError::TooBig => CloseReason::TooBig,
            InflateError::Corrupt => CloseReason::ProtocolViolation,
        })?;
        let len = inflated.len();
        out.push(FIN | opcode);
        if len < 126 {
            out.push(MASKED | len as u8);
        } else if len <= u16::MAX as usize {
            out.push(MASKED | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(MASKED | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&inflated);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: `first` byte, masked payload.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(MASKED | n as u8),
            n if n <= 0xffff => {
                f.push(MASKED | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(MASKED | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// The payload of the plain frame handed on (zero mask).
    fn plain_payload(out: &[u8]) -> (u8, &[u8]) {
        let (len, start) = match out[1] & 0x7f {
            126 => (u16::from_be_bytes([out[2], out[3]]) as usize, 8),
            127 => (u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize, 14),
            n => (n as usize, 6),
        };
        assert_eq!(&out[start - 4..start], &[0, 0, 0, 0]);
        (out[0], &out[start..start + len])
    }

    #[test]
    fn a_compressed_message_is_handed_on_plain_even_byte_by_byte() {
        let text = br#"{"type":"subscribe","symbols":["BTC-USD","ETH-USD"]}"#.repeat(10);
        let wire = frame(FIN | RSV1 | 1, &deflate::compress(&text));
        let mut inf = Inflating::new(64 * 1024);
        let mut out = Vec::new();
        for b in &wire {
            inf.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(plain_payload(&out), (FIN | 1, &text[..]));
    }

    #[test]
    fn plain_and_control_frames_pass_unchanged_also_between_fragments() {
        let packed = deflate::compress(b"hello hello hello hello");
        let (a, b) = packed.split_at(packed.len() / 2);
        let ping = frame(FIN | 0x9, b"p");
        let plain = frame(FIN | 1, b"plain");
        let mut wire = plain.clone();
        wire.extend(frame(RSV1 | 1, a));
        wire.extend(&ping);
        wire.extend(frame(FIN, b));
        let mut inf = Inflating::new(1024);
        let mut out = Vec::new();
        inf.feed(&wire, &mut out).unwrap();
        assert_eq!(&out[..plain.len()], &plain[..]);
        assert_eq!(&out[plain.len()..plain.len() + ping.len()], &ping[..]);
        let rest = &out[plain.len() + ping.len()..];
        assert_eq!(plain_payload(rest), (FIN | 1, &b"hello hello hello hello"[..]));
    }

    #[test]
    fn a_bomb_or_an_oversized_frame_is_too_big_and_junk_a_violation() {
        let bomb = frame(FIN | RSV1 | 1, &deflate::compress(&vec![b'a'; 1 << 20]));
        assert!(bomb.len() < 2048);
        let mut out = Vec::new();
        assert_eq!(
            Inflating::new(64 * 1024).feed(&bomb, &mut out),
            Err(CloseReason::TooBig)
        );
        let big = frame(FIN | RSV1 | 2, &vec![0u8; 70_000 + 70_000 / 16]);
        assert_eq!(
            Inflating::new(64 * 1024).feed(&big[..20], &mut out),
            Err(CloseReason::TooBig)
        );
        let junk = frame(FIN | RSV1 | 1, &[0xff; 32]);
        assert_eq!(
            Inflating::new(1024).feed(&junk, &mut out),
            Err(CloseReason::ProtocolViolation)
        );
        let mut unmasked = frame(FIN | RSV1 | 1, b"");
        unmasked[1] &= !MASKED;
        unmasked.truncate(2);
        assert_eq!(
            Inflating::new(1024).feed(&unmasked, &mut out),
            Err(CloseReason::ProtocolViolation)
        );
    }
}
