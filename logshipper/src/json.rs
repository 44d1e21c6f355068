//! JSON string escaping for the encoders, which write JSON by hand to avoid
//! building a value per event.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each of the eight bytes of `w` (little-endian) that
/// must be escaped: below 0x20, a quote or a backslash (the classic "has a
/// zero / less-than byte" tests). A borrow can flag bytes after a true one,
/// never before, so the lowest flag is always a byte to escape, and the
/// result is zero exactly when no byte must be.
fn escapes(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    below_space | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')))
}

/// The longest escape of one byte: `\u00XX`.
const MAX_ESCAPE: usize = 6;

/// The stage's size: room for a word escaped at worst, with the eight
/// bytes a step stores past what it keeps, after `FLUSH_AT` bytes.
const STAGE: usize = FLUSH_AT + 8 * MAX_ESCAPE + 8;

/// How full the stage may be before a word is escaped into it.
const FLUSH_AT: usize = 104;

/// Eight spaces: filler that needs no escape.
const SPACES: u64 = ONES * 0x20;

/// Appends `s` as a quoted JSON string (RFC 8259 escapes).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // Escaped text goes through a small buffer whose position stays in a
    // register, and on to `out` a hundred bytes at a time: appending to
    // `out` directly reloads and stores its length at every step.
    let mut stage = [0u8; STAGE];
    stage[0] = b'"';
    let mut pos = 1;
    let mut words = s.as_bytes().chunks_exact(8);
    for word in &mut words {
        if pos > FLUSH_AT {
            out.extend_from_slice(&stage[..pos]);
            pos = 0;
        }
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        pos = push_word(&mut stage, pos, word, 8);
    }
    if pos > FLUSH_AT {
        out.extend_from_slice(&stage[..pos]);
        pos = 0;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut word = SPACES.to_le_bytes();
        word[..tail.len()].copy_from_slice(tail);
        pos = push_word(&mut stage, pos, u64::from_le_bytes(word), tail.len());
    }
    stage[pos] = b'"';
    out.extend_from_slice(&stage[..=pos]);
}

/// Escapes the first `len` bytes of `word` (little-endian; the others are
/// spaces) into `stage` at `pos`; returns the position after them. Every
/// step stores all eight bytes and keeps those up to the next byte to
/// escape: stores of a known size, not a copy per run of plain bytes.
#[inline(always)]
fn push_word(stage: &mut [u8; STAGE], mut pos: usize, mut word: u64, mut len: usize) -> usize {
    loop {
        let found = escapes(word);
        stage[pos..pos + 8].copy_from_slice(&word.to_le_bytes());
        if found == 0 {
            return pos + len;
        }
        // Spaces never need escaping, so the byte found is one of the `len`.
        let kept = (found.trailing_zeros() / 8) as usize;
        pos += kept;
        let (escape, escape_len) = escape((word >> (8 * kept)) as u8);
        stage[pos..pos + MAX_ESCAPE].copy_from_slice(&escape);
        pos += escape_len;
        let used = kept + 1;
        len -= used;
        if len == 0 {
            return pos;
        }
        word = (word >> (8 * used)) | (SPACES << (8 * (8 - used)));
    }
}

/// The escape of a byte that must be escaped in a JSON string, and its length.
fn escape(b: u8) -> ([u8; MAX_ESCAPE], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = |c: u8| ([b'\\', c, 0, 0, 0, 0], 2);
    match b {
        b'"' => short(b'"'),
        b'\\' => short(b'\\'),
        b'\n' => short(b'n'),
        b'\r' => short(b'r'),
        b'\t' => short(b't'),
        _ => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            6,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_escape_at_every_position_of_a_word() {
        for len in 0..20 {
            for at in 0..len {
                for special in ["\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1f}", "é", "~"] {
                    let mut s = "a".repeat(at);
                    s.push_str(special);
                    // A second escape right after, and one further on.
                    s.push('"');
                    s.push_str(&"b".repeat(len - at));
                    s.push('\\');
                    let mut out = Vec::new();
                    push_str(&mut out, &s);
                    assert_eq!(
                        String::from_utf8(out).expect("utf-8"),
                        serde_json::to_string(&s).expect("encodes"),
                        "{s:?}"
                    );
                }
            }
        }
    }

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
            &"a\"b\\c\u{1}d é ".repeat(100),
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
