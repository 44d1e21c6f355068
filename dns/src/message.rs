//! DNS messages (RFC 1035, EDNS from RFC 6891): the queries the responder
//! reads and the answers it writes, no more. Parsing never panics and never
//! trusts a length or a pointer it has not checked; a query it cannot read
//! gets FORMERR when its header could be read, and nothing otherwise.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Record types the responder answers or reads.
pub mod rtype {
    /// An IPv4 address.
    pub const A: u16 = 1;
    /// A canonical name.
    pub const CNAME: u16 = 5;
    /// A zone's start of authority.
    pub const SOA: u16 = 6;
    /// An IPv6 address.
    pub const AAAA: u16 = 28;
    /// A service's host and port.
    pub const SRV: u16 = 33;
    /// The EDNS pseudo-record.
    pub const OPT: u16 = 41;
    /// Every type (a query only).
    pub const ANY: u16 = 255;
}

/// Response codes, the extended ones included.
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// The query could not be read.
    pub const FORMERR: u16 = 1;
    /// The server failed (here: the caches are not listed yet, or the
    /// upstream did not answer).
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u16 = 3;
    /// The kind of query is not implemented.
    pub const NOTIMP: u16 = 4;
    /// The query is refused.
    pub const REFUSED: u16 = 5;
    /// An EDNS version the server does not speak.
    pub const BADVERS: u16 = 16;
}

/// The class of Internet records.
const CLASS_IN: u16 = 1;
/// Longest name in wire form (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;
/// Longest label.
const MAX_LABEL: usize = 63;
/// The size of a message header.
const HEADER: usize = 12;
/// The UDP payload size this server offers in its EDNS record: the DNS
/// flag day 2020 value, which avoids IP fragmentation.
pub const EDNS_SIZE: u16 = 1232;
/// The classic UDP limit for clients without EDNS.
pub const CLASSIC_UDP: usize = 512;

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message ends inside a field.
    #[error("the message is cut short")]
    Truncated,
    /// A label's length byte uses the reserved bits.
    #[error("a label has a reserved length type")]
    BadLabel,
    /// A compression pointer does not point back into the message.
    #[error("a compression pointer points forward or loops")]
    BadPointer,
    /// A name is longer than 255 bytes.
    #[error("a name is longer than 255 bytes")]
    NameTooLong,
    /// Not exactly one question.
    #[error("a query must hold exactly one question, not {0}")]
    QuestionCount(u16),
    /// More than one EDNS record.
    #[error("more than one OPT record")]
    DuplicateOpt,
}

/// A domain name as the client spelled it (case kept, for clients that
/// check their randomised case in the answer), labels without dots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    labels: Vec<Vec<u8>>,
}

impl Name {
    /// The name of `text` (dotted, a trailing dot optional); `None` if a
    /// label is empty or too long.
    pub fn parse(text: &str) -> Option<Name> {
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Some(Name { labels: Vec::new() });
        }
        let labels: Vec<Vec<u8>> = text.split('.').map(|l| l.as_bytes().to_vec()).collect();
        let ok = labels.iter().all(|l| !l.is_empty() && l.len() <= MAX_LABEL)
            && labels.iter().map(|l| l.len() + 1).sum::<usize>() < MAX_NAME;
        ok.then_some(Name { labels })
    }

    /// The labels, lower-cased (DNS names compare without case).
    pub fn lower_labels(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|l| String::from_utf8_lossy(&l.to_ascii_lowercase()).into_owned())
            .collect()
    }

    /// The name with `labels` put in front.
    pub fn prepend(&self, labels: &[&str]) -> Name {
        let mut all: Vec<Vec<u8>> = labels.iter().map(|l| l.as_bytes().to_vec()).collect();
        all.extend(self.labels.iter().cloned());
        Name { labels: all }
    }

    /// The name without its first `n` labels.
    pub fn parent(&self, n: usize) -> Name {
        Name {
            labels: self.labels.iter().skip(n).cloned().collect(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for label in &self.labels {
            // Labels were bounded when parsed or built.
            out.push(label.len().min(MAX_LABEL) as u8);
            out.extend_from_slice(&label[..label.len().min(MAX_LABEL)]);
        }
        out.push(0);
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for label in &self.labels {
            write!(f, "{}.", String::from_utf8_lossy(label))?;
        }
        if self.labels.is_empty() {
            f.write_str(".")?;
        }
        Ok(())
    }
}

/// The client's EDNS record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The largest UDP answer the client takes.
    pub udp_size: u16,
    /// The EDNS version it speaks.
    pub version: u8,
    /// DNSSEC OK: echoed, as RFC 3225 asks.
    pub dnssec_ok: bool,
}

