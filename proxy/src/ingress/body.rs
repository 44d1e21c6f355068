//! Message bodies: how long they are (framing), where a chunked body ends,
//! and whether its data stays within the request body limit.
//!
//! Bodies are passed through unchanged, chunk framing included; the scanner
//! only finds the end, and rejects malformed framing instead of guessing,
//! because a proxy that guesses differently from its upstream is how
//! request smuggling happens.

use std::ops::Range;

/// How the end of a body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a body cannot pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The chunked framing does not follow RFC 9112 §7.1.
    #[error("malformed chunked body")]
    Malformed,
    /// A chunk would take the body's data past its limit.
    #[error("body larger than allowed")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex size; `digits` so far.
    Size { digits: u8 },
    /// Skipping a chunk extension up to CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting LF after a trailer line.
    TrailerLf,
    /// Expecting the LF that ends the body.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Most bytes of chunk extensions and trailers one body may carry, all
/// together: they are no data, so only a sender abusing them needs more
/// (Node.js bounds chunk extensions alike).
pub const MAX_CHUNK_METADATA: u32 = 16 * 1024;

/// Finds the end of a chunked body in the bytes that pass through.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    remaining: u64,
    /// Bytes of data, chunk extensions and trailers the body may still
    /// carry.
    allowance: u64,
    /// Bytes of chunk extensions and trailers seen so far.
    metadata: u32,
    /// Whether a trailer line has begun.
    in_trailers: bool,
    /// Where trailer lines lay in the input of the last `scan`.
    trailers: Option<Range<usize>>,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::limited(u64::MAX)
    }
}

impl ChunkedScanner {
    /// A scanner refusing a body whose data, chunk extensions and trailers
    /// exceed `max` bytes, or whose extensions and trailers exceed
    /// `MAX_CHUNK_METADATA`. A chunk is refused by its size line, before
    /// any of its data passes.
    pub fn limited(max: u64) -> Self {
        Self {
            state: State::Size { digits: 0 },
            remaining: 0,
            allowance: max,
            metadata: 0,
            in_trailers: false,
            trailers: None,
        }
    }

    /// Where the trailer lines lay in the input of the last `feed` or
    /// `scan` (the final CRLF left out), for a forwarder that drops them.
    pub fn trailers(&self) -> Option<Range<usize>> {
        self.trailers.clone()
    }

    /// Counts one byte of a chunk extension or trailer, against both the
    /// body's limit and the bound on such bytes.
    fn metadata_byte(&mut self) -> Result<(), BodyError> {
        if self.allowance == 0 || self.metadata >= MAX_CHUNK_METADATA {
            return Err(BodyError::TooLarge);
        }
        self.allowance -= 1;
        self.metadata += 1;
        Ok(())
    }

