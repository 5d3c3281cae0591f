//! [`Frame`]: one message as the server sends it, made once and shared by
//! every subscriber that gets it (a clone is a reference count). Its JSON
//! text is made when it is encoded; the other forms a socket may need (the
//! same object as MessagePack, either payload compressed for
//! permessage-deflate) are made lazily, by the first subscriber whose
//! socket needs them, and kept in the frame for all the others: a
//! broadcast is encoded once per format in use and compressed once per
//! format, never per subscriber.
//!
//! Which form a socket takes is its [`Encoding`], fixed at its handshake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{deflate, msgpack};

/// FIN and the opcode of a text frame; [`RSV1`] marks it compressed.
pub const TEXT_HEAD: u8 = 0x81;
/// FIN and the opcode of a binary frame (a MessagePack message).
pub const BINARY_HEAD: u8 = 0x82;
/// The RSV1 bit of a frame's first byte: "compressed" under permessage-deflate.
pub const RSV1: u8 = 0x40;

/// Payloads compressed, and their bytes before and after (process-wide:
/// a frame does not know its node; `/metrics` reads them).
static COMPRESSED_FRAMES: AtomicU64 = AtomicU64::new(0);
static COMPRESSED_IN_BYTES: AtomicU64 = AtomicU64::new(0);
static COMPRESSED_OUT_BYTES: AtomicU64 = AtomicU64::new(0);
/// Frames given a MessagePack form (once per frame, like compression).
static MSGPACK_FRAMES: AtomicU64 = AtomicU64::new(0);

/// How many frames were given a MessagePack form since the process started.
pub fn msgpack_count() -> u64 {
    MSGPACK_FRAMES.load(Ordering::Relaxed)
}

/// How many payloads were compressed, from how many bytes into how many,
/// since the process started.
pub fn compression_counts() -> (u64, u64, u64) {
    // Relaxed: independent tallies read for display.
    (
        COMPRESSED_FRAMES.load(Ordering::Relaxed),
        COMPRESSED_IN_BYTES.load(Ordering::Relaxed),
        COMPRESSED_OUT_BYTES.load(Ordering::Relaxed),
    )
}

/// What a socket negotiated for the frames it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoding {
    pub format: Format,
    /// permessage-deflate, when negotiated.
    pub deflate: Option<Deflate>,
}

/// How messages are written on a socket (`?format=`, PROTOCOL.md 5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per text frame.
    #[default]
    Json,
    /// One MessagePack map per binary frame.
    MsgPack,
}

impl Format {
    /// The `format` query parameter's values.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "msgpack" => Some(Format::MsgPack),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
        }
    }
}

/// Which payloads go compressed on a socket with permessage-deflate.
/// Small (4 bytes), because every connection's outbox keeps one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// Smaller payloads go as they are (RSV1 clear, as RFC 7692 allows):
    /// compressing a few dozen bytes saves nothing.
    pub min_bytes: u16,
    /// The window the client allows the server (`server_max_window_bits`,
    /// 8 to 15). Below 15, larger payloads go as they are too: the
    /// compressor always uses the full window, and a client that limits it
    /// can inflate such a payload only when it fits in its window.
    pub window_bits: u8,
}

impl Deflate {
    /// The largest payload sent compressed.
    fn max_bytes(self) -> usize {
        match self.window_bits {
            15.. => usize::MAX,
            bits => 1 << bits,
        }
    }
}

/// One encoded message, shared by every subscriber that gets it.
#[derive(Clone)]
pub struct Frame(Arc<Inner>);

struct Inner {
    /// The JSON text, UTF-8 checked once.
    json: Utf8Bytes,
    /// The forms made lazily, allocated only once one is needed, so that a
    /// frame kept in a history window costs one pointer for them.
    forms: OnceLock<Box<Forms>>,
}