/// A query, as far as the responder reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The client's message id.
    pub id: u16,
    /// The operation (0: a standard query).
    pub opcode: u8,
    /// Recursion desired.
    pub rd: bool,
    /// Checking disabled: echoed.
    pub cd: bool,
    /// The question's name.
    pub name: Name,
    /// The question's type.
    pub qtype: u16,
    /// The question's class.
    pub qclass: u16,
    /// The client's EDNS record, if any.
    pub edns: Option<Edns>,
}

impl Query {
    /// Whether the question is of the Internet class (or any class).
    pub fn is_internet(&self) -> bool {
        self.qclass == CLASS_IN || self.qclass == rtype::ANY
    }

    /// The largest UDP answer this client takes.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => usize::from(e.udp_size.clamp(CLASSIC_UDP as u16, EDNS_SIZE)),
            None => CLASSIC_UDP,
        }
    }
}

/// What parsing found: a query, or an error with the id to answer it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A query to answer.
    Query(Query),
    /// A message that is not a query (a response, say): ignored, so two
    /// servers never answer each other in a loop.
    NotAQuery,
    /// A query that could not be read, with its id for the FORMERR answer.
    Malformed {
        /// The message id.
        id: u16,
        /// What was wrong.
        error: ParseError,
    },
}

/// Reads big-endian fields off a message, checking every bound.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).ok_or(ParseError::Truncated)?;
        let bytes = self.msg.get(self.pos..end).ok_or(ParseError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, ParseError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name, following compression pointers (RFC 1035 §4.1.4). Each
    /// pointer must point strictly before the one that led to it, so the
    /// walk ends however the message is made.
    fn name(&mut self) -> Result<Name, ParseError> {
        let mut labels = Vec::new();
        let mut wire_len = 1;
        let mut pos = self.pos;
        // Where reading goes on once the name is read: after its first pointer.
        let mut resume = None;
        let mut limit = pos;
        loop {
            let len = *self.msg.get(pos).ok_or(ParseError::Truncated)?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    pos += 1;
                    break;
                }
                0x00 => {
                    let len = usize::from(len);
                    let label = self
                        .msg
                        .get(pos + 1..pos + 1 + len)
                        .ok_or(ParseError::Truncated)?;
                    wire_len += len + 1;
                    if wire_len > MAX_NAME {
                        return Err(ParseError::NameTooLong);
                    }
                    labels.push(label.to_vec());
                    pos += 1 + len;
                }
                0xC0 => {
                    let low = *self.msg.get(pos + 1).ok_or(ParseError::Truncated)?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                    if target >= limit {
                        return Err(ParseError::BadPointer);
                    }
                    resume.get_or_insert(pos + 2);
                    limit = target;
                    pos = target;
                }
                _ => return Err(ParseError::BadLabel),
            }
        }
        self.pos = resume.unwrap_or(pos);
        Ok(Name { labels })
    }
}

/// Reads a message received by the responder.
pub fn parse(msg: &[u8]) -> Option<Parsed> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16().ok()?;
    let flags = r.u16().ok()?;
    if flags & 0x8000 != 0 {
        return Some(Parsed::NotAQuery);
    }
    Some(match parse_rest(&mut r, id, flags) {
        Ok(q) => Parsed::Query(q),
        Err(error) => Parsed::Malformed { id, error },
    })
}

