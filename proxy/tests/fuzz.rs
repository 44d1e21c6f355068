//! Property-based fuzzing of what the ingress proxy reads from clients and
//! writes to upstreams: the HTTP/1.1 request head parser, the chunked body
//! scanner and the forwarded request head. Inputs are random bytes and
//! requests assembled from the spellings published request-smuggling
//! attacks use; every property is checked against a model written here
//! from RFC 9112 and RFC 7239, not against the code under test.
//!
//! A plain `cargo test` tries 256 inputs per property (well under a
//! second). A bounded fuzzing run tries as many as `PROPTEST_CASES` says:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test -p orca-proxy --release --test fuzz
//! ```
//!
//! Once built, 100,000 inputs per property take 2 s on two cores and
//! 10,000,000 take 7 minutes; both found nothing after the fixes they led
//! to (the `Forwarded` header's quoting and earlier lines, an empty
//! `host=`, framing headers padded with a tab).
//!
//! A failing input is shrunk and printed, and its seed saved under
//! `proxy/tests/fuzz.proptest-regressions` so that later runs try it first.

use std::net::IpAddr;

use orca_proxy::ingress::body::{BodyError, ChunkedScanner, Framing, MAX_CHUNK_METADATA};
use orca_proxy::ingress::h1::{
    Forwarding, Head, MAX_HEADERS, RequestInfo, normalized_target, parse_request, path,
    write_upstream_request,
};
use orca_proxy::ingress::routes::normalize_path;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

/// The body limit the parser is given: lengths up to it are accepted.
const MAX_BODY: u64 = 1 << 20;
/// The head limit the parser is given, far above what the inputs reach.
const MAX_HEAD: usize = 1 << 16;

/// Bytes shown as a byte string, so a failing input reads as a request.
#[derive(Clone)]
struct Raw(Vec<u8>);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: String = self
            .0
            .iter()
            .flat_map(|&b| std::ascii::escape_default(b))
            .map(char::from)
            .collect();
        write!(f, "b\"{text}\"")
    }
}

fn parse(buf: &[u8]) -> (Head, Option<RequestInfo>, bool) {
    let mut head = Head::default();
    match parse_request(buf, &mut head, MAX_HEADERS, MAX_HEAD, MAX_BODY) {
        Ok(Some(info)) => (head, Some(info), false),
        Ok(None) => (head, None, false),
        Err(_) => (head, None, true),
    }
}