#[derive(Default)]
struct Forms {
    /// The JSON payload compressed (RFC 7692, no context takeover).
    deflated_json: OnceLock<Bytes>,
    /// The same object as MessagePack; `None` in the (never seen) case of a
    /// frame whose text does not parse back, which then goes as JSON.
    msgpack: OnceLock<Option<Bytes>>,
    /// The MessagePack payload compressed.
    deflated_msgpack: OnceLock<Bytes>,
}

impl Frame {
    pub fn from_static(s: &'static str) -> Frame {
        Frame::of(Utf8Bytes::from_static(s))
    }

    fn of(json: Utf8Bytes) -> Frame {
        Frame(Arc::new(Inner {
            json,
            forms: OnceLock::new(),
        }))
    }

    pub fn as_str(&self) -> &str {
        self.0.json.as_str()
    }

    /// The JSON text's bytes (a reference count, no copy).
    #[inline]
    pub fn json_bytes(&self) -> Bytes {
        Bytes::from(self.0.json.clone())
    }

    fn forms(&self) -> &Forms {
        self.0.forms.get_or_init(Box::default)
    }

    /// The JSON payload compressed, made by the first caller.
    pub fn deflated_json(&self) -> &Bytes {
        self.forms()
            .deflated_json
            .get_or_init(|| counted_compress(self.0.json.as_bytes()))
    }

    /// The MessagePack form, made by the first caller.
    pub fn msgpack(&self) -> Option<&Bytes> {
        self.forms()
            .msgpack
            .get_or_init(|| {
                MSGPACK_FRAMES.fetch_add(1, Ordering::Relaxed);
                msgpack::from_json(self.as_str()).map(Bytes::from)
            })
            .as_ref()
    }

    /// The MessagePack payload compressed, made by the first caller.
    fn deflated_msgpack(&self, plain: &Bytes) -> &Bytes {
        self.forms()
            .deflated_msgpack
            .get_or_init(|| counted_compress(plain))
    }

    /// What a socket with `encoding` is sent: the payload, the first byte
    /// of its frame header (FIN, RSV1, opcode) and the payload's length
    /// before compression. Inlined for the plain JSON socket, the common
    /// case on the path of every delivery.
    #[inline]
    pub fn for_wire(&self, encoding: Encoding) -> (Bytes, u8, usize) {
        if encoding == Encoding::default() {
            return (self.json_bytes(), TEXT_HEAD, self.0.json.len());
        }
        self.other_form(encoding)
    }

    fn other_form(&self, encoding: Encoding) -> (Bytes, u8, usize) {
        let (plain, head) = match encoding.format {
            Format::MsgPack => match self.msgpack() {
                Some(m) => (m.clone(), BINARY_HEAD),
                None => (self.json_bytes(), TEXT_HEAD),
            },
            Format::Json => (self.json_bytes(), TEXT_HEAD),
        };
        let len = plain.len();
        if let Some(d) = encoding.deflate {
            if len >= usize::from(d.min_bytes) && len <= d.max_bytes() {
                let packed = match head {
                    BINARY_HEAD => self.deflated_msgpack(&plain),
                    _ => self.deflated_json(),
                };
                // What compression would not shrink goes as it is.
                if packed.len() < len {
                    return (packed.clone(), head | RSV1, len);
                }
            }
        }
        (plain, head, len)
    }

    /// Whether two handles share one frame (the same encoding, not only
    /// equal text).
    pub fn ptr_eq(&self, other: &Frame) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Compresses a payload, counted (once per frame and form).
fn counted_compress(plain: &[u8]) -> Bytes {
    let packed = deflate::compress(plain);
    COMPRESSED_FRAMES.fetch_add(1, Ordering::Relaxed);
    COMPRESSED_IN_BYTES.fetch_add(plain.len() as u64, Ordering::Relaxed);
    COMPRESSED_OUT_BYTES.fetch_add(packed.len() as u64, Ordering::Relaxed);
    packed
}

impl std::ops::Deref for Frame {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Frame {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Frame) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Frame {}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame::of(Utf8Bytes::from(s))
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame::of(Utf8Bytes::from(s))
    }
}

impl From<&String> for Frame {
    fn from(s: &String) -> Frame {
        Frame::from(s.as_str())
    }
}

