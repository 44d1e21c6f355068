//! JSON string escaping for the encoders, which write JSON by hand to avoid
//! building a value per event.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each of the eight bytes of `w` (little-endian) that
/// must be escaped: below 0x20, a quote or a backslash (the classic "has a
/// zero / less-than byte" tests). A borrow can flag bytes after a true one,
/// never before, so the lowest flag is always a byte to escape.
fn escapes(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
}

/// Appends `s` as a quoted JSON string (RFC 8259 escapes).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time, straight to the next byte to escape.
        if let Some(word) = bytes.get(i..i + 8) {
            let found = escapes(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            if found == 0 {
                i += 8;
                continue;
            }
            i += (found.trailing_zeros() / 8) as usize;
        }
        let b = bytes[i];
        i += 1;
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i - 1]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        plain = i;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_serde_json() {
        for s in [
            "plain",
            "",
            "quote \" and \\ backslash",
            "tab\tnew\nline\r",
            "\u{0}\u{1f} control",
            "unicode é ✓ 🦀",
            "a longer line, plain for a while, then \" a quote past eight bytes",
            "0123456789abcdef\\0123456789abcdef\u{1f}0123456\n",
            "1234567\"",
            "12345678\t",
            "ééééééééééé \u{7f} DEL is not escaped ~~~~~~~~",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(back, s);
            assert_eq!(
                String::from_utf8(out).expect("utf-8"),
                serde_json::to_string(s).expect("encodes")
            );
        }
    }
}