/// The headers of `head` called `name`, any case.
fn values<'b>(buf: &'b [u8], head: &Head, name: &str) -> Vec<&'b [u8]> {
    head.headers
        .iter()
        .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| &buf[v.clone()])
        .collect()
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the line of a header holds a tab between its colon and its
/// value, or after its value.
fn tab_padded(buf: &[u8], name: &std::ops::Range<usize>) -> bool {
    let line = buf[name.end..]
        .split(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let field = line.strip_suffix(b"\r").unwrap_or(line);
    let after_colon = field.get(1..).unwrap_or_default();
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let lead = after_colon.iter().take_while(|b| is_space(b));
    let trail = after_colon.iter().rev().take_while(|b| is_space(b));
    lead.chain(trail).any(|&b| b == b'\t')
}

/// RFC 9112 §6.3 for a request, as nginx reads it: `None` when the
/// framing is ambiguous or invalid and the request must be refused. A
/// framing header padded with a tab is refused, as nginx reads the tab as
/// part of the value. Leading zeros are allowed; the parser may still
/// refuse a length too long to be read safely.
fn model_framing(buf: &[u8], head: &Head) -> Option<Framing> {
    let framing_tab = head.headers.iter().any(|(n, _)| {
        let name = &buf[n.clone()];
        (name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding"))
            && tab_padded(buf, n)
    });
    if framing_tab {
        return None;
    }
    let lengths = values(buf, head, "content-length");
    let codings = values(buf, head, "transfer-encoding");
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Some(Framing::Empty),
        ([], [te]) if head.version == 1 && te.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Some(Framing::Chunked)
        }
        ([cl], []) if !cl.is_empty() && cl.iter().all(u8::is_ascii_digit) => {
            let digits = std::str::from_utf8(cl).ok()?.trim_start_matches('0');
            match digits.parse::<u64>() {
                _ if digits.is_empty() => Some(Framing::Empty),
                Ok(n) if n <= MAX_BODY => Some(Framing::Length(n)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Request heads assembled from pieces parsers are known to disagree on:
/// framing headers in obfuscated spellings, odd separators and line ends,
/// obs-fold, and whatever follows the head.
fn request_bytes() -> impl Strategy<Value = Raw> {
    // Mostly what servers accept, so that most heads get past the request
    // line to the framing headers, with the odd spellings now and then.
    let line_end = || {
        prop_oneof![
            12 => Just("\r\n"),
            1 => select(vec!["\n", "\r", " \r\n"]),
        ]
    };
    let method = prop_oneof![
        9 => select(vec!["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
        1 => select(vec!["get", "G\x00T"]),
    ];
    let space = || prop_oneof![12 => Just(" "), 1 => select(vec!["  ", "\t"])];
    let target = prop_oneof![
        9 => select(vec![
            "/",
            "/a?b=1",
            "/public/../admin",
            "//x/./y/",
            "/%2e%2E/x?q=/../",
            "/a%2Fb",
            "/%41%7e",
        ]),
        1 => select(vec!["*", "http://a.test/", "", "/a#frag", "/\u{e9}"]),
    ];
    let version = prop_oneof![
        9 => select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        1 => select(vec!["HTTP/1.2", "http/1.1", "HTTP/2.0"]),
    ];
    let name = select(vec![
        "Host",
        "host",
        "HOST",
        "Content-Length",
        "content-length",
        "Content-Length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Transfer-Encoding",
        "Transfer-Encoding ",
        " Transfer-Encoding",
        "Transfer_Encoding",
        "Content_Length",
        "Connection",
        "Upgrade",
        "Expect",
        "TE",
        "Trailer",
        "Keep-Alive",
        "Proxy-Connection",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "Forwarded",
        "X-Request-Id",
        "X-Other",
    ]);
    let separator = prop_oneof![
        9 => select(vec![": ", ": ", ":", ":\t", ":  ", ": \t"]),
        1 => Just(" : "),
    ];
    let value = prop_oneof![
        8 => select(vec![
            "chunked",
            "Chunked",
            " chunked",
            "chunked ",
            "\tchunked",
            "chunked\t",
            "xchunked",
            "chunked, identity",
            "identity, chunked",
            "gzip, chunked",
            "chunked, chunked",
            "\"chunked\"",
            "chunk\x00ed",
            "chunked\x0b",
            "",
            "0",
            "5",
            "005",
            "0000000000000000000005",
            "+5",
            "-5",
            " 5",
            "5 ",
            "5\t",
            "0x5",
            "5, 5",
            "5 5",
            "18446744073709551616",
            "99999999999999999999",
            "close",
            "keep-alive",
            "Upgrade",
            "upgrade, x-other",
            "host, content-length, transfer-encoding",
            "websocket",
            "100-continue",
            "a.test",
            "A.test:8080",
            "[::1]:8080",
            "a,for=evil",
            "a\";for=evil",
            "\"unterminated",
            "for=192.0.2.1",
            "for=\"[2001:db8::1]:80\";proto=https",
            "for=192.0.2.1, for=\"_hidden\";by=x",
            "for=a\\",
            "203.0.113.9",
            "abc-123",
            "caf\u{e9}",
        ])
        .prop_map(|v| v.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    let fold = prop::bool::weighted(0.05);
    let header =
        (name, separator, value, line_end(), fold).prop_map(|(name, sep, value, end, fold)| {
            let mut line = [name.as_bytes(), sep.as_bytes(), &value, end.as_bytes()].concat();
            if fold {
                line.extend_from_slice(b" chunked\r\n");
            }
            line
        });
    let tail = prop_oneof![
        Just(Vec::new()),
        Just(b"GET /second HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec()),
        Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (
        method,
        space(),
        target,
        space(),
        version,
        line_end(),
        prop::option::weighted(
            0.9,
            select(vec![
                "a.test",
                "a.test",
                "A.test:8080",
                "[::1]:8080",
                "a,for=evil",
                "a\";for=evil",
                "caf\u{e9}",
            ]),
        ),
        prop::collection::vec(header, 0..6),
        select(vec!["\r\n", "\r\n", "\n"]),
        tail,
    )
        .prop_map(
            |(method, sp1, target, sp2, version, end, host, headers, last, tail)| {
                let mut out = [method, sp1, target, sp2, version, end]
                    .concat()
                    .into_bytes();
                if let Some(host) = host {
                    out.extend(format!("Host: {host}\r\n").into_bytes());
                }
                out.extend(headers.concat());
                out.extend_from_slice(last.as_bytes());
                out.extend(tail);
                Raw(out)
            },
        )
}

/// Checks what the parser made of `buf`: a head it accepts ends at its
/// empty line, reads the same without what follows it and is not found
/// in any shorter prefix (so where a head ends does not depend on how
/// the client's bytes were split into reads), its headers can be written
/// out again one per line, and its framing is RFC 9112's.
fn check_head(buf: &[u8]) -> Result<(), TestCaseError> {
    let (head, info, _) = parse(buf);
    let Some(info) = info else {
        return Ok(());
    };
    prop_assert!(head.len <= buf.len());
    let bytes = &buf[..head.len];
    prop_assert!(bytes.ends_with(b"\n\n") || bytes.ends_with(b"\n\r\n"));
    let (alone, again, _) = parse(bytes);
    prop_assert_eq!(again.map(|i| i.framing), Some(info.framing));
    prop_assert_eq!(&alone.headers, &head.headers);
    for k in 0..head.len {
        let (_, info, refused) = parse(&buf[..k]);
        prop_assert!(
            info.is_none() && !refused,
            "a prefix of {} bytes was {}",
            k,
            if refused { "refused" } else { "accepted" }
        );
    }
    for (n, v) in &head.headers {
        prop_assert!(!buf[n.clone()].is_empty() && buf[n.clone()].iter().all(|&b| is_tchar(b)));
        prop_assert!(!buf[v.clone()].iter().any(|&b| b == b'\r' || b == b'\n'));
    }
    prop_assert_eq!(Some(info.framing), model_framing(buf, &head));
    Ok(())
}

/// One value of a `Forwarded` element, unquoted: RFC 7239 §4 allows a
/// token or a quoted-string.
fn forwarded_value(v: &[u8]) -> Option<Vec<u8>> {
    if !v.is_empty() && v.iter().all(|&b| is_tchar(b)) {
        return Some(v.to_vec());
    }
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let mut out = Vec::new();
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.push(*bytes.next()?),
            b'"' => return None,
            _ => out.push(b),
        }
    }
    Some(out)
}

/// Splits `s` at `sep` outside quoted-strings.
fn split_unquoted(s: &[u8], sep: u8) -> Vec<&[u8]> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// One `Forwarded` element: its parameters' lower-case names and values.
type Element = Vec<(String, Vec<u8>)>;

/// The elements of a `Forwarded` header (RFC 7239 §4), each a list of
/// lower-case parameter names and unquoted values; `None` if it does not
/// follow the grammar.
fn parse_forwarded(value: &[u8]) -> Option<Vec<Element>> {
    split_unquoted(value, b',')
        .into_iter()
        .map(|element| {
            // Whitespace may surround an element, not the pairs in it.
            split_unquoted(element.trim_ascii(), b';')
                .into_iter()
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let eq = pair.iter().position(|&b| b == b'=')?;
                    let (name, value) = (&pair[..eq], &pair[eq + 1..]);
                    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                        return None;
                    }
                    let name = String::from_utf8(name.to_ascii_lowercase()).ok()?;
                    Some((name, forwarded_value(value)?))
                })
                .collect()
        })
        .collect()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and `Proxy-Authorization`,
/// which is meant for this proxy alone.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// Checks the head written upstream for a request the parser accepted:
/// it is one complete head, read back with the same method, target (its
/// normal form when normalising changed it), version, Host and framing;
/// it carries one framing header at most and none of the client's
/// hop-by-hop headers; and this hop's `Forwarded` element is the last of
/// a well-formed list, naming the client, scheme and Host.
fn check_forwarded_head(buf: &[u8], client: IpAddr, tls: bool) -> Result<(), TestCaseError> {
    let (head, info, _) = parse(buf);
    let Some(info) = info else {
        return Ok(());
    };
    let path = path(buf, &head);
    let normal = normalize_path(path);
    let target = normalized_target(buf, &head, path, &normal);
    let client_text = client.to_string();
    let fwd = Forwarding {
        client: &client_text,
        tls,
        request_id: "id-1",
        target: target.as_deref(),
    };
    let mut out = Vec::new();
    write_upstream_request(&mut out, buf, &head, &info, &fwd);

    let (up, up_info, refused) = parse(&out);
    let text = String::from_utf8_lossy(&out);
    prop_assert!(!refused, "the forwarded head is refused:\n{}", text);
    let Some(up_info) = up_info else {
        return Err(TestCaseError::fail(format!("incomplete:\n{text}")));
    };
    prop_assert_eq!(up.len, out.len(), "{}", text);
    prop_assert_eq!(up_info.framing, info.framing, "{}", text);
    prop_assert_eq!(up.version, head.version);
    prop_assert_eq!(&out[up.method.clone()], &buf[head.method.clone()]);
    let sent_target = target
        .as_deref()
        .map_or(&buf[head.target.clone()], str::as_bytes);
    prop_assert_eq!(&out[up.target.clone()], sent_target);
    prop_assert_eq!(values(&out, &up, "host"), values(buf, &head, "host"));
    let framing_headers =
        values(&out, &up, "content-length").len() + values(&out, &up, "transfer-encoding").len();
    prop_assert!(framing_headers <= 1, "{}", text);
    for name in HOP_BY_HOP {
        let own = match name {
            "transfer-encoding" => info.framing == Framing::Chunked,
            "connection" => info.upgrade || head.version == 0,
            "upgrade" => info.upgrade,
            _ => false,
        };
        prop_assert!(
            values(&out, &up, name).len() <= usize::from(own),
            "{} forwarded:\n{}",
            name,
            text
        );
    }

    let forwarded = values(&out, &up, "forwarded");
    prop_assert_eq!(forwarded.len(), 1, "{}", text);
    let Some(elements) = parse_forwarded(forwarded[0]) else {
        return Err(TestCaseError::fail(format!(
            "Forwarded is not RFC 7239:\n{text}"
        )));
    };
    let mut expected = vec![
        ("for".to_string(), client_text.clone().into_bytes()),
        (
            "proto".to_string(),
            if tls { "https" } else { "http" }.into(),
        ),
    ];
    if client.is_ipv6() {
        expected[0].1 = format!("[{client_text}]").into_bytes();
    }
    if let [host] = values(buf, &head, "host")[..]
        && !host.is_empty()
        && host.iter().all(u8::is_ascii_graphic)
    {
        expected.push(("host".to_string(), host.to_vec()));
    }
    prop_assert_eq!(elements.last(), Some(&expected), "{}", text);
    Ok(())
}

/// Failing inputs are saved beside this file; the number of cases is
/// proptest's default, or `PROPTEST_CASES`.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_head_parser_on_random_bytes(buf in prop::collection::vec(any::<u8>(), 0..96).prop_map(Raw)) {
        check_head(&buf.0)?;
    }

    #[test]
    fn fuzz_head_parser_on_smuggling_spellings(buf in request_bytes()) {
        check_head(&buf.0)?;
    }

    #[test]
    fn fuzz_forwarded_head(buf in request_bytes(), client in any::<IpAddr>(), tls in any::<bool>()) {
        check_forwarded_head(&buf.0, client, tls)?;
    }
}

/// What a chunked body came to: its end, more bytes needed, or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The body ends after this many bytes.
    End(usize),
    /// Every byte belongs to a body not finished yet.
    More,
    /// The framing is malformed.
    Bad,
}

/// Most hex digits a chunk size may have: the scanner refuses sixteen, a
/// size that could overflow, rather than read a value it might wrap.
const MAX_SIZE_DIGITS: usize = 15;

/// RFC 9112 §7.1 chunked framing, read the obvious way from a whole
/// buffer: `chunk-size [ chunk-ext ] CRLF chunk-data CRLF`, a last chunk
/// of size zero, trailer lines, CRLF. As nginx does, a chunk extension is
/// whatever follows `;`, SP or HTAB up to CR; trailer lines are any
/// bytes but CR and LF.
fn reference_chunked(input: &[u8]) -> Outcome {
    let at = |i: usize| input.get(i).copied();
    // CRLF at `i`: `Some(true)` when there, `None` when the input ends first.
    let crlf = |i: usize| match (at(i), at(i + 1)) {
        (None, _) | (Some(b'\r'), None) => None,
        (Some(b'\r'), Some(b'\n')) => Some(true),
        _ => Some(false),
    };
    let mut i = 0;
    loop {
        let start = i;
        while at(i).is_some_and(|b| b.is_ascii_hexdigit()) {
            i += 1;
        }
        if i - start > MAX_SIZE_DIGITS {
            return Outcome::Bad;
        }
        if i == input.len() {
            return Outcome::More;
        }
        if i == start {
            return Outcome::Bad;
        }
        let hex = std::str::from_utf8(&input[start..i]).unwrap_or_default();
        let size = usize::from_str_radix(hex, 16).unwrap_or(usize::MAX);
        if matches!(input[i], b';' | b' ' | b'\t') {
            while at(i).is_some_and(|b| b != b'\r' && b != b'\n') {
                i += 1;
            }
        }
        match crlf(i) {
            None => return Outcome::More,
            Some(false) => return Outcome::Bad,
            Some(true) => i += 2,
        }
        if size == 0 {
            break;
        }
        if input.len() - i <= size {
            return Outcome::More;
        }
        i += size;
        match crlf(i) {
            None => return Outcome::More,
            Some(false) => return Outcome::Bad,
            Some(true) => i += 2,
        }
    }
    loop {
        match at(i) {
            None => return Outcome::More,
            Some(b'\n') => return Outcome::Bad,
            Some(b'\r') => {
                return match crlf(i) {
                    None => Outcome::More,
                    Some(true) => Outcome::End(i + 2),
                    Some(false) => Outcome::Bad,
                };
            }
            Some(_) => {
                while at(i).is_some_and(|b| b != b'\r' && b != b'\n') {
                    i += 1;
                }
                match crlf(i) {
                    None => return Outcome::More,
                    Some(false) => return Outcome::Bad,
                    Some(true) => i += 2,
                }
            }
        }
    }
}

/// Feeds `input` to a fresh scanner in the pieces `cuts` makes; returns
/// the outcome, the data handed out and the input without trailer lines.
fn scan_in_pieces(input: &[u8], cuts: &[usize]) -> (Outcome, Vec<u8>, Vec<u8>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.extend([0, input.len()]);
    points.sort_unstable();
    points.dedup();
    let mut scanner = ChunkedScanner::default();
    let (mut data, mut kept, mut consumed) = (Vec::new(), Vec::new(), 0);
    for piece in points.windows(2).map(|w| &input[w[0]..w[1]]) {
        match scanner.scan(piece, |d| data.extend_from_slice(d)) {
            Err(BodyError::Malformed) => return (Outcome::Bad, data, kept),
            Err(BodyError::TooLarge) => unreachable!("no limit was set"),
            Ok(n) => {
                let trailers = scanner.trailers().unwrap_or(n..n);
                kept.extend_from_slice(&piece[..trailers.start]);
                kept.extend_from_slice(&piece[trailers.end..n]);
                consumed += n;
                if scanner.done() {
                    return (Outcome::End(consumed), data, kept);
                }
                assert_eq!(n, piece.len(), "an unfinished body took every byte");
            }
        }
    }
    (Outcome::More, data, kept)
}

/// A chunked body as the generator describes it.
#[derive(Debug, Clone)]
struct Body {
    /// Each chunk: its data, leading zeros on its size, upper-case hex, and
    /// an extension.
    chunks: Vec<(Vec<u8>, usize, bool, &'static str)>,
    /// The last chunk's leading zeros and extension.
    last: (usize, &'static str),
    /// Trailer lines, without their CRLF.
    trailers: Vec<&'static str>,
}

impl Body {
    /// The body's bytes, its data, the body without trailer lines, and
    /// the bytes of extensions and trailers it carries.
    fn encode(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>, usize) {
        let (mut bytes, mut data, mut metadata) = (Vec::new(), Vec::new(), 0);
        for (chunk, zeros, upper, ext) in &self.chunks {
            let size = format!("{}{:x}", "0".repeat(*zeros), chunk.len());
            let size = if *upper { size.to_uppercase() } else { size };
            bytes.extend(format!("{size}{ext}\r\n").into_bytes());
            bytes.extend_from_slice(chunk);
            bytes.extend_from_slice(b"\r\n");
            data.extend_from_slice(chunk);
            metadata += ext.len();
        }
        let (zeros, ext) = self.last;
        bytes.extend(format!("{}0{ext}\r\n", "0".repeat(zeros)).into_bytes());
        metadata += ext.len();
        let without_trailers = [&bytes[..], b"\r\n"].concat();
        for line in &self.trailers {
            bytes.extend(format!("{line}\r\n").into_bytes());
            metadata += line.len();
        }
        bytes.extend_from_slice(b"\r\n");
        (bytes, data, without_trailers, metadata)
    }
}

fn chunked_body() -> impl Strategy<Value = Body> {
    let ext = || {
        select(vec![
            "",
            "",
            ";a=b",
            ";x",
            " ;y=\"q\"",
            "\t;z",
            "; k = v",
            " ",
        ])
    };
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..40),
        0..4usize,
        any::<bool>(),
        ext(),
    );
    let trailer = select(vec!["X-Sum: 1", "x-a:2", "Trailer-Name: v v", "T: \t"]);
    (
        prop::collection::vec(chunk, 0..6),
        (0..4usize, ext()),
        prop::collection::vec(trailer, 0..3),
    )
        .prop_map(|(chunks, last, trailers)| Body {
            chunks,
            last,
            trailers,
        })
}

/// One change to a valid body, towards the malformed bodies smuggling
/// attempts are made of.
#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, u8),
    Replace(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        3 => select(b"\r\n \t;0fFgx-+\"\x00".to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Replace(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Replace(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Replace(..) | Mutation::Remove(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// A well-formed body ends where it was written to, however it is
    /// split, yields its data and, without trailer lines, the body the
    /// proxy forwards; and its limit counts data, extensions and trailers.
    #[test]
    fn fuzz_chunked_bodies_end_where_written(
        body in chunked_body(),
        rest in prop::collection::vec(any::<u8>(), 0..24),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (bytes, data, without_trailers, metadata) = body.encode();
        let input = [&bytes[..], &rest[..]].concat();
        let (outcome, seen, kept) = scan_in_pieces(&input, &cuts);
        prop_assert_eq!(outcome, Outcome::End(bytes.len()));
        prop_assert_eq!(seen, data.clone());
        prop_assert_eq!(kept, without_trailers);

        let allowance = (data.len() + metadata) as u64;
        let mut exact = ChunkedScanner::limited(allowance);
        prop_assert_eq!(exact.feed(&input), Ok(bytes.len()));
        if allowance > 0 {
            prop_assert_eq!(
                ChunkedScanner::limited(allowance - 1).feed(&input),
                Err(BodyError::TooLarge)
            );
        }
        prop_assert!(metadata < MAX_CHUNK_METADATA as usize);
    }

    /// Damaged bodies, and random bytes: the scanner agrees with the
    /// reference on where the body ends or that it is malformed, whatever
    /// the split.
    #[test]
    fn fuzz_chunked_decoder_matches_the_grammar(
        body in chunked_body(),
        mutations in prop::collection::vec(mutation(), 1..4),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (mut bytes, ..) = body.encode();
        mutate(&mut bytes, &mutations);
        let (outcome, ..) = scan_in_pieces(&bytes, &cuts);
        prop_assert_eq!(outcome, reference_chunked(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn fuzz_chunked_decoder_on_random_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (outcome, ..) = scan_in_pieces(&bytes, &cuts);
        prop_assert_eq!(outcome, reference_chunked(&bytes));
    }
}
