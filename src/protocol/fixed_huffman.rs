//! A small payload deflated in one block of fixed Huffman codes (RFC 1951
//! 3.2.6) with a greedy LZ77 pass, for permessage-deflate's small frames.
//!
//! miniz_oxide's compressor is reset for every message (no context
//! takeover), and its reset rewrites some 370 KiB of tables and buffers:
//! about 20 µs, a hundred times what compressing a 200-byte tick takes, and
//! paid once per broadcast. For such payloads zlib itself picks fixed codes
//! (a dynamic block's code tables cost more than they save), so this
//! encoder gives about the same bytes for the cost of the work: its only
//! state is a 16 KiB hash table per thread, which is never cleared (each
//! message's positions are offset past the last one's, so older entries
//! simply fail the range check). Pure functions over bytes.

use std::cell::RefCell;

/// Hash table size: 4096 slots, plenty for payloads of a few KiB.
const HASH_BITS: u32 = 12;
/// The shortest match deflate has (the hash covers 3 bytes).
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const WINDOW: usize = 32 * 1024;
/// Candidates compared per position, newest first.
const CHAIN: usize = 16;

/// Each fixed literal/length code, bit-reversed for an LSB-first stream,
/// with its length (RFC 1951 3.2.6).
const LITLEN: [(u16, u8); 288] = litlen_codes();

const fn reversed(code: u32, len: u32) -> u32 {
    let mut r = 0;
    let mut i = 0;
    while i < len {
        r |= ((code >> i) & 1) << (len - 1 - i);
        i += 1;
    }
    r
}

const fn litlen_codes() -> [(u16, u8); 288] {
    let mut table = [(0u16, 0u8); 288];
    let mut v = 0u32;
    while v < 288 {
        let (code, len) = if v < 144 {
            (0x30 + v, 8)
        } else if v < 256 {
            (0x190 + v - 144, 9)
        } else if v < 280 {
            (v - 256, 7)
        } else {
            (0xc0 + v - 280, 8)
        };
        table[v as usize] = (reversed(code, len) as u16, len as u8);
        v += 1;
    }
    table
}

/// Bits written least significant first, as deflate packs them.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    #[inline]
    fn put(&mut self, bits: u32, count: u32) {
        self.acc |= u64::from(bits) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    #[inline]
    fn symbol(&mut self, v: usize) {
        let (code, len) = LITLEN[v];
        self.put(u32::from(code), u32::from(len));
    }

    /// A match of `len` (3..=258) bytes `dist` (1..=32768) back.
    #[inline]
    fn copy(&mut self, len: usize, dist: usize) {
        let l = (len - 3) as u32;
        if len == MAX_MATCH {
            self.symbol(285);
        } else if l < 8 {
            self.symbol(257 + l as usize);
        } else {
            let top = 31 - l.leading_zeros();
            let extra = top - 2;
            self.symbol((257 + 4 * (top - 1) + ((l >> extra) & 3)) as usize);
            self.put(l & ((1 << extra) - 1), extra);
        }
        let d = (dist - 1) as u32;
        if d < 4 {
            self.put(reversed(d, 5), 5);
        } else {
            let top = 31 - d.leading_zeros();
            let extra = top - 1;
            self.put(reversed(2 * top + ((d >> extra) & 1), 5), 5);
            self.put(d & ((1 << extra) - 1), extra);
        }
    }
}

/// Where each 3-byte sequence was last seen, as `offset + position`, and
/// for each position of the message the one before it with the same hash.
struct Matcher {
    table: Box<[u32; 1 << HASH_BITS]>,
    /// Grown to the longest message compressed; only entries of the
    /// current message are ever read.
    prev: Vec<u32>,
    /// Added to the positions of the current message; entries below it
    /// belong to earlier messages.
    offset: u32,
}

thread_local! {
    static MATCHER: RefCell<Matcher> = RefCell::new(Matcher {
        table: Box::new([0; 1 << HASH_BITS]),
        prev: Vec::new(),
        offset: 1,
    });
}

#[inline]
fn hash(data: &[u8], i: usize) -> usize {
    let v = u32::from(data[i]) | u32::from(data[i + 1]) << 8 | u32::from(data[i + 2]) << 16;
    (v.wrapping_mul(0x9e37_79b1) >> (32 - HASH_BITS)) as usize
}

impl Matcher {
    /// The match of `input[i..]` with where its first bytes were last
    /// seen in this message, `(length, distance)`, length 0 for none; and
    /// remembers `i` as the latest place of those bytes.
    #[inline]
    fn longest(&mut self, input: &[u8], i: usize) -> (usize, usize) {
        let mut seen = self.insert(input, i);
        let max = (input.len() - i).min(MAX_MATCH);
        let (mut best_len, mut best_dist) = (0, 0);
        for _ in 0..CHAIN {
            if seen < self.offset {
                break;
            }
            let at = (seen - self.offset) as usize;
            let dist = i - at;
            if dist > WINDOW {
                break;
            }
            // Only a candidate that beats the best so far is worth comparing.
            if input[at + best_len.min(max - 1)] == input[i + best_len.min(max - 1)] {
                let mut len = 0;
                while len < max && input[at + len] == input[i + len] {
                    len += 1;
                }
                if len > best_len && len >= MIN_MATCH {
                    (best_len, best_dist) = (len, dist);
                    if len == max {
                        break;
                    }
                }
            }
            seen = self.prev[at];
        }
        // A far 3-byte match costs more bits than its literals (zlib's TOO_FAR).
        if best_len == MIN_MATCH && best_dist > 4096 {
            return (0, 0);
        }
        (best_len, best_dist)
    }

