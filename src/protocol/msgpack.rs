//! MessagePack (PROTOCOL.md 5.3): the JSON objects of the protocol as
//! MessagePack maps with the same fields and values. Integers stay
//! integers (the smallest MessagePack int that holds them), every other
//! number is a 64-bit float, strings are strings and `null` is nil.
//!
//! Written on `rmp`'s marker-level functions rather than through serde,
//! so that the number types are exactly those and decoding a client's
//! bytes has the same depth guard as JSON ([`super::MAX_JSON_DEPTH`]) and
//! never allocates more than the frame could hold. Pure functions, no I/O.

use serde_json::{Map, Number, Value};

use super::MAX_JSON_DEPTH;

/// Appends `v` as one MessagePack value.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail; lengths come from JSON values that
    // fit in memory, far below MessagePack's 2^32 limit for a frame.
    match v {
        Value::Null => {
            let _ = rmp::encode::write_nil(out);
        }
        Value::Bool(b) => {
            let _ = rmp::encode::write_bool(out, *b);
        }
        Value::Number(n) => {
            let _ = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => rmp::encode::write_uint(out, u).map(drop),
                (None, Some(i)) => rmp::encode::write_sint(out, i).map(drop),
                _ => rmp::encode::write_f64(out, n.as_f64().unwrap_or(0.0)),
            };
        }
        Value::String(s) => {
            let _ = rmp::encode::write_str(out, s);
        }
        Value::Array(items) => {
            let _ = rmp::encode::write_array_len(out, items.len() as u32);
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(map) => {
            let _ = rmp::encode::write_map_len(out, map.len() as u32);
            for (k, v) in map {
                let _ = rmp::encode::write_str(out, k);
                encode(v, out);
            }
        }
    }
}

/// The MessagePack form of a JSON text the server encoded itself.
pub fn from_json(text: &str) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_str(text).ok()?;
    let mut out = Vec::with_capacity(text.len());
    encode(&value, &mut out);
    Some(out)
}

/// Decodes one client frame holding exactly one MessagePack value. The
/// error is a sentence for the client (sent as `invalid_json`).
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut rd = Reader { bytes, at: 0 };
    let v = rd.value(0)?;
    if rd.at != bytes.len() {
        return Err("a frame holds one MessagePack value; bytes follow it".into());
    }
    Ok(v)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err("truncated MessagePack".into());
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn int(&mut self, n: usize) -> Result<i64, String> {
        let raw = self.uint(n)?;
        let shift = 64 - 8 * n as u32;
        // Sign-extends the n-byte two's-complement value.
        Ok(((raw << shift) as i64) >> shift)
    }

    fn float(f: f64) -> Result<Value, String> {
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| "NaN and infinities are not numbers of the protocol".into())
    }

    fn string(&mut self, len: usize) -> Result<Value, String> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(|s| Value::String(s.to_string()))
            .map_err(|_| "a MessagePack string is not UTF-8".into())
    }

    /// A length that the rest of the frame could hold, `per` bytes each at least.
    fn count(&mut self, n: usize, per: usize) -> Result<usize, String> {
        let len = self.uint(n)? as usize;
        if len.saturating_mul(per) > self.bytes.len() - self.at {
            return Err("truncated MessagePack".into());
        }
        Ok(len)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_JSON_DEPTH {
            return Err(format!("nested deeper than {MAX_JSON_DEPTH} levels"));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Value::from(marker),
            0xe0..=0xff => Value::from(marker as i8),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xcc => Value::from(self.uint(1)?),
            0xcd => Value::from(self.uint(2)?),
            0xce => Value::from(self.uint(4)?),
            0xcf => Value::from(self.uint(8)?),
            0xd0 => Value::from(self.int(1)?),
            0xd1 => Value::from(self.int(2)?),
            0xd2 => Value::from(self.int(4)?),
            0xd3 => Value::from(self.int(8)?),
            0xca => Self::float(f64::from(f32::from_bits(self.uint(4)? as u32)))?,
            0xcb => Self::float(f64::from_bits(self.uint(8)?))?,
            0xa0..=0xbf => self.string(usize::from(marker & 0x1f))?,
            0xd9 => {
                let n = self.uint(1)? as usize;
                self.string(n)?
            }
            0xda => {
                let n = self.uint(2)? as usize;
                self.string(n)?
            }
            0xdb => {
                let n = self.uint(4)? as usize;
                self.string(n)?
            }
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth)?,
            0xdc => {
                let n = self.count(2, 1)?;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.count(4, 1)?;
                self.array(n, depth)?
            }
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0xde => {
                let n = self.count(2, 2)?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.count(4, 2)?;
                self.map(n, depth)?
            }
            // bin, ext and the reserved 0xc1: no JSON value has them.
            _ => return Err("MessagePack binary, extension and reserved types are not accepted".into()),
        })
    }

    fn array(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        let mut items = Vec::with_capacity(len.min(self.bytes.len() - self.at));
        for _ in 0..len {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, String> {
        let mut map = Map::new();
        for _ in 0..len {
            let Value::String(key) = self.value(depth + 1)? else {
                return Err("MessagePack map keys must be strings".into());
            };
            let v = self.value(depth + 1)?;
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_stay_integers_and_other_numbers_are_f64() {
        let v = json!({"type": "market_update", "price": 45000.0, "volume": 1000000, "neg": -5,
                       "big": u64::MAX, "min": i64::MIN, "half": 0.5, "n": null, "ok": true,
                       "list": [1, "a", [], {}], "s": "é".repeat(40)});
        let mut out = Vec::new();
        encode(&v, &mut out);
        assert_eq!(decode(&out).unwrap(), v);
        // 45000.0 is a float: marker 0xcb and 8 bytes, never an int or f32.
        let mut price = Vec::new();
        encode(&json!(45000.0), &mut price);
        assert_eq!(price[0], 0xcb);
        let mut volume = Vec::new();
        encode(&json!(1000000), &mut volume);
        assert_eq!(volume[0], 0xce);
        assert_eq!(from_json(r#"{"a":1}"#).unwrap(), [0x81, 0xa1, b'a', 0x01]);
    }

    #[test]
    fn hostile_bytes_are_refused_without_panic_or_big_allocations() {
        assert!(
            decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "a huge array length"
        );
        assert!(
            decode(&[0xdf, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "a huge map length"
        );
        assert!(decode(&[0xdb, 0xff, 0xff, 0xff, 0xff]).is_err(), "a huge string");
        assert!(decode(&[0xc4, 0x01, 0x00]).is_err(), "bin");
        assert!(decode(&[0x81, 0x01, 0x01]).is_err(), "an integer key");
        assert!(decode(&[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]).is_err(), "NaN");
        assert!(decode(&[0xc0, 0xc0]).is_err(), "two values");
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x91; 200]).is_err(), "too deep");
        for n in 0..=255u8 {
            let _ = decode(&[n]);
            let _ = decode(&[n, 0xff, 0x00, 0x91]);
        }
        assert_eq!(decode(&[0xd0, 0x80]).unwrap(), json!(-128));
        assert_eq!(decode(&[0xca, 0x3f, 0x00, 0x00, 0x00]).unwrap(), json!(0.5));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
