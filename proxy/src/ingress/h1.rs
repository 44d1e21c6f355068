//! HTTP/1.x message heads: parsing with the checks a proxy owes its
//! upstreams (RFC 9112 framing, smuggling defences), and rewriting heads on
//! the way through (hop-by-hop headers, `X-Forwarded-*`, `Forwarded`,
//! `x-request-id`).
//!
//! A parsed head is kept as byte ranges into the read buffer, so nothing is
//! copied until the rewritten head is written out.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::ops::Range;

use super::body::Framing;

/// Why a request head was refused, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than allowed (431).
    #[error("request header fields too large")]
    TooLarge,
    /// More headers than allowed (431).
    #[error("too many request headers")]
    TooManyHeaders,
    /// Not valid HTTP/1.x (400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Ambiguous framing: the request could be read two ways (400).
    #[error("ambiguous request framing: {0}")]
    Smuggling(&'static str),
    /// A transfer coding other than chunked (501).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// The declared body is larger than allowed (413).
    #[error("request body too large")]
    BodyTooLarge,
}

impl HeadError {
    /// The status code that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge | Self::TooManyHeaders => 431,
            Self::Malformed(_) | Self::Smuggling(_) => 400,
            Self::UnsupportedCoding => 501,
            Self::BodyTooLarge => 413,
        }
    }
}

/// A parsed head, as ranges into the buffer it was parsed from.
#[derive(Debug, Default, Clone)]
pub struct Head {
    /// Length of the head in bytes, final CRLF included.
    pub len: usize,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Request method (requests only).
    pub method: Range<usize>,
    /// Request target (requests only).
    pub target: Range<usize>,
    /// Status code (responses only).
    pub status: u16,
    /// Reason phrase (responses only).
    pub reason: Range<usize>,
    /// Header names and values.
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

impl Head {
    /// The value of the first header called `name` (lower-case).
    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &buf[v.clone()])
    }

    fn values<'b>(&self, buf: &'b [u8], name: &'static str) -> impl Iterator<Item = &'b [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| &buf[v.clone()])
    }

    /// Whether a comma-separated header (`Connection`) lists `token`.
    pub fn has_token(&self, buf: &[u8], name: &'static str, token: &str) -> bool {
        self.values(buf, name).any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// What the proxy needs to know about a request besides its head.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// How the body is framed.
    pub framing: Framing,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
    /// `HEAD`: the response has no body whatever its headers say.
    pub is_head: bool,
    /// Safe to send twice (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
    pub idempotent: bool,
    /// A protocol upgrade (WebSocket) was asked for.
    pub upgrade: bool,
}

/// The request's path (target without query), for routing.
pub fn path<'b>(buf: &'b [u8], head: &Head) -> &'b str {
    let target = std::str::from_utf8(&buf[head.target.clone()]).unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("/");
    if path.is_empty() { "/" } else { path }
}

/// The request's host for routing: Host header, lower-case, without port.
pub fn host(buf: &[u8], head: &Head) -> String {
    let raw = head.header(buf, "host").unwrap_or_default();
    let raw = std::str::from_utf8(raw).unwrap_or_default();
    let without_port = match raw.strip_prefix('[') {
        // An IPv6 literal keeps its colons.
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => raw.rsplit_once(':').map_or(raw, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        }),
    };
    without_port.to_ascii_lowercase()
}

/// Whether `bytes` hold an empty line (`\n\n` or `\n\r\n`), without which
/// no head is complete: bytes a head may end in.
pub fn may_end_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

/// Most headers a head may have whatever the configuration says; the parser
/// keeps them on the stack, so there is no allocation per request.
pub const MAX_HEADERS: usize = 256;