fn parse_rest(r: &mut Reader<'_>, id: u16, flags: u16) -> Result<Query, ParseError> {
    let qdcount = r.u16()?;
    let ancount = r.u16()?;
    let nscount = r.u16()?;
    let arcount = r.u16()?;
    if qdcount != 1 {
        return Err(ParseError::QuestionCount(qdcount));
    }
    let name = r.name()?;
    let qtype = r.u16()?;
    let qclass = r.u16()?;
    let mut edns = None;
    // Queries carry no answers, but a message that does is still read
    // record by record to reach the OPT record in the additional section.
    let records = u32::from(ancount) + u32::from(nscount) + u32::from(arcount);
    for i in 0..records {
        r.name()?;
        let typ = r.u16()?;
        let class = r.u16()?;
        let ttl = r.u32()?;
        let len = r.u16()?;
        r.take(usize::from(len))?;
        let additional = i >= u32::from(ancount) + u32::from(nscount);
        if typ == rtype::OPT && additional {
            if edns.is_some() {
                return Err(ParseError::DuplicateOpt);
            }
            edns = Some(Edns {
                udp_size: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
    }
    Ok(Query {
        id,
        opcode: ((flags >> 11) & 0xF) as u8,
        rd: flags & 0x0100 != 0,
        cd: flags & 0x0010 != 0,
        name,
        qtype,
        qclass,
        edns,
    })
}

/// The data of an answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias.
    Cname(Name),
    /// A service's host and port (RFC 2782).
    Srv {
        /// Lower is tried first.
        priority: u16,
        /// Share among equal priorities.
        weight: u16,
        /// The port.
        port: u16,
        /// The host.
        target: Name,
    },
    /// The zone's authority, in negative answers (RFC 2308).
    Soa {
        /// The primary server.
        mname: Name,
        /// The responsible mailbox.
        rname: Name,
        /// The zone's serial.
        serial: u32,
        /// How long a negative answer may be cached.
        minimum: u32,
    },
}

impl RData {
    fn rtype(&self) -> u16 {
        match self {
            RData::A(_) => rtype::A,
            RData::Aaaa(_) => rtype::AAAA,
            RData::Cname(_) => rtype::CNAME,
            RData::Srv { .. } => rtype::SRV,
            RData::Soa { .. } => rtype::SOA,
        }
    }
}

/// One resource record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its owner name.
    pub name: Name,
    /// Seconds it may be cached.
    pub ttl: u32,
    /// Its data.
    pub data: RData,
}

/// An answer to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The response code (extended codes go partly into the OPT record).
    pub rcode: u16,
    /// Authoritative: set for names of the cluster domain.
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section (the SOA of a negative answer).
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additional: Vec<Record>,
}