    /// Whether the whole body has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `input`; returns how many of its bytes belong to the body
    /// (all of them, unless the body ends inside `input`).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        self.scan(input, |_| {})
    }

    /// Like `feed`, and hands each piece of chunk data (framing, extensions
    /// and trailers left out) to `data`, for a body re-framed for HTTP/2.
    pub fn scan(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        // Trailer lines this input carries start at 0 when an earlier one
        // had begun them and the final CRLF had not.
        let mut trailers = Range {
            start: (self.in_trailers && self.state != State::FinalLf && !self.done()).then_some(0),
            end: None,
        };
        self.trailers = None;
        let scanned = self.scan_framing(input, &mut data, &mut trailers);
        if let (Some(start), Ok(scanned)) = (trailers.start, &scanned) {
            // Up to the final CRLF when it came, else all that was scanned.
            let end = trailers.end.unwrap_or(*scanned);
            self.trailers = Some(start..end.max(start));
        }
        scanned
    }

    fn scan_framing(
        &mut self,
        input: &[u8],
        data: &mut impl FnMut(&[u8]),
        trailers: &mut Range<Option<usize>>,
    ) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size { digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        // Sixteen hex digits overflow u64: refuse, never wrap.
                        if digits >= 15 {
                            return Err(BodyError::Malformed);
                        }
                        let v = (b as char).to_digit(16).map_or(0, u64::from);
                        self.remaining = self.remaining * 16 + v;
                        self.state = State::Size { digits: digits + 1 };
                    }
                    b';' | b' ' | b'\t' if digits > 0 => {
                        self.metadata_byte()?;
                        self.state = State::Extension;
                    }
                    b'\r' if digits > 0 => self.state = State::SizeLf,
                    _ => return Err(BodyError::Malformed),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(BodyError::Malformed),
                    _ => self.metadata_byte()?,
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    if self.remaining > self.allowance {
                        return Err(BodyError::TooLarge);
                    }
                    self.allowance -= self.remaining;
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.remaining -= take as u64;
                    data(&input[i..i + take]);
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => match b {
                    b'\r' => {
                        trailers.end = Some(i);
                        self.state = State::FinalLf;
                    }
                    b'\n' => return Err(BodyError::Malformed),
                    _ => {
                        self.metadata_byte()?;
                        self.in_trailers = true;
                        trailers.start.get_or_insert(i);
                        self.state = State::Trailer;
                    }
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(BodyError::Malformed),
                    _ => self.metadata_byte()?,
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Tracks how much of a body is left, whatever its framing.
#[derive(Debug, Clone)]
pub enum BodyProgress {
    /// Bytes left of a sized body.
    Length(u64),
    /// A chunked body being scanned.
    Chunked(ChunkedScanner),
    /// A body that ends when the connection closes.
    UntilClose,
}

impl BodyProgress {
    /// Starts tracking a body of `framing`.
    pub fn new(framing: Framing) -> Self {
        Self::limited(framing, u64::MAX)
    }

    /// Starts tracking a body of `framing` whose data may not exceed `max`
    /// bytes. A declared length was checked against the limit with the
    /// head; a chunked body is checked chunk by chunk as it passes.
    pub fn limited(framing: Framing, max: u64) -> Self {
        match framing {
            Framing::Empty => Self::Length(0),
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(ChunkedScanner::limited(max)),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// Whether the body is complete.
    pub fn done(&self) -> bool {
        match self {
            Self::Length(n) => *n == 0,
            Self::Chunked(s) => s.done(),
            Self::UntilClose => false,
        }
    }

    /// How many bytes of `input` belong to the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        self.scan(input, |_| {})
    }

    /// Where a chunked body's trailer lines lay in the last input fed.
    pub fn trailers(&self) -> Option<Range<usize>> {
        match self {
            Self::Chunked(s) => s.trailers(),
            Self::Length(_) | Self::UntilClose => None,
        }
    }

    /// Like `feed`, and hands the body's data, without chunk framing, to
    /// `data`.
    pub fn scan(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, BodyError> {
        match self {
            Self::Length(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(input.len());
                *n -= take as u64;
                data(&input[..take]);
                Ok(take)
            }
            Self::Chunked(s) => s.scan(input, data),
            Self::UntilClose => {
                data(input);
                Ok(input.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8]) -> Result<(usize, bool), BodyError> {
        let mut s = ChunkedScanner::default();
        let n = s.feed(input)?;
        Ok((n, s.done()))
    }

    #[test]
    fn finds_the_end_and_leaves_the_rest() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (n, done) = scan_all(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn scanning_yields_the_data_without_framing() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nrest";
        let mut data = Vec::new();
        let mut s = ChunkedScanner::default();
        // Split mid-chunk: data arrives piece by piece.
        let n = s.scan(&body[..6], |d| data.extend_from_slice(d)).unwrap()
            + s.scan(&body[6..], |d| data.extend_from_slice(d)).unwrap();
        assert!(s.done());
        assert_eq!(&body[n..], b"rest");
        assert_eq!(data, b"Wikipedia");
    }

    #[test]
    fn trailers_are_part_of_the_body() {
        let body = b"1\r\na\r\n0\r\nX-Checksum: 1\r\n\r\n";
        assert_eq!(scan_all(body).unwrap(), (body.len(), true));
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        let mut s = ChunkedScanner::default();
        for (i, b) in body.iter().enumerate() {
            assert_eq!(s.feed(std::slice::from_ref(b)).unwrap(), 1, "byte {i}");
        }
        assert!(s.done());
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"4\nWiki\r\n",
            b"4\r\nWikiX\r\n",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                scan_all(bad),
                Err(BodyError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_limit_counts_data_extensions_and_trailers_and_refuses_at_the_size_line() {
        // Ten bytes of data in three chunks, four of extension and four of
        // trailer, and framing: within a limit of eighteen.
        let body = b"4;x=1\r\nWiki\r\n5\r\npedia\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n";
        let mut s = ChunkedScanner::limited(18);
        assert_eq!(s.feed(body).unwrap(), body.len());
        assert!(s.done());
        // One more byte, in a chunk of its own or in a larger last chunk.
        let mut s = ChunkedScanner::limited(9);
        assert_eq!(s.feed(b"4\r\nWiki\r\n5\r\npedia\r\n").unwrap(), 19);
        assert_eq!(s.feed(b"1\r\n"), Err(BodyError::TooLarge));
        let mut s = ChunkedScanner::limited(9);
        assert_eq!(s.feed(b"4\r\nWiki\r\n6\r\n"), Err(BodyError::TooLarge));
        let mut p = BodyProgress::limited(Framing::Chunked, 0);
        assert_eq!(p.feed(b"0\r\n\r\n").unwrap(), 5, "an empty body passes");
    }

    #[test]
    fn extensions_and_trailers_count_against_the_limit_and_are_bounded() {
        let body = b"5;name=value\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n";
        // 5 bytes of data, 11 of extension, 8 of trailer.
        assert_eq!(ChunkedScanner::limited(24).feed(body), Ok(body.len()));
        assert_eq!(
            ChunkedScanner::limited(23).feed(body),
            Err(BodyError::TooLarge)
        );
        let long = MAX_CHUNK_METADATA as usize + 1;
        let extension = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(long));
        let trailer = format!("1\r\nx\r\n0\r\nx-t: {}\r\n\r\n", "t".repeat(long));
        // Many small extensions add up as one long one does.
        let many = format!("{}0\r\n\r\n", "1;e\r\nx\r\n".repeat(long));
        for body in [extension, trailer, many] {
            assert_eq!(
                ChunkedScanner::default().feed(body.as_bytes()),
                Err(BodyError::TooLarge),
                "{}",
                &body[..40]
            );
        }
    }

    #[test]
    fn trailer_lines_are_located_however_the_body_is_split() {
        let body = b"5\r\nhello\r\n0\r\nx-a: 1\r\nX-B: 2\r\n\r\n";
        // Every split in two: the bytes outside the trailer ranges are the
        // body without its trailer lines.
        for split in 0..=body.len() {
            let mut s = ChunkedScanner::default();
            let mut kept = Vec::new();
            for part in [&body[..split], &body[split..]] {
                let n = s.feed(part).unwrap();
                let r = s.trailers().unwrap_or(n..n);
                kept.extend_from_slice(&part[..r.start]);
                kept.extend_from_slice(&part[r.end..n]);
            }
            assert!(s.done());
            assert_eq!(kept, b"5\r\nhello\r\n0\r\n\r\n", "split at {split}");
        }
        let mut s = ChunkedScanner::default();
        s.feed(b"0\r\n\r\n").unwrap();
        assert_eq!(s.trailers(), None);
    }

    #[test]
    fn sized_bodies_count_down() {
        let mut p = BodyProgress::new(Framing::Length(5));
        assert_eq!(p.feed(b"abc").unwrap(), 3);
        assert!(!p.done());
        assert_eq!(p.feed(b"defgh").unwrap(), 2);
        assert!(p.done());
        assert!(BodyProgress::new(Framing::Empty).done());
    }
}