/// Parses a request head from `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request(
    buf: &[u8],
    head: &mut Head,
    max_headers: usize,
    max_head: usize,
    max_body: u64,
) -> Result<Option<RequestInfo>, HeadError> {
    // Uninitialised storage: zeroing 256 headers costs more than parsing a
    // small request.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let status = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut storage,
    ) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("invalid request head")),
    };
    if req.headers.len() > max_headers && matches!(status, httparse::Status::Complete(_)) {
        return Err(HeadError::TooManyHeaders);
    }
    let httparse::Status::Complete(len) = status else {
        if buf.len() >= max_head {
            return Err(HeadError::TooLarge);
        }
        return Ok(None);
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    head.len = len;
    head.version = req.version.unwrap_or(1);
    head.method = range_of(buf, method.as_bytes());
    head.target = range_of(buf, target.as_bytes());
    head.headers.clear();
    head.headers.extend(
        req.headers
            .iter()
            .map(|h| (range_of(buf, h.name.as_bytes()), range_of(buf, h.value))),
    );
    if !(target.starts_with('/') || (method == "OPTIONS" && target == "*")) {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    }

    let hosts = head.values(buf, "host").count();
    if hosts > 1 || (hosts == 0 && head.version == 1) {
        return Err(HeadError::Malformed("exactly one Host header is required"));
    }
    let framing = request_framing(buf, head, max_body)?;
    let connection_close = head.has_token(buf, "connection", "close");
    let keep_alive = if head.version == 1 {
        !connection_close
    } else {
        head.has_token(buf, "connection", "keep-alive")
    };
    Ok(Some(RequestInfo {
        framing,
        keep_alive,
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        upgrade: head.version == 1
            && head.header(buf, "upgrade").is_some()
            && head.has_token(buf, "connection", "upgrade"),
    }))
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a header's value is set off by spaces alone. RFC 9110 allows
/// HTAB there too, but nginx takes it for part of the value, so
/// `Transfer-Encoding:<HTAB>chunked` is chunked to the parser and an
/// unknown coding to nginx: a framing header so padded is read two ways.
fn padded_with_spaces_only(buf: &[u8], name: &Range<usize>, value: &Range<usize>) -> bool {
    // After the colon, and after the value up to the end of its line (the
    // parser leaves leading and trailing whitespace out of the value).
    let before = buf.get(name.end + 1..value.start).unwrap_or_default();
    let after = buf[value.end..]
        .iter()
        .take_while(|&&b| b != b'\r' && b != b'\n');
    before.iter().chain(after).all(|&b| b == b' ')
}

/// RFC 9112 §6.3, strictly: a request with both Content-Length and
/// Transfer-Encoding, or with more than one Content-Length, or with either
/// padded with HTAB, is refused rather than interpreted.
fn request_framing(buf: &[u8], head: &Head, max_body: u64) -> Result<Framing, HeadError> {
    let framing_header = |n: &Range<usize>| {
        buf[n.clone()].eq_ignore_ascii_case(b"content-length")
            || buf[n.clone()].eq_ignore_ascii_case(b"transfer-encoding")
    };
    if head
        .headers
        .iter()
        .any(|(n, v)| framing_header(n) && !padded_with_spaces_only(buf, n, v))
    {
        return Err(HeadError::Smuggling(
            "a tab around a Content-Length or Transfer-Encoding value",
        ));
    }
    let mut lengths = head.values(buf, "content-length");
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(HeadError::Smuggling("more than one Content-Length"));
    }
    let mut codings = head.values(buf, "transfer-encoding");
    let coding = codings.next();
    if codings.next().is_some() {
        return Err(HeadError::Smuggling("more than one Transfer-Encoding"));
    }
    match (length, coding) {
        (Some(_), Some(_)) => Err(HeadError::Smuggling(
            "both Content-Length and Transfer-Encoding",
        )),
        (None, Some(te)) => {
            if head.version == 0 {
                return Err(HeadError::Smuggling(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if te.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Ok(Framing::Chunked)
            } else {
                Err(HeadError::UnsupportedCoding)
            }
        }
        (Some(cl), None) => match parse_length(cl) {
            Some(0) => Ok(Framing::Empty),
            Some(n) if n > max_body => Err(HeadError::BodyTooLarge),
            Some(n) => Ok(Framing::Length(n)),
            None => Err(HeadError::Malformed("invalid Content-Length")),
        },
        (None, None) => Ok(Framing::Empty),
    }
}

/// Headers that describe one connection and must not be forwarded.
fn hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A header name compared and hashed without regard to case.
#[derive(Debug, Clone, Copy)]
struct Name<'b>(&'b [u8]);

impl PartialEq for Name<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for Name<'_> {}

impl Hash for Name<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0 {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

/// End-to-end headers a `Connection` header may not remove: the upstream
/// must see the Host the request was routed by, and a response's length
/// frames its body (RFC 9110 §7.6.1 forbids listing them).
fn kept_whatever_connection_says(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"host") || name.eq_ignore_ascii_case(b"content-length")
}

/// The headers the head's `Connection` header names for removal (they
/// are hop-by-hop too), gathered once so each header is a hash probe
/// rather than a scan of a list the sender may have made long. Names
/// already hop-by-hop are left out, so the usual `Connection: keep-alive`
/// costs no allocation.
fn named_by_connection<'b>(buf: &'b [u8], head: &Head) -> HashSet<Name<'b>> {
    head.values(buf, "connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !hop_by_hop(t)
                && !t.eq_ignore_ascii_case(b"close")
                && !kept_whatever_connection_says(t)
        })
        .map(Name)
        .collect()
}