impl Response {
    /// An answer with `rcode` and no records.
    pub fn empty(rcode: u16) -> Response {
        Response {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }

    /// The answer to `query` in wire form, at most `limit` bytes: one that
    /// does not fit loses its records and gets TC, so the client asks
    /// again over TCP.
    pub fn encode(&self, query: &Query, limit: usize) -> Vec<u8> {
        let full = self.encode_sections(query, true);
        if full.len() <= limit {
            return full;
        }
        let mut cut = self.encode_sections(query, false);
        cut[2] |= 0x02;
        cut
    }

    fn encode_sections(&self, query: &Query, with_records: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let mut flags: u16 = 0x8000 | (u16::from(query.opcode & 0xF) << 11) | 0x0080;
        if self.authoritative {
            flags |= 0x0400;
        }
        if query.rd {
            flags |= 0x0100;
        }
        if query.cd {
            flags |= 0x0010;
        }
        flags |= self.rcode & 0xF;
        let (answers, authority, additional): (&[Record], &[Record], &[Record]) = if with_records {
            (&self.answers, &self.authority, &self.additional)
        } else {
            (&[], &[], &[])
        };
        let opt = query.edns.is_some();
        out.extend_from_slice(&query.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        for count in [
            answers.len(),
            authority.len(),
            additional.len() + usize::from(opt),
        ] {
            out.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
        }
        query.name.encode(&mut out);
        out.extend_from_slice(&query.qtype.to_be_bytes());
        out.extend_from_slice(&query.qclass.to_be_bytes());
        for record in answers.iter().chain(authority).chain(additional) {
            encode_record(record, &query.name, &mut out);
        }
        if let Some(edns) = query.edns {
            // Root name, OPT, our UDP size, extended rcode and version 0,
            // the DO bit echoed, no options.
            out.push(0);
            out.extend_from_slice(&rtype::OPT.to_be_bytes());
            out.extend_from_slice(&EDNS_SIZE.to_be_bytes());
            out.push((self.rcode >> 4) as u8);
            out.push(0);
            out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        out
    }
}

fn encode_record(record: &Record, question: &Name, out: &mut Vec<u8>) {
    // Most answers are for the question's own name, which sits right
    // after the header: a pointer to it keeps them small.
    if record.name.lower_labels() == question.lower_labels() {
        out.extend_from_slice(&(0xC000u16 | HEADER as u16).to_be_bytes());
    } else {
        record.name.encode(out);
    }
    out.extend_from_slice(&record.data.rtype().to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    match &record.data {
        RData::A(ip) => out.extend_from_slice(&ip.octets()),
        RData::Aaaa(ip) => out.extend_from_slice(&ip.octets()),
        RData::Cname(name) => name.encode(out),
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            out.extend_from_slice(&priority.to_be_bytes());
            out.extend_from_slice(&weight.to_be_bytes());
            out.extend_from_slice(&port.to_be_bytes());
            target.encode(out);
        }
        RData::Soa {
            mname,
            rname,
            serial,
            minimum,
        } => {
            mname.encode(out);
            rname.encode(out);
            // Serial, then refresh, retry and expire as CoreDNS writes
            // them, then the negative-caching TTL.
            for v in [*serial, 7200, 1800, 86400, *minimum] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    let len = u16::try_from(out.len() - len_at - 2).unwrap_or(u16::MAX);
    out[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
}

/// The id of a message, if it has a header.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// A bare answer with `rcode` to a message that could not be read: its id,
/// the QR bit, no question.
pub fn bare_answer(id: u16, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(0x8000 | (rcode & 0xF)).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query as `dig` sends it: id, RD, one question, an OPT record.
    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut m = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        Name::parse(name).unwrap().encode(&mut m);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        if let Some(size) = edns {
            m.push(0);
            m.extend_from_slice(&rtype::OPT.to_be_bytes());
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
        }
        m
    }

    fn parsed(msg: &[u8]) -> Query {
        match parse(msg) {
            Some(Parsed::Query(q)) => q,
            other => panic!("not a query: {other:?}"),
        }
    }

    #[test]
    fn reads_a_query_with_edns() {
        let q = parsed(&query(
            "Nginx.default.svc.cluster.local.",
            rtype::A,
            Some(4096),
        ));
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(q.name.to_string(), "Nginx.default.svc.cluster.local.");
        assert_eq!(q.name.lower_labels()[0], "nginx");
        assert_eq!(q.qtype, rtype::A);
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), usize::from(EDNS_SIZE));
        assert_eq!(parsed(&query("a.", rtype::A, None)).udp_limit(), 512);
        assert_eq!(parsed(&query("a.", rtype::A, Some(100))).udp_limit(), 512);
    }

    #[test]
    fn follows_compression_pointers() {
        // Question "a.example." and, in the additional section, an A record
        // named by a pointer to "example." plus a label of its own.
        let mut m = vec![0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x01a\x07example\x00");
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend_from_slice(b"\x01b\xC0\x0E");
        m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        let q = parsed(&m);
        assert_eq!(q.name.to_string(), "a.example.");
        // The question itself may be a pointer chain too.
        let mut r = Reader { msg: &m, pos: 27 };
        assert_eq!(r.name().unwrap().to_string(), "b.example.");
        assert_eq!(r.pos, 31);
    }

    #[test]
    fn malformed_queries_are_errors_never_panics() {
        let good = query("nginx.default.svc.cluster.local.", rtype::A, Some(1232));
        let malformed = |m: &[u8]| match parse(m) {
            Some(Parsed::Malformed { error, .. }) => Some(error),
            Some(Parsed::Query(_)) => None,
            other => panic!("{other:?}"),
        };
        // No id and flags: nothing to answer.
        assert_eq!(parse(&good[..3]), None);
        // Every cut after them is an error.
        for end in 4..good.len() {
            assert!(malformed(&good[..end]).is_some(), "cut at {end}");
        }
        // A pointer to itself, and one pointing forward.
        let mut looped = good[..12].to_vec();
        looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(malformed(&looped), Some(ParseError::BadPointer));
        let mut forward = good[..12].to_vec();
        forward.extend_from_slice(&[0xC0, 20, 0, 1, 0, 1, 0, 0]);
        assert_eq!(malformed(&forward), Some(ParseError::BadPointer));
        // A pointer loop through two names: the second points at the first,
        // which points at the second.
        let mut two = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        two.extend_from_slice(&[0xC0, 18, 0, 1, 0, 1, 0xC0, 12]);
        assert_eq!(malformed(&two), Some(ParseError::BadPointer));
        // Reserved label types.
        let mut reserved = good[..12].to_vec();
        reserved.extend_from_slice(&[0x40, 0, 0, 1, 0, 1]);
        assert_eq!(malformed(&reserved), Some(ParseError::BadLabel));
        // A name over 255 bytes.
        let mut long = good[..12].to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(malformed(&long), Some(ParseError::NameTooLong));
        // Two questions, none, and two OPT records.
        let mut two_q = good.clone();
        two_q[5] = 2;
        assert_eq!(malformed(&two_q), Some(ParseError::QuestionCount(2)));
        let mut no_q = good.clone();
        no_q[5] = 0;
        assert_eq!(malformed(&no_q), Some(ParseError::QuestionCount(0)));
        let mut two_opt = good.clone();
        two_opt[11] = 2;
        two_opt.extend_from_slice(&good[good.len() - 11..]);
        assert_eq!(malformed(&two_opt), Some(ParseError::DuplicateOpt));
        // Counts far beyond the message.
        let mut counts = good.clone();
        counts[6..12].copy_from_slice(&[0xFF; 6]);
        assert_eq!(malformed(&counts), Some(ParseError::Truncated));
        // A response is not answered.
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse(&response), Some(Parsed::NotAQuery));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small xorshift generator: the same inputs on every run.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = query(
            "_http._tcp.nginx.default.svc.cluster.local.",
            rtype::SRV,
            Some(1232),
        );
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse(&random);
            // Mutations of a good query reach deeper than random bytes.
            let mut mutated = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % mutated.len();
                mutated[i] = next() as u8;
            }
            if let Some(Parsed::Query(q)) = parse(&mutated) {
                let answer = Response::empty(rcode::NXDOMAIN).encode(&q, 512);
                assert!(matches!(parse(&answer), Some(Parsed::NotAQuery)));
            }
        }
    }

    #[test]
    fn answers_point_at_the_question_and_truncate_to_the_limit() {
        let q = parsed(&query("nginx.default.svc.cluster.local.", rtype::A, None));
        let record = |i: u8| Record {
            name: q.name.clone(),
            ttl: 5,
            data: RData::A(Ipv4Addr::new(10, 0, 0, i)),
        };
        let small = Response {
            rcode: rcode::NOERROR,
            authoritative: true,
            answers: vec![record(1)],
            authority: Vec::new(),
            additional: Vec::new(),
        };
        let wire = small.encode(&q, 512);
        let question_end = 12 + 33 + 4;
        assert_eq!(wire.len(), question_end + 16);
        assert_eq!(&wire[question_end..question_end + 2], &[0xC0, 12]);
        assert_eq!(&wire[2..4], &[0x85, 0x80]); // QR AA RD RA, NOERROR
        assert_eq!(&wire[wire.len() - 4..], &[10, 0, 0, 1]);
        // 40 addresses do not fit in 512 bytes: TC and no records.
        let big = Response {
            answers: (0..40).map(record).collect(),
            ..small
        };
        let cut = big.encode(&q, 512);
        assert_eq!(cut.len(), question_end);
        assert_eq!(cut[2] & 0x02, 0x02);
        assert_eq!(&cut[6..8], &[0, 0]);
        assert!(big.encode(&q, 65535).len() > 512);
    }

    #[test]
    fn edns_is_echoed_with_the_extended_rcode() {
        let mut m = query("a.", rtype::A, Some(4096));
        // Version 1.
        let at = m.len() - 5;
        m[at] = 1;
        let q = parsed(&m);
        assert_eq!(q.edns.unwrap().version, 1);
        let wire = Response::empty(rcode::BADVERS).encode(&q, 4096);
        let opt = &wire[wire.len() - 11..];
        assert_eq!(&opt[..5], &[0, 0, 41, 0x04, 0xD0]); // OPT, size 1232
        assert_eq!(opt[5], 1); // BADVERS = 16: 1 in the upper bits
        assert_eq!(wire[3] & 0xF, 0);
        assert_eq!(&opt[7..9], &[0x80, 0]); // DO echoed
    }

    #[test]
    fn a_bare_answer_has_the_id_and_the_rcode() {
        assert_eq!(
            bare_answer(0xABCD, rcode::FORMERR),
            vec![0xAB, 0xCD, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(message_id(&[1]), None);
    }
}
