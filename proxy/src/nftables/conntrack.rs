//! Forgetting UDP flows over ctnetlink. A UDP "connection" lives in
//! conntrack for as long as the client keeps sending (and two minutes
//! after), and every datagram follows the translation of the first: when
//! an endpoint leaves a Service, its clients would keep talking to it. So
//! after such a sync, the entries translated to that endpoint are deleted
//! and the next datagram is balanced afresh, as kube-proxy does.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use socket2::Socket;

use super::netlink::messages;
use super::proxier::UdpFlow;
use super::ruleset::Family;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;
const ENOENT: i32 = 2;

/// The conntrack table of one network namespace.
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    recv: Vec<u8>,
}

/// One direction of a conntrack entry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// Iterates the attributes in `buf`: (type without flags, payload, the
/// whole attribute).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let item = (ty, &buf[4..len], &buf[..len]);
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some(item)
    })
}

fn ip(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(payload).ok()?,
        ))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(payload).ok()?,
        ))),
        _ => None,
    }
}

fn port(payload: &[u8]) -> u16 {
    payload
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

fn tuple(payload: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (ty, value, _) in attrs(payload) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, v, _) in attrs(value) {
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = ip(v),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = ip(v),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, v, _) in attrs(value) {
                    match ty {
                        CTA_PROTO_NUM => t.proto = v.first().copied().unwrap_or(0),
                        CTA_PROTO_SRC_PORT => t.sport = port(v),
                        CTA_PROTO_DST_PORT => t.dport = port(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// Whether an entry (its original and reply directions) is a client's
/// traffic translated to one of `flows`.
fn is_stale(orig: &Tuple, reply: &Tuple, flows: &[UdpFlow]) -> bool {
    orig.proto == IPPROTO_UDP
        // Translated: the answer does not come from where the client sent.
        && orig.dst != reply.src
        && flows.iter().any(|f| {
            reply.src == Some(f.endpoint.ip())
                && reply.sport == f.endpoint.port()
                && orig.dport == f.dport
                && f.dst.is_none_or(|dst| orig.dst == Some(dst))
        })
}

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: Family) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family.nfproto(), 0, 0, 0]);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

impl Conntrack {
    /// Opens ctnetlink in the network namespace at `netns`, or the
    /// process's own.
    pub fn open(netns: Option<&Path>) -> io::Result<Self> {
        Ok(Conntrack {
            socket: super::netlink::socket_in(netns)?,
            seq: std::process::id().wrapping_shl(20),
            recv: vec![0; 1 << 20],
        })
    }

    /// Deletes the UDP entries of `family` translated to the endpoints of
    /// `flows`; returns how many were deleted.
    pub fn forget_udp(&mut self, family: Family, flows: &[UdpFlow]) -> io::Result<usize> {
        if flows.is_empty() {
            return Ok(0);
        }
        // Dump the table, keep the original tuples of stale entries.
        self.seq = self.seq.wrapping_add(1);
        let dump_seq = self.seq;
        let mut msg = Vec::with_capacity(20);
        let start = header(&mut msg, IPCTNL_MSG_CT_GET, NLM_F_DUMP, dump_seq, family);
        finish(&mut msg, start);
        self.socket.send(&msg)?;
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        'dump: loop {
            let n = (&self.socket).read(&mut self.recv)?;
            for msg in messages(&self.recv[..n]) {
                match (msg.ty, msg.error()) {
                    (NLMSG_DONE, _) => break 'dump,
                    (_, Some(code)) if code != 0 => {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    (ty, None) if ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                        // The body starts with the 4-byte nfgenmsg.
                        let (mut orig, mut reply, mut kept) = (None, None, Vec::new());
                        for (ty, value, whole) in attrs(msg.body.get(4..).unwrap_or_default()) {
                            match ty {
                                CTA_TUPLE_ORIG => {
                                    orig = Some(tuple(value));
                                    kept.extend_from_slice(whole);
                                }
                                CTA_TUPLE_REPLY => reply = Some(tuple(value)),
                                CTA_ZONE => kept.extend_from_slice(whole),
                                _ => {}
                            }
                        }
                        if let (Some(o), Some(r)) = (orig, reply)
                            && is_stale(&o, &r, flows)
                        {
                            doomed.push(kept);
                        }
                    }
                    _ => {}
                }
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        // One request per entry, all in one send; every one is answered.
        let mut msg = Vec::new();
        for attrs in &doomed {
            self.seq = self.seq.wrapping_add(1);
            let start = header(&mut msg, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, self.seq, family);
            msg.extend_from_slice(attrs);
            finish(&mut msg, start);
        }
        self.socket.send(&msg)?;
        let (mut answered, mut deleted) = (0, 0);
        while answered < doomed.len() {
            let n = (&self.socket).read(&mut self.recv)?;
            for code in messages(&self.recv[..n]).filter_map(|m| m.error()) {
                answered += 1;
                match -code {
                    0 => deleted += 1,
                    // Expired meanwhile: nothing to forget.
                    ENOENT => {}
                    errno => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src: Some(src.parse().unwrap()),
            dst: Some(dst.parse().unwrap()),
            proto: IPPROTO_UDP,
            sport,
            dport,
        }
    }

    #[test]
    fn only_translated_udp_to_a_departed_endpoint_is_stale() {
        let flows = [
            UdpFlow {
                dst: Some("10.96.0.10".parse().unwrap()),
                dport: 53,
                endpoint: "10.244.1.2:5353".parse().unwrap(),
            },
            UdpFlow {
                dst: None,
                dport: 30053,
                endpoint: "10.244.1.2:5353".parse().unwrap(),
            },
        ];
        let client = "10.244.9.9";
        // Through the ClusterIP to the endpoint.
        let orig = t(client, "10.96.0.10", 40000, 53);
        let reply = t("10.244.1.2", client, 5353, 40000);
        assert!(is_stale(&orig, &reply, &flows));
        // Through the NodePort, on any node address.
        let orig = t(client, "192.168.77.1", 40000, 30053);
        assert!(is_stale(&orig, &reply, &flows));
        // Straight to the pod: no translation, not ours.
        let orig = t(client, "10.244.1.2", 40000, 5353);
        assert!(!is_stale(&orig, &reply, &flows));
        // Another endpoint, another port, TCP: kept.
        let orig = t(client, "10.96.0.10", 40000, 53);
        assert!(!is_stale(
            &orig,
            &t("10.244.2.2", client, 5353, 40000),
            &flows
        ));
        assert!(!is_stale(
            &orig,
            &t("10.244.1.2", client, 5354, 40000),
            &flows
        ));
        let mut tcp = orig;
        tcp.proto = 6;
        assert!(!is_stale(&tcp, &reply, &flows));
    }

    const NLA_F_NESTED: u16 = 0x8000;

    #[test]
    fn tuples_parse_from_nested_attributes() {
        fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
            let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(payload);
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
            v
        }
        let ip = [
            attr(CTA_IP_V4_SRC, &[10, 0, 0, 1]),
            attr(CTA_IP_V4_DST, &[10, 96, 0, 10]),
        ]
        .concat();
        let proto = [
            attr(CTA_PROTO_NUM, &[17]),
            attr(CTA_PROTO_SRC_PORT, &40000u16.to_be_bytes()),
            attr(CTA_PROTO_DST_PORT, &53u16.to_be_bytes()),
        ]
        .concat();
        let body = [
            attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
        ]
        .concat();
        assert_eq!(tuple(&body), t("10.0.0.1", "10.96.0.10", 40000, 53));
    }
}