/// What the proxy adds to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address, as text.
    pub client: &'a str,
    /// `https` when the client connection is TLS.
    pub tls: bool,
    /// An id for the request, used when the client sent none.
    pub request_id: &'a str,
    /// The target to send instead of the client's, when normalising its
    /// path changed it (see `routes::normalize_path`): the upstream reads
    /// the path the request was routed by.
    pub target: Option<&'a str>,
}

/// The request target to forward: `normal_path` (the normalised form of
/// `path`) with the client's query, or `None` when normalising changed
/// nothing.
pub fn normalized_target(buf: &[u8], head: &Head, path: &str, normal_path: &str) -> Option<String> {
    if path == normal_path {
        return None;
    }
    let target = std::str::from_utf8(&buf[head.target.clone()]).unwrap_or_default();
    let rest = target.get(path.len()..).unwrap_or_default();
    Some([normal_path, rest].concat())
}

/// Writes the request head to send upstream: HTTP/1.1 (HTTP/1.0 for 1.0
/// clients, so upstreams never answer them with chunked bodies), hop-by-hop
/// headers removed, forwarding headers added, Host kept.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &Head,
    info: &RequestInfo,
    fwd: &Forwarding,
) {
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    match fwd.target {
        Some(target) => out.extend_from_slice(target.as_bytes()),
        None => out.extend_from_slice(&buf[head.target.clone()]),
    }
    out.extend_from_slice(if head.version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    // Earlier hops' lines are kept in order, every one of them (RFC 9110
    // §5.3: several lines are one comma-separated list), as for HTTP/2.
    let (mut xff, mut forwarded) = (false, false);
    let mut has_id = false;
    let named = named_by_connection(buf, head);
    for (n, v) in &head.headers {
        let (name, value) = (&buf[n.clone()], &buf[v.clone()]);
        if hop_by_hop(name) || (!named.is_empty() && named.contains(&Name(name))) {
            continue;
        }
        // The framing is written below from what was parsed, once: a copy
        // of the client's Content-Length beside it would be a second one,
        // which upstreams rightly refuse (nginx answers 400).
        if name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"forwarded") {
            forwarded = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            continue;
        }
        has_id |= name.eq_ignore_ascii_case(b"x-request-id");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let proto = if fwd.tls { "https" } else { "http" };
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff {
        for previous in head.values(buf, "x-forwarded-for") {
            out.extend_from_slice(previous);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: ");
    out.extend_from_slice(proto.as_bytes());
    out.extend_from_slice(b"\r\nforwarded: ");
    if forwarded {
        // A line that is no RFC 7239 list (an unclosed quote, a bare word)
        // would make the whole header unreadable, this hop's element
        // included: it is dropped.
        for previous in head
            .values(buf, "forwarded")
            .filter(|v| is_forwarded_list(v))
        {
            out.extend_from_slice(previous);
            out.extend_from_slice(b", ");
        }
    }
    write_forwarded_element(out, fwd.client, proto, head.header(buf, "host"));
    out.extend_from_slice(b"\r\n");
    if !has_id {
        out.extend_from_slice(b"x-request-id: ");
        out.extend_from_slice(fwd.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match info.framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Empty if head.header(buf, "content-length").is_some() => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty | Framing::UntilClose => {}
    }
    if info.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        out.extend_from_slice(head.header(buf, "upgrade").unwrap_or_default());
        out.extend_from_slice(b"\r\n");
    } else if head.version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 §5.6.2 `tchar`: a byte of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `value` is a `Forwarded` list as RFC 7239 §4 has it: elements
/// separated by commas (with optional whitespace), each of `token=value`
/// pairs separated by semicolons, a value a token or a quoted-string.
pub fn is_forwarded_list(value: &[u8]) -> bool {
    let mut rest = value;
    // Whitespace may precede an element, not a pair after `;`.
    let mut element_start = true;
    loop {
        if element_start {
            rest = rest.trim_ascii_start();
        }
        match rest.first() {
            None => return true,
            // Empty elements and pairs are allowed by the grammar.
            Some(b',') => {
                (rest, element_start) = (&rest[1..], true);
                continue;
            }
            Some(b';') => {
                (rest, element_start) = (&rest[1..], false);
                continue;
            }
            Some(_) => {}
        }
        let name = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 || rest.get(name) != Some(&b'=') {
            return false;
        }
        rest = &rest[name + 1..];
        let value = if rest.first() == Some(&b'"') {
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return false,
                    Some(b'"') => break i + 1,
                    Some(b'\\') if i + 1 < rest.len() => i += 2,
                    Some(b'\\') => return false,
                    Some(_) => i += 1,
                }
            }
        } else {
            rest.iter().take_while(|&&b| is_tchar(b)).count()
        };
        if value == 0 {
            return false;
        }
        rest = &rest[value..];
        let space = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        match rest.get(space) {
            None => return true,
            Some(b',') => (rest, element_start) = (&rest[space + 1..], true),
            Some(b';') if space == 0 => (rest, element_start) = (&rest[1..], false),
            Some(_) => return false,
        }
    }
}

/// Appends this hop's element of a `Forwarded` header (RFC 7239), shared
/// by both HTTP versions.
pub fn write_forwarded_element(out: &mut Vec<u8>, client: &str, proto: &str, host: Option<&[u8]>) {
    // An IPv6 address is bracketed and quoted.
    if client.contains(':') {
        out.extend_from_slice(b"for=\"[");
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(b"for=");
        out.extend_from_slice(client.as_bytes());
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.as_bytes());
    // An empty Host (allowed in HTTP/1.1) is no value RFC 7239 can carry.
    if let Some(host) = host.filter(|h| !h.is_empty() && h.iter().all(|b| b.is_ascii_graphic())) {
        out.extend_from_slice(b";host=");
        if host.iter().all(|&b| is_tchar(b)) {
            out.extend_from_slice(host);
        } else {
            // A port's colon, or a client's `,` or `;`, is no token: quoted,
            // so that it cannot end this element or start another.
            out.push(b'"');
            for &b in host {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        }
    }
}

/// What the proxy needs to know about a response besides its head.
#[derive(Debug, Clone, Copy)]
pub struct ResponseInfo {
    /// How the body is framed.
    pub framing: Framing,
    /// Whether the upstream connection may be reused afterwards.
    pub reusable: bool,
}

/// Why an upstream response was refused (the client gets a 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Not valid HTTP/1.x.
    #[error("malformed response head")]
    Malformed,
    /// The head is larger than allowed.
    #[error("response head too large")]
    TooLarge,
    /// Content-Length and Transfer-Encoding disagree or repeat.
    #[error("ambiguous response framing")]
    Ambiguous,
    /// A `Transfer-Encoding` other than plain `chunked`.
    #[error("unsupported response transfer coding")]
    UnsupportedCoding,
}

/// Parses a response head; `Ok(None)` means more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    head: &mut Head,
    max_head: usize,
    request_is_head: bool,
) -> Result<Option<ResponseInfo>, ResponseError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
        Ok(_) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    head.len = len;
    head.version = resp.version.unwrap_or(1);
    head.status = resp.code.unwrap_or_default();
    head.reason = range_of(buf, resp.reason.unwrap_or_default().as_bytes());
    head.headers.clear();
    head.headers.extend(
        resp.headers
            .iter()
            .map(|h| (range_of(buf, h.name.as_bytes()), range_of(buf, h.value))),
    );
    let no_body = request_is_head || head.status < 200 || head.status == 204 || head.status == 304;
    let mut lengths = head.values(buf, "content-length");
    let (length, repeated) = (lengths.next(), lengths.next().is_some());
    let coding = head.header(buf, "transfer-encoding");
    let framing = if no_body {
        Framing::Empty
    } else {
        match (length, coding) {
            (Some(_), Some(_)) => return Err(ResponseError::Ambiguous),
            (None, Some(te)) if te.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
                Framing::Chunked
            }
            // Any other coding would reach the client undecoded, its
            // framing unknown to the proxy: refused, as nginx does since
            // 1.23.
            (None, Some(_)) => return Err(ResponseError::UnsupportedCoding),
            (Some(_), None) if repeated => return Err(ResponseError::Ambiguous),
            (Some(cl), None) => match parse_length(cl) {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => return Err(ResponseError::Malformed),
            },
            (None, None) => Framing::UntilClose,
        }
    };
    let reusable = framing != Framing::UntilClose
        && if head.version == 1 {
            !head.has_token(buf, "connection", "close")
        } else {
            head.has_token(buf, "connection", "keep-alive")
        };
    Ok(Some(ResponseInfo { framing, reusable }))
}

