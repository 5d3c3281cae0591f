//! A field scanner for the server's JSON messages: it finds a few top-level
//! fields (`type`, `seq`, `t_ns`, ...) in one pass over the bytes, skipping
//! string contents and nested values, and never builds a tree or allocates.
//! Subscribers run it on every frame, so it reads only up to the last field
//! it was asked for. It trusts the server to send valid JSON: on anything
//! else it returns what it found so far, never panics.

/// The raw bytes of a scalar value: a string with its quotes, or a number,
/// `true`, `false` or `null` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(pub &'a [u8]);

impl<'a> Raw<'a> {
    /// The contents of a string value, escapes left as they are.
    pub fn as_str(self) -> Option<&'a [u8]> {
        match self.0 {
            [b'"', inner @ .., b'"'] => Some(inner),
            _ => None,
        }
    }

    /// A non-negative integer value.
    pub fn as_u64(self) -> Option<u64> {
        if self.0.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &b in self.0 {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        Some(n)
    }
}

/// Finds the top-level fields named in `keys` in the JSON object `json`;
/// slot `i` of the result holds the value of `keys[i]`. Fields whose value is
/// an object or array are reported as absent. The first occurrence wins.
pub fn top_level<'a, const N: usize>(json: &'a [u8], keys: [&[u8]; N]) -> [Option<Raw<'a>>; N] {
    let mut found: [Option<Raw<'a>>; N] = [None; N];
    let mut missing = N;
    let mut depth = 0usize;
    // At depth 1: the slot of the key just read, while its value is pending.
    let mut wanted: Option<usize> = None;
    let mut expecting_key = false;
    let mut i = 0;
    while i < json.len() && missing > 0 {
        let b = json[i];
        match b {
            b'"' => {
                let Some(end) = string_end(json, i) else {
                    break;
                };
                if depth == 1 {
                    if expecting_key {
                        let key = &json[i + 1..end];
                        wanted = keys
                            .iter()
                            .position(|k| *k == key)
                            .filter(|&slot| found[slot].is_none());
                        expecting_key = false;
                    } else if let Some(slot) = wanted.take() {
                        found[slot] = Some(Raw(&json[i..=end]));
                        missing -= 1;
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                if depth == 1 {
                    wanted = None;
                }
                depth += 1;
                expecting_key = b == b'{' && depth == 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expecting_key = true,
            b':' | b' ' | b'\t' | b'\n' | b'\r' | b',' => {}
            _ => {
                let start = i;
                while i < json.len() && !matches!(json[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    i += 1;
                }
                if depth == 1 {
                    if let Some(slot) = wanted.take() {
                        found[slot] = Some(Raw(&json[start..i]));
                        missing -= 1;
                    }
                }
                continue;
            }
        }
        i += 1;
    }
    found
}

/// The index of the quote closing the string that opens at `open`.
fn string_end(json: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < json.len() {
        match json[i] {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKET: &[u8] = br#"{"type":"market_update","symbol":"BTC-USD","price":45000.0,"change":2.5,"volume":1000000,"t_ns":1700000000123456789,"timestamp":"2024-01-15T10:30:00Z","seq":1042}"#;

    #[test]
    fn finds_type_seq_and_timestamp() {
        let [ty, seq, t_ns] = top_level(MARKET, [b"type", b"seq", b"t_ns"]);
        assert_eq!(ty.and_then(Raw::as_str), Some(&b"market_update"[..]));
        assert_eq!(seq.and_then(Raw::as_u64), Some(1042));
        assert_eq!(t_ns.and_then(Raw::as_u64), Some(1_700_000_000_123_456_789));
    }

    #[test]
    fn tolerates_whitespace() {
        let json = b"{ \"type\" : \"pong\" ,\n \"seq\"\t: 7 }";
        let [ty, seq] = top_level(json, [b"type", b"seq"]);
        assert_eq!(ty, Some(Raw(b"\"pong\"")));
        assert_eq!(seq.and_then(Raw::as_u64), Some(7));
    }

    #[test]
    fn ignores_nested_fields_and_look_alikes_inside_strings() {
        let json = br#"{"notifications":[{"type":"new_notification","seq":3}],"message":"a \"seq\":9, \"type\":\"x\"","since":{"seq":1},"type":"unread_notifications"}"#;
        let [ty, seq] = top_level(json, [b"type", b"seq"]);
        assert_eq!(ty.and_then(Raw::as_str), Some(&b"unread_notifications"[..]));
        assert_eq!(seq, None);
    }

    #[test]
    fn values_equal_to_a_key_are_not_keys() {
        let json = br#"{"symbol":"seq","seq":5}"#;
        assert_eq!(top_level(json, [b"seq"])[0].and_then(Raw::as_u64), Some(5));
    }

    #[test]
    fn first_occurrence_wins_and_missing_fields_are_none() {
        let json = br#"{"seq":1,"seq":2}"#;
        let [seq, t_ns] = top_level(json, [b"seq", b"t_ns"]);
        assert_eq!(seq.and_then(Raw::as_u64), Some(1));
        assert_eq!(t_ns, None);
    }

    #[test]
    fn non_integers_are_not_u64() {
        for raw in [
            &b"-1"[..],
            b"1.5",
            b"1e3",
            b"\"12\"",
            b"",
            b"99999999999999999999999",
        ] {
            assert_eq!(Raw(raw).as_u64(), None, "{}", String::from_utf8_lossy(raw));
        }
        assert_eq!(Raw(b"null").as_str(), None);
    }

    #[test]
    fn garbage_does_not_panic() {
        for json in [
            &b""[..],
            b"{",
            b"{\"type",
            b"{\"type\":",
            b"{\"type\":\"unterminated",
            b"}}}]]",
            b"[1,2,{\"seq\":1}]",
            b"{\"a\\",
            b"\"seq\":1",
        ] {
            let _ = top_level(json, [b"type", b"seq"]);
        }
        assert_eq!(top_level(b"[{\"seq\":1}]", [b"seq"])[0], None);
    }
}
