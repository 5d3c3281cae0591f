//! permessage-deflate's payload transform (RFC 7692 7.2), with no context
//! taken over from one message to the next in either direction: each
//! message is compressed alone (raw deflate, a sync flush, the trailing
//! `00 00 ff ff` removed) and inflated alone, within a size limit. Pure
//! functions over bytes; which frames are compressed, and the negotiation,
//! belong to [`super::frame`] and the handshake.
//!
//! Each thread keeps one compressor and one decompressor and resets them
//! per message: miniz_oxide's compressor state is a few hundred KiB, far
//! too much to allocate per broadcast or to keep per connection. Resetting
//! it costs about 20 µs, so payloads of at most
//! [`FIXED_CODES_MAX_BYTES`] go through [`super::fixed_huffman`] instead,
//! whose state needs no reset.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::fixed_huffman;

/// What a sync flush ends with, and what RFC 7692 removes from (and a
/// receiver appends back to) every compressed message.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The compression level: 6, zlib's default. A broadcast is compressed
/// once for all its subscribers, so a better ratio costs one compression
/// and saves bytes on every socket.
const LEVEL: u32 = 6;

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Why an inbound compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the message limit (a close with 1009).
    #[error("inflates past the message size limit")]
    TooBig,
    /// It is not valid deflate data (a close with 1002).
    #[error("invalid compressed data")]
    Corrupt,
}

/// Payloads up to this long are compressed by [`fixed_huffman`]: zlib
/// would choose fixed codes for most of them too, and resetting its
/// compressor for each message costs far more than compressing one.
pub const FIXED_CODES_MAX_BYTES: usize = 2048;

/// One message compressed on its own, as permessage-deflate sends it.
pub fn compress(input: &[u8]) -> Bytes {
    if input.len() <= FIXED_CODES_MAX_BYTES {
        return Bytes::from(fixed_huffman::compress(input));
    }
    compress_with_zlib(input)
}

/// [`compress`] by zlib's method (miniz_oxide), whatever the length.
pub fn compress_with_zlib(input: &[u8]) -> Bytes {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start_in = c.total_in();
        loop {
            let consumed = (c.total_in() - start_in) as usize;
            // Compressing into a Vec with room cannot fail: errors come only
            // from misuse of the stream, which this loop does not do.
            let _ = c.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync);
            let consumed = (c.total_in() - start_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Bytes::from(out)
    })
}

/// A compressed message's payload, inflated, at most `max_bytes` long.
pub fn inflate(input: &[u8], max_bytes: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((input.len() * 4).max(64).min(max_bytes.saturating_add(1)));
        for (part, flush) in [(input, FlushDecompress::None), (&TAIL[..], FlushDecompress::Sync)] {
            let start_in = d.total_in();
            loop {
                let consumed = (d.total_in() - start_in) as usize;
                let status = d
                    .decompress_vec(&part[consumed..], &mut out, flush)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > max_bytes {
                    return Err(InflateError::TooBig);
                }
                let consumed = (d.total_in() - start_in) as usize;
                let room = out.len() < out.capacity();
                match status {
                    Status::StreamEnd => break,
                    _ if consumed == part.len() && room => break,
                    Status::BufError if room => return Err(InflateError::Corrupt),
                    _ => {}
                }
                if !room {
                    // One byte past the limit is enough to know it is too big.
                    let grow = out
                        .capacity()
                        .min(max_bytes.saturating_add(1) - out.len().min(max_bytes));
                    out.reserve(grow.max(1));
                }
            }
        }
        Ok(out)
    })
}

/// What the server agreed to in a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The `Sec-WebSocket-Extensions` answer.
    pub response: String,
    /// The window the client allows the server (`server_max_window_bits`,
    /// 15 when it set none): payloads longer than the window are sent
    /// uncompressed, since the compressor always uses the full window.
    pub server_window_bits: u8,
}

/// Picks the first `permessage-deflate` offer of a handshake's
/// `Sec-WebSocket-Extensions` values that the server can keep (RFC 7692
/// 5 and 7.1): every parameter known, none twice, values in range. The
/// answer always has `server_no_context_takeover` (PROTOCOL.md 5.2) and
/// `client_no_context_takeover` (which a server may ask even unoffered,
/// 7.1.1.2), so that neither side keeps a window between messages and a
/// connection holds no compression state while it is idle.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    offers
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_window_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        let bits = |v: Option<&str>| {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", v) => server_window_bits = Some(bits(v)?),
            // The client may limit its own window; any window inflates here.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", v) => {
                bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    let mut response =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if let Some(b) = server_window_bits {
        response.push_str(&format!("; server_max_window_bits={b}"));
    }
    Some(Agreed {
        response,
        server_window_bits: server_window_bits.unwrap_or(15),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offer_the_server_can_keep_is_taken() {
        let a = negotiate(["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(
            a.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(a.server_window_bits, 15);
        let a = negotiate([
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=10",
        ])
        .unwrap();
        assert!(
            a.response.ends_with("server_max_window_bits=10"),
            "{}",
            a.response
        );
        assert_eq!(a.server_window_bits, 10);
        for refused in [
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "deflate-stream",
        ] {
            assert_eq!(negotiate([refused]), None, "{refused}");
        }
        assert!(negotiate(["Permessage-Deflate ; client_no_context_takeover"]).is_some());
    }

    #[test]
    fn a_message_round_trips_and_is_smaller() {
        let text = r#"{"type":"market_update","symbol":"BTC-USD","price":45000.5,"seq":1}"#.repeat(20);
        let packed = compress(text.as_bytes());
        assert!(
            packed.len() < text.len() / 4,
            "{} of {}",
            packed.len(),
            text.len()
        );
        assert!(!packed.ends_with(&TAIL));
        assert_eq!(inflate(&packed, 1 << 20).unwrap(), text.as_bytes());
        // Messages are independent: no context is taken over.
        let again = compress(text.as_bytes());
        assert_eq!(packed, again);
        assert_eq!(inflate(&compress(b""), 16).unwrap(), b"");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(inflate(&bomb, 10 << 20).map(|v| v.len()), Ok(10 << 20));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert_eq!(inflate(&[0xff; 64], 1024), Err(InflateError::Corrupt));
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = inflate(&junk, 1024);
        }
    }
}