    /// Makes `i` the latest place of its 3 bytes; returns the one before.
    #[inline]
    fn insert(&mut self, input: &[u8], i: usize) -> u32 {
        let h = hash(input, i);
        let seen = self.table[h];
        self.prev[i] = seen;
        self.table[h] = self.offset + i as u32;
        seen
    }

    /// Remembers the positions `from..to` (inside a match).
    #[inline]
    fn remember(&mut self, input: &[u8], from: usize, to: usize) {
        for j in from..to.min(input.len() + 1 - MIN_MATCH) {
            self.insert(input, j);
        }
    }
}

/// `input` as one permessage-deflate payload: a fixed-code block and the
/// sync flush's empty stored block, with its `00 00 ff ff` left off.
pub fn compress(input: &[u8]) -> Vec<u8> {
    MATCHER.with(|m| {
        let mut m = m.borrow_mut();
        let m = &mut *m;
        let n = input.len();
        if u64::from(m.offset) + n as u64 + 1 >= u64::from(u32::MAX) {
            m.table.fill(0);
            m.offset = 1;
        }
        if m.prev.len() < n {
            m.prev.resize(n, 0);
        }
        let mut bits = Bits {
            out: Vec::with_capacity(n + n / 8 + 16),
            acc: 0,
            n: 0,
        };
        // BFINAL 0, BTYPE 01 (fixed codes).
        bits.put(0b010, 3);
        let mut i = 0;
        while i + MIN_MATCH <= n {
            let (len, dist) = m.longest(input, i);
            if len == 0 {
                bits.symbol(usize::from(input[i]));
                i += 1;
                continue;
            }
            // One step of lazy matching: a longer match one byte on wins.
            if len < 32 && i + 1 + MIN_MATCH <= n {
                let (next_len, next_dist) = m.longest(input, i + 1);
                if next_len > len {
                    bits.symbol(usize::from(input[i]));
                    bits.copy(next_len, next_dist);
                    m.remember(input, i + 2, i + 1 + next_len);
                    i += 1 + next_len;
                    continue;
                }
                bits.copy(len, dist);
                m.remember(input, i + 2, i + len);
            } else {
                bits.copy(len, dist);
                m.remember(input, i + 1, i + len);
            }
            i += len;
        }
        for &b in &input[i..] {
            bits.symbol(usize::from(b));
        }
        bits.symbol(256);
        // The sync flush: an empty stored block's header, then byte
        // alignment (its LEN and NLEN, 00 00 ff ff, are what RFC 7692 removes).
        bits.put(0, 3);
        if bits.n > 0 {
            bits.put(0, 8 - bits.n);
        }
        m.offset += n as u32 + 1;
        bits.out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::deflate::inflate;
    use flate2::{Decompress, FlushDecompress};

    /// Inflated by zlib's own rules (flate2), as a browser would.
    fn inflate_flate2(payload: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut data = payload.to_vec();
        data.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(data.len() * 8 + 1024);
        loop {
            let before = d.total_in() as usize;
            d.decompress_vec(&data[before..], &mut out, FlushDecompress::Sync)
                .expect("valid deflate");
            if d.total_in() as usize == data.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity());
        }
    }

    fn round_trip(input: &[u8]) {
        let packed = compress(input);
        assert_eq!(inflate_flate2(&packed), input);
        assert_eq!(inflate(&packed, input.len()).unwrap(), input);
    }

    #[test]
    fn ticks_round_trip_and_shrink_like_zlib() {
        let tick = br#"{"type":"market_update","symbol":"BTC-USD","price":45000.25,"change":2.5,"volume":1000000,"timestamp":"2024-01-15T10:30:00.123456Z","seq":1042}"#;
        for _ in 0..3 {
            // The same bytes again: nothing of the last message is used.
            round_trip(tick);
        }
        let ours = compress(tick).len();
        let zlib = crate::protocol::deflate::compress_with_zlib(tick).len();
        assert!(ours <= zlib + zlib / 10, "{ours} B against zlib's {zlib} B");
    }

    #[test]
    fn edge_lengths_distances_and_inputs_round_trip() {
        round_trip(b"");
        round_trip(b"abc");
        round_trip(&[b'a'; 1000]);
        round_trip(&[b'a'; MAX_MATCH + 3]);
        let mut far = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>();
        far.extend_from_within(..300);
        round_trip(&far);
        let words = b"bid ask depth level price size ".repeat(90);
        round_trip(&words);
        assert!(compress(&words).len() * 10 < words.len());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_round_trip(bytes in proptest::collection::vec(0u8..6, 0..3000)) {
            round_trip(&bytes);
        }

        #[test]
        fn any_text_round_trip(text in "[a-d\"{}:,0-9]{0,2000}") {
            round_trip(text.as_bytes());
        }
    }
}
