//! The MessagePack twin of [`crate::scan`]: finds `type`, `seq` and `t_ns`
//! at the top level of one MessagePack map (a subscriber's frames with
//! `--format msgpack`), skipping every other value without decoding it or
//! allocating. It trusts the server to send valid MessagePack: on anything
//! else it returns what it found so far, never panics.

/// The fields a subscriber reads of every message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub ty: Option<&'a [u8]>,
    pub seq: Option<u64>,
    pub t_ns: Option<u64>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
    }

    /// A string's bytes, or `None` (and the value skipped) for anything else.
    fn str_or_skip(&mut self) -> Option<Option<&'a [u8]>> {
        let m = *self.b.get(self.at)?;
        let len = match m {
            0xa0..=0xbf => {
                self.at += 1;
                usize::from(m & 0x1f)
            }
            0xd9 => {
                self.at += 1;
                self.uint(1)? as usize
            }
            0xda => {
                self.at += 1;
                self.uint(2)? as usize
            }
            0xdb => {
                self.at += 1;
                self.uint(4)? as usize
            }
            _ => {
                self.skip(0)?;
                return Some(None);
            }
        };
        Some(Some(self.take(len)?))
    }

    /// A non-negative integer, or `None` (and the value skipped) otherwise.
    fn u64_or_skip(&mut self) -> Option<Option<u64>> {
        let m = *self.b.get(self.at)?;
        let v = match m {
            0x00..=0x7f => {
                self.at += 1;
                u64::from(m)
            }
            0xcc..=0xcf => {
                self.at += 1;
                self.uint(1 << (m - 0xcc))?
            }
            _ => {
                self.skip(0)?;
                return Some(None);
            }
        };
        Some(Some(v))
    }

    /// Skips one value of any type (nested at most 64 deep).
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > 64 {
            return None;
        }
        let m = *self.take(1)?.first()?;
        let (fixed, items) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(m & 0x0f)),
            0x90..=0x9f => (0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (usize::from(m & 0x1f), 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 | 0xca => (4, 0),
            0xcf | 0xd3 | 0xcb => (8, 0),
            0xd9 | 0xc4 => (self.uint(1)? as usize, 0),
            0xda | 0xc5 => (self.uint(2)? as usize, 0),
            0xdb | 0xc6 => (self.uint(4)? as usize, 0),
            0xdc => (0, self.uint(2)? as usize),
            0xdd => (0, self.uint(4)? as usize),
            0xde => (0, 2 * self.uint(2)? as usize),
            0xdf => (0, 2 * self.uint(4)? as usize),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xc7 => (self.uint(1)? as usize + 1, 0),
            0xc8 => (self.uint(2)? as usize + 1, 0),
            0xc9 => (self.uint(4)? as usize + 1, 0),
            _ => return None,
        };
        self.take(fixed)?;
        for _ in 0..items {
            self.skip(depth + 1)?;
        }
        Some(())
    }
}

/// The `type`, `seq` and `t_ns` of one MessagePack map.
pub fn fields(bytes: &[u8]) -> Fields<'_> {
    let mut out = Fields::default();
    let _ = scan_into(bytes, &mut out);
    out
}

fn scan_into<'a>(bytes: &'a [u8], out: &mut Fields<'a>) -> Option<()> {
    let mut c = Cursor { b: bytes, at: 0 };
    let m = *c.take(1)?.first()?;
    let len = match m {
        0x80..=0x8f => usize::from(m & 0x0f),
        0xde => c.uint(2)? as usize,
        0xdf => c.uint(4)? as usize,
        _ => return None,
    };
    for _ in 0..len {
        let key = c.str_or_skip()?;
        match key {
            Some(b"type") => out.ty = c.str_or_skip()?,
            Some(b"seq") => out.seq = c.u64_or_skip()?,
            Some(b"t_ns") => out.t_ns = c.u64_or_skip()?,
            _ => c.skip(0)?,
        }
        if out.ty.is_some() && out.seq.is_some() && out.t_ns.is_some() {
            break;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_three_fields_past_nested_values() {
        // {"type":"market_update","nested":{"a":[1,2.5,"x"]},"t_ns":1700000000000000000,"seq":300}
        let mut b = vec![0x84, 0xa4];
        b.extend_from_slice(b"type");
        b.push(0xad);
        b.extend_from_slice(b"market_update");
        b.push(0xa6);
        b.extend_from_slice(b"nested");
        b.extend_from_slice(&[0x81, 0xa1, b'a', 0x93, 0x01, 0xcb]);
        b.extend_from_slice(&2.5f64.to_be_bytes());
        b.extend_from_slice(&[0xa1, b'x', 0xa4]);
        b.extend_from_slice(b"t_ns");
        b.push(0xcf);
        b.extend_from_slice(&1_700_000_000_000_000_000u64.to_be_bytes());
        b.push(0xa3);
        b.extend_from_slice(b"seq");
        b.extend_from_slice(&[0xcd, 0x01, 0x2c]);
        assert_eq!(
            fields(&b),
            Fields {
                ty: Some(b"market_update"),
                seq: Some(300),
                t_ns: Some(1_700_000_000_000_000_000),
            }
        );
        for cut in 0..b.len() {
            let _ = fields(&b[..cut]);
        }
        assert_eq!(fields(&[0x91, 0x01]), Fields::default());
    }
}