/// Writes the response head for the client: hop-by-hop headers removed,
/// the client connection's own `Connection` header added.
pub fn write_client_response(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &Head,
    info: &ResponseInfo,
    client_version: u8,
    keep_alive: bool,
) {
    let _ = write!(out, "HTTP/1.{client_version} {} ", head.status);
    out.extend_from_slice(&buf[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let upgrade = head.status == 101;
    let named = named_by_connection(buf, head);
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        let keep_for_upgrade = upgrade && name.eq_ignore_ascii_case(b"upgrade");
        if !keep_for_upgrade
            && (hop_by_hop(name) || (!named.is_empty() && named.contains(&Name(name))))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[v.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    if info.framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_version == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete response generated by the proxy itself.
pub fn write_local_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &str,
    body: &str,
    keep_alive: bool,
) {
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{extra_headers}{}\r\n{body}",
        reason(status),
        body.len(),
        if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        },
    );
}

/// The standard reason phrase of the statuses the proxy answers itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<(Head, RequestInfo)>, HeadError> {
        let mut head = Head::default();
        parse_request(text.as_bytes(), &mut head, 32, 8192, 1 << 20).map(|o| o.map(|i| (head, i)))
    }

    #[test]
    fn a_plain_get() {
        let text = "GET /api/x?y=1 HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\nNEXT";
        let (head, info) = parse(text).unwrap().unwrap();
        assert_eq!(head.len, text.len() - 4);
        assert_eq!(path(text.as_bytes(), &head), "/api/x");
        assert_eq!(host(text.as_bytes(), &head), "example.com");
        assert!(info.keep_alive && info.idempotent && !info.upgrade);
        assert_eq!(info.framing, Framing::Empty);
    }

    #[test]
    fn spaces_around_framing_values_are_whitespace() {
        let text = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:   5  \r\nX-Tab:\tkept\t\r\n\r\n";
        assert_eq!(parse(text).unwrap().unwrap().1.framing, Framing::Length(5));
        let text = "POST / HTTP/1.1\nHost: a\nTransfer-Encoding:  chunked \n\n";
        assert_eq!(parse(text).unwrap().unwrap().1.framing, Framing::Chunked);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn smuggling_and_bad_framing_are_refused() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",
                413,
            ),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
            // nginx reads the tab as part of the value.
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \t\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\t\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\ncontent-length:\t 5\n\n", 400),
        ];
        for (text, status) in cases {
            assert_eq!(parse(text).unwrap_err().status(), status, "{text:?}");
        }
    }

    #[test]
    fn limits() {
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(&text).unwrap_err(), HeadError::TooManyHeaders);
        let big = format!("GET /{} HTTP/1.1\r\nHost: a\r\n", "a".repeat(9000));
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn forwarded_request_head() {
        let text = "GET /p HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\nAccept: */*\r\n\r\n";
        let (head, info) = parse(text).unwrap().unwrap();
        let mut out = Vec::new();
        let fwd = forwarding("192.0.2.7", false, "abc");
        write_upstream_request(&mut out, text.as_bytes(), &head, &info, &fwd);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "GET /p HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             forwarded: for=192.0.2.7;proto=http;host=example.com\r\nx-request-id: abc\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_remove_host_or_length() {
        let text = "POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\nConnection: host, content-length, X-a\r\nconnection: x-B\r\nX-A: 1\r\nx-b: 2\r\nX-C: 3\r\n\r\nok";
        let (head, info) = parse(text).unwrap().unwrap();
        let mut out = Vec::new();
        let fwd = forwarding("192.0.2.7", false, "abc");
        write_upstream_request(&mut out, text.as_bytes(), &head, &info, &fwd);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("POST /p HTTP/1.1\r\nHost: example.com\r\nX-C: 3\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("content-length: 2\r\n").count(), 1, "{out}");
        assert_eq!(
            out.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("X-A") && !out.contains("x-b"), "{out}");

        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Content-Length, x-a\r\nX-A: 1\r\n\r\nok";
        let mut head = Head::default();
        let info = parse_response(text, &mut head, 8192, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        write_client_response(&mut out, text, &head, &info, 1, true);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    }

    #[test]
    fn every_header_a_long_connection_list_names_goes() {
        let list: Vec<String> = (0..200).rev().map(|i| format!("x-{i}")).collect();
        let headers: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        let text = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: {}\r\n{headers}Y: kept\r\n\r\n",
            list.join(", ")
        );
        let mut head = Head::default();
        let info = parse_request(text.as_bytes(), &mut head, 256, 1 << 20, 0)
            .unwrap()
            .unwrap();
        let fwd = forwarding("192.0.2.7", false, "abc");
        let mut out = Vec::new();
        write_upstream_request(&mut out, text.as_bytes(), &head, &info, &fwd);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nHost: a\r\nY: kept\r\nx-forwarded-for"),
            "{out}"
        );
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let text = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: mine\r\n\r\n";
        let (head, info) = parse(text).unwrap().unwrap();
        assert!(info.upgrade);
        let mut out = Vec::new();
        let fwd = forwarding("::1", true, "unused");
        write_upstream_request(&mut out, text.as_bytes(), &head, &info, &fwd);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{out}"
        );
        assert!(
            out.contains("X-Request-Id: mine\r\n") && !out.contains("unused"),
            "{out}"
        );
        assert!(
            out.contains("forwarded: for=\"[::1]\";proto=https;host=a\r\n"),
            "{out}"
        );
    }

    /// The forwarding of a request from `client` without a rewritten target.
    fn forwarding(
        client: &'static str,
        tls: bool,
        request_id: &'static str,
    ) -> Forwarding<'static> {
        Forwarding {
            client,
            tls,
            request_id,
            target: None,
        }
    }

    fn forwarded_line(text: &str) -> String {
        let (head, info) = parse(text).unwrap().unwrap();
        let fwd = forwarding("192.0.2.7", false, "abc");
        let mut out = Vec::new();
        write_upstream_request(&mut out, text.as_bytes(), &head, &info, &fwd);
        let out = String::from_utf8(out).unwrap();
        let line = out.lines().find(|l| l.starts_with("forwarded: "));
        line.unwrap().trim_start_matches("forwarded: ").to_string()
    }

    #[test]
    fn a_host_that_is_no_token_is_quoted_in_forwarded() {
        let cases = [
            ("a.test", "host=a.test"),
            ("a.test:8080", "host=\"a.test:8080\""),
            ("[::1]:80", "host=\"[::1]:80\""),
            // Would otherwise end this element and add one naming another client.
            ("a,for=evil", "host=\"a,for=evil\""),
            ("a\";for=\\", "host=\"a\\\";for=\\\\\""),
        ];
        let line = forwarded_line("GET / HTTP/1.1\r\nHost: \r\n\r\n");
        assert_eq!(line, "for=192.0.2.7;proto=http");
        for (host, written) in cases {
            let line = forwarded_line(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
            assert_eq!(
                line,
                format!("for=192.0.2.7;proto=http;{written}"),
                "{host}"
            );
        }
    }

    #[test]
    fn earlier_forwarded_lines_are_kept_only_when_well_formed() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=192.0.2.1;proto=https, for=\"[2001:db8::1]:80\"\r\n\
                    Forwarded: for=\"unclosed\r\nForwarded: chunked\r\nForwarded: for=a; by=b\r\n\
                    Forwarded: for=192.0.2.2;;by=\"x\\\"y\" ,\r\n\r\n";
        assert_eq!(
            forwarded_line(text),
            "for=192.0.2.1;proto=https, for=\"[2001:db8::1]:80\", \
             for=192.0.2.2;;by=\"x\\\"y\" ,, for=192.0.2.7;proto=http;host=a"
        );
    }

    #[test]
    fn responses() {
        let mut head = Head::default();
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
        let info = parse_response(text, &mut head, 8192, false)
            .unwrap()
            .unwrap();
        assert_eq!(info.framing, Framing::Length(2));
        assert!(info.reusable);
        let mut out = Vec::new();
        write_client_response(&mut out, text, &head, &info, 1, true);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");

        let text = b"HTTP/1.1 200 OK\r\n\r\nstream";
        let info = parse_response(text, &mut head, 8192, false)
            .unwrap()
            .unwrap();
        assert_eq!(info.framing, Framing::UntilClose);
        assert!(!info.reusable);

        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let info = parse_response(text, &mut head, 8192, true)
            .unwrap()
            .unwrap();
        assert_eq!(info.framing, Framing::Empty, "HEAD responses have no body");

        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(text, &mut head, 8192, false).unwrap_err(),
            ResponseError::Ambiguous
        );

        for coding in ["gzip", "gzip, chunked", "chunked, gzip", "identity"] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(
                parse_response(text.as_bytes(), &mut head, 8192, false).unwrap_err(),
                ResponseError::UnsupportedCoding,
                "{coding}"
            );
        }
    }
}