impl From<Frame> for Bytes {
    fn from(f: Frame) -> Bytes {
        f.json_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Encoding = Encoding {
        format: Format::Json,
        deflate: Some(Deflate {
            min_bytes: 64,
            window_bits: 15,
        }),
    };

    #[test]
    fn every_subscriber_shares_one_compressed_buffer() {
        let text = format!(
            r#"{{"type":"market_update","symbol":"BTC-USD","note":"{}"}}"#,
            "ab".repeat(200)
        );
        let frame = Frame::from(text.clone());
        let (first, head, plain) = frame.for_wire(ON);
        assert_eq!((head, plain), (TEXT_HEAD | RSV1, text.len()));
        // A thousand subscribers (clones of the handle, as fanout hands out)
        // get the very same bytes: one buffer, compressed once.
        for _ in 0..1000 {
            let (bytes, _, _) = frame.clone().for_wire(ON);
            assert_eq!(bytes.as_ptr(), first.as_ptr());
        }
        assert!(std::ptr::eq(frame.deflated_json(), frame.clone().deflated_json()));
        assert_eq!(super::deflate::inflate(&first, 1 << 20).unwrap(), text.as_bytes());
        // A socket without deflate gets the JSON text itself, no copy.
        let (plain_bytes, head, _) = frame.for_wire(Encoding::default());
        assert_eq!((head, plain_bytes.as_ptr()), (TEXT_HEAD, frame.as_str().as_ptr()));
    }

    #[test]
    fn small_large_and_incompressible_payloads_go_as_they_are() {
        let small = Frame::from(r#"{"type":"pong"}"#);
        assert_eq!(small.for_wire(ON).1, TEXT_HEAD);
        assert!(small.0.forms.get().is_none(), "nothing made for a small frame");
        let big = Frame::from("x".repeat(5000));
        let window = Encoding {
            format: Format::Json,
            deflate: Some(Deflate {
                min_bytes: 64,
                window_bits: 10,
            }),
        };
        assert_eq!(big.for_wire(window).1, TEXT_HEAD);
        // Ten distinct letters do not shrink: they go as they are.
        let tiny = Encoding {
            format: Format::Json,
            deflate: Some(Deflate {
                min_bytes: 0,
                window_bits: 15,
            }),
        };
        let (bytes, head, _) = Frame::from("abcdefghij").for_wire(tiny);
        assert_eq!((head, &bytes[..]), (TEXT_HEAD, &b"abcdefghij"[..]));
    }

    #[test]
    fn msgpack_is_made_once_per_frame_and_compressed_once_too() {
        let text = format!(
            r#"{{"type":"new_signal","confidence_score":85,"entry_price":45000.0,"note":"{}"}}"#,
            "cd".repeat(200)
        );
        let frame = Frame::from(text);
        let packs = Encoding {
            format: Format::MsgPack,
            deflate: None,
        };
        let (first, head, _) = frame.for_wire(packs);
        assert_eq!(head, BINARY_HEAD);
        let back = msgpack::decode(&first).unwrap();
        assert_eq!(back["confidence_score"].as_u64(), Some(85));
        assert_eq!(back["entry_price"].as_f64(), Some(45000.0));
        assert!(back["entry_price"].is_f64());
        for _ in 0..100 {
            assert_eq!(frame.clone().for_wire(packs).0.as_ptr(), first.as_ptr());
        }
        let both = Encoding {
            format: Format::MsgPack,
            ..ON
        };
        let (packed, head, plain) = frame.for_wire(both);
        assert_eq!((head, plain), (BINARY_HEAD | RSV1, first.len()));
        assert_eq!(frame.for_wire(both).0.as_ptr(), packed.as_ptr());
        assert_eq!(deflate::inflate(&packed, 1 << 20).unwrap(), &first[..]);
        // The JSON sockets of the same frame still get the text.
        assert_eq!(frame.for_wire(Encoding::default()).1, TEXT_HEAD);
    }
}
