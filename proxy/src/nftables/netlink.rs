//! nf_tables over netlink, encoded by hand: one buffer per transaction
//! (batch begin, the messages, batch end), sent with one `sendmsg`, so the
//! kernel applies all of it or none of it.
//!
//! Why not libnftnl: its safe Rust binding lacks concatenated keys, verdict
//! maps, numgen and dynset, and reaching them through `nftnl-sys` costs an
//! FFI allocation per expression and per set element (10k services are
//! more than 100k elements). The wire format is a handful of nested TLVs that the
//! kernel documents in `uapi/linux/netfilter/nf_tables.h`; writing them
//! straight into one buffer keeps Orca free of C and of per-element
//! allocations, and the encoder is tested against the running kernel.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};

use super::ruleset::{Chain, Elem, Expr, Family, Op, Set, Verdict};

// Netlink and nfnetlink constants (uapi/linux/netlink.h, nfnetlink.h).
const NETLINK_NETFILTER: i32 = 12;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;

// nf_tables message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;

// Attributes (nf_tables.h).
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;

// Set flags and data types.
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

// Verdict codes.
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// Longest wait for the kernel's answer to a request.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Elements per NEWSETELEM message: the element list is one attribute,
/// whose length field has 16 bits.
const ELEMS_PER_MESSAGE: usize = 256;

/// A netlink attribute writer over the transaction buffer.
struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    fn put(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    fn be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn nest(&mut self, ty: u16, body: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        body(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    /// `nft_data` holding plain bytes.
    fn value(&mut self, ty: u16, bytes: &[u8]) {
        self.nest(ty, |a| a.put(NFTA_DATA_VALUE, bytes));
    }

    /// `nft_data` holding a verdict.
    fn verdict(&mut self, ty: u16, verdict: &Verdict) {
        let (code, chain) = match verdict {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) => (NFT_JUMP, Some(c.as_str())),
            Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
        };
        self.nest(ty, |a| {
            a.nest(NFTA_DATA_VERDICT, |a| {
                a.be32(NFTA_VERDICT_CODE, code as u32);
                if let Some(chain) = chain {
                    a.str(NFTA_VERDICT_CHAIN, chain);
                }
            })
        });
    }
}

/// One nf_tables transaction, encoded.
pub struct Batch {
    family: Family,
    buf: Vec<u8>,
    seq: u32,
    first_seq: u32,
    /// Messages so far, the batch begin included.
    messages: u32,
}

impl Batch {
    /// An empty transaction on tables of `family`; sequence numbers start
    /// at `seq`.
    pub fn new(seq: u32, family: Family) -> Self {
        let mut batch = Batch {
            family,
            buf: Vec::with_capacity(4096),
            seq,
            first_seq: seq,
            messages: 0,
        };
        batch.message(NFNL_MSG_BATCH_BEGIN, 0, 0, |_| {});
        batch
    }

    fn message(&mut self, ty: u16, flags: u16, family: u8, body: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (the subsystem, in the
        // batch delimiters only).
        let res_id = if family == 0 { NFNL_SUBSYS_NFTABLES } else { 0 };
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut Attrs { buf: &mut self.buf });
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.messages += 1;
    }

    fn nft(&mut self, msg: u16, flags: u16, body: impl FnOnce(&mut Attrs<'_>)) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            self.family.nfproto(),
            body,
        );
    }

    /// Appends one operation on `table`.
    pub fn push(&mut self, table: &str, op: &Op) {
        match op {
            Op::AddTable => self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, |a| {
                a.str(NFTA_TABLE_NAME, table)
            }),
            Op::DeleteTable => self.nft(NFT_MSG_DELTABLE, 0, |a| a.str(NFTA_TABLE_NAME, table)),
            Op::AddChain(chain) => self.add_chain(table, chain),
            Op::FlushChain(name) => self.nft(NFT_MSG_DELRULE, 0, |a| {
                a.str(NFTA_RULE_TABLE, table);
                a.str(NFTA_RULE_CHAIN, name);
            }),
            Op::DeleteChain(name) => self.nft(NFT_MSG_DELCHAIN, 0, |a| {
                a.str(NFTA_CHAIN_TABLE, table);
                a.str(NFTA_CHAIN_NAME, name);
            }),
            Op::AddRule { chain, exprs } => {
                self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |a| {
                    a.str(NFTA_RULE_TABLE, table);
                    a.str(NFTA_RULE_CHAIN, chain);
                    a.nest(NFTA_RULE_EXPRESSIONS, |a| {
                        for e in exprs {
                            a.nest(NFTA_LIST_ELEM, |a| expr(a, e));
                        }
                    });
                })
            }
            Op::AddSet(set) => self.add_set(table, set),
            Op::DeleteSet(name) => self.nft(NFT_MSG_DELSET, 0, |a| {
                a.str(NFTA_SET_TABLE, table);
                a.str(NFTA_SET_NAME, name);
            }),
            Op::AddElems { set, elems } => self.elems(table, set, elems, true),
            Op::DeleteElems { set, elems } => self.elems(table, set, elems, false),
        }
    }

    fn add_chain(&mut self, table: &str, chain: &Chain) {
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, &chain.name);
            if let Some(base) = &chain.base {
                a.nest(NFTA_CHAIN_HOOK, |a| {
                    a.be32(NFTA_HOOK_HOOKNUM, base.hook as u32);
                    a.be32(NFTA_HOOK_PRIORITY, base.priority as u32);
                });
                a.be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
                a.str(NFTA_CHAIN_TYPE, base.kind.name());
            }
        });
    }

    fn add_set(&mut self, table: &str, set: &Set) {
        let id = self.seq;
        self.nft(NFT_MSG_NEWSET, NLM_F_CREATE, |a| {
            a.str(NFTA_SET_TABLE, table);
            a.str(NFTA_SET_NAME, &set.name);
            let mut flags = 0;
            if set.data.is_some() {
                flags |= NFT_SET_MAP;
            }
            if set.timeout_ms.is_some() {
                flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
            }
            a.be32(NFTA_SET_FLAGS, flags);
            a.be32(NFTA_SET_KEY_TYPE, set.key.type_id());
            a.be32(NFTA_SET_KEY_LEN, set.key.len());
            match &set.data {
                Some(super::ruleset::SetData::Verdict) => {
                    a.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT)
                }
                Some(super::ruleset::SetData::Value(t)) => {
                    a.be32(NFTA_SET_DATA_TYPE, t.type_id());
                    a.be32(NFTA_SET_DATA_LEN, t.len());
                }
                None => {}
            }
            a.be32(NFTA_SET_ID, id);
            if let Some(ms) = set.timeout_ms {
                a.be64(NFTA_SET_TIMEOUT, ms);
            }
        });
    }

    fn elems(&mut self, table: &str, set: &str, elems: &[Elem], add: bool) {
        let (msg, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, 0)
        };
        for chunk in elems.chunks(ELEMS_PER_MESSAGE) {
            self.nft(msg, flags, |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
                a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
                    for e in chunk {
                        a.nest(NFTA_LIST_ELEM, |a| {
                            a.value(NFTA_SET_ELEM_KEY, &e.key);
                            match &e.data {
                                Some(super::ruleset::ElemData::Value(v)) if add => {
                                    a.value(NFTA_SET_ELEM_DATA, v)
                                }
                                Some(super::ruleset::ElemData::Verdict(v)) if add => {
                                    a.verdict(NFTA_SET_ELEM_DATA, v)
                                }
                                _ => {}
                            }
                        });
                    }
                });
            });
        }
    }

    /// Closes the transaction and returns its bytes, its first sequence
    /// number and its number of messages.
    fn finish(mut self) -> (Vec<u8>, u32, u32) {
        self.message(NFNL_MSG_BATCH_END, 0, 0, |_| {});
        (self.buf, self.first_seq, self.messages)
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch holds no operation yet.
    pub fn is_empty(&self) -> bool {
        self.messages <= 1
    }
}

// Expression attributes.
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 2;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFTA_DYNSET_SREG_DATA: u16 = 5;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

fn expr(a: &mut Attrs<'_>, e: &Expr) {
    a.str(NFTA_EXPR_NAME, e.name());
    a.nest(NFTA_EXPR_DATA, |a| match e {
        Expr::Immediate { dreg, data } => {
            a.be32(NFTA_IMMEDIATE_DREG, *dreg);
            a.value(NFTA_IMMEDIATE_DATA, data);
        }
        Expr::Verdict(v) => {
            a.be32(NFTA_IMMEDIATE_DREG, 0);
            a.verdict(NFTA_IMMEDIATE_DATA, v);
        }
        Expr::Payload {
            dreg,
            base,
            offset,
            len,
        } => {
            a.be32(NFTA_PAYLOAD_DREG, *dreg);
            a.be32(NFTA_PAYLOAD_BASE, *base as u32);
            a.be32(NFTA_PAYLOAD_OFFSET, *offset);
            a.be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Meta { dreg, key } => {
            a.be32(NFTA_META_KEY, *key as u32);
            a.be32(NFTA_META_DREG, *dreg);
        }
        Expr::MetaSet { sreg, key } => {
            a.be32(NFTA_META_KEY, *key as u32);
            a.be32(NFTA_META_SREG, *sreg);
        }
        Expr::Cmp { sreg, op, data } => {
            a.be32(NFTA_CMP_SREG, *sreg);
            a.be32(NFTA_CMP_OP, *op as u32);
            a.value(NFTA_CMP_DATA, data);
        }
        Expr::Bitwise {
            sreg,
            dreg,
            mask,
            xor,
        } => {
            a.be32(NFTA_BITWISE_SREG, *sreg);
            a.be32(NFTA_BITWISE_DREG, *dreg);
            a.be32(NFTA_BITWISE_LEN, mask.len() as u32);
            a.value(NFTA_BITWISE_MASK, mask);
            a.value(NFTA_BITWISE_XOR, xor);
        }
        Expr::Lookup {
            set,
            sreg,
            dreg,
            invert,
        } => {
            a.str(NFTA_LOOKUP_SET, set);
            a.be32(NFTA_LOOKUP_SREG, *sreg);
            if let Some(dreg) = dreg {
                a.be32(NFTA_LOOKUP_DREG, *dreg);
            }
            if *invert {
                a.be32(NFTA_LOOKUP_FLAGS, 1);
            }
        }
        Expr::Numgen { dreg, modulus } => {
            a.be32(NFTA_NG_DREG, *dreg);
            a.be32(NFTA_NG_MODULUS, *modulus);
            a.be32(NFTA_NG_TYPE, NFT_NG_RANDOM);
        }
        Expr::Dnat { family, addr, port } => {
            a.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            a.be32(NFTA_NAT_FAMILY, u32::from(family.nfproto()));
            a.be32(NFTA_NAT_REG_ADDR_MIN, *addr);
            a.be32(NFTA_NAT_REG_PROTO_MIN, *port);
        }
        Expr::Masquerade => a.be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY),
        Expr::RejectTcpReset => {
            a.be32(NFTA_REJECT_TYPE, NFT_REJECT_TCP_RST);
            a.put(NFTA_REJECT_ICMP_CODE, &[0]);
        }
        Expr::RejectIcmp(family) => {
            a.be32(NFTA_REJECT_TYPE, NFT_REJECT_ICMP_UNREACH);
            let code = match family {
                Family::V4 => ICMP_PORT_UNREACH,
                Family::V6 => ICMPV6_PORT_UNREACH,
            };
            a.put(NFTA_REJECT_ICMP_CODE, &[code]);
        }
        Expr::FibDaddrType { dreg } => {
            a.be32(NFTA_FIB_DREG, *dreg);
            a.be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            a.be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
        }
        Expr::Dynset { set, op, key, data } => {
            a.str(NFTA_DYNSET_SET_NAME, set);
            a.be32(NFTA_DYNSET_OP, *op as u32);
            a.be32(NFTA_DYNSET_SREG_KEY, *key);
            if let Some(data) = data {
                a.be32(NFTA_DYNSET_SREG_DATA, *data);
            }
        }
        Expr::Ct { dreg, key } => {
            a.be32(NFTA_CT_DREG, *dreg);
            a.be32(NFTA_CT_KEY, *key as u32);
        }
        Expr::Counter => {
            a.be64(NFTA_COUNTER_BYTES, 0);
            a.be64(NFTA_COUNTER_PACKETS, 0);
        }
    });
}

/// A netlink socket to the kernel's nf_tables.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    recv: Vec<u8>,
}

/// A transaction the kernel refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("netlink: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused one message; the transaction was rolled back.
    #[error("nf_tables refused `{what}`: {error}")]
    Refused {
        /// The operation the kernel refused.
        what: String,
        /// The kernel's error.
        error: io::Error,
    },
}

impl Netlink {
    /// Opens a socket in the network namespace at `netns` (a path like
    /// `/run/netns/NAME`), or in the calling thread's. The socket stays in
    /// that namespace for its whole life.
    pub fn open(netns: Option<&Path>) -> io::Result<Self> {
        let socket = socket_in(netns)?;
        Ok(Netlink {
            socket,
            seq: std::process::id().wrapping_shl(16),
            recv: vec![0; 1 << 20],
        })
    }

    /// A new transaction on tables of `family`, with fresh sequence numbers.
    pub fn batch(&mut self, family: Family) -> Batch {
        Batch::new(self.seq, family)
    }

    /// Sends `batch` as one transaction and waits for the kernel's verdict.
    pub fn commit(&mut self, batch: Batch) -> Result<(), Error> {
        let (buf, first, count) = batch.finish();
        self.seq = first.wrapping_add(count + 1);
        // One transaction is one skb: the socket must take it whole.
        set_int_option(
            &self.socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            i32::try_from(buf.len() + (64 << 10)).unwrap_or(i32::MAX),
        )?;
        self.socket.send(&buf)?;
        // The kernel handles the batch inside `send`; a request sent after
        // it is answered after every error the batch produced.
        let probe = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&20u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&probe.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[0, 0, 0, 0]);
        self.socket.send(&msg)?;

        let mut first_error: Option<Error> = None;
        loop {
            let n = (&self.socket).read(&mut self.recv)?;
            for msg in messages(&self.recv[..n]) {
                let Some(code) = msg.error() else {
                    continue;
                };
                if msg.seq == probe {
                    return first_error.map_or(Ok(()), Err);
                }
                // Answers outside this batch are leftovers of an exchange
                // that failed half-way; they are not ours.
                let index = msg.seq.wrapping_sub(first);
                if code != 0 && first_error.is_none() && index < count {
                    first_error = Some(Error::Refused {
                        what: messages(&buf)
                            .nth(index as usize)
                            .map_or_else(|| "?".into(), |m| describe(&m)),
                        error: io::Error::from_raw_os_error(-code),
                    });
                }
            }
        }
    }
}

/// One netlink message as received.
pub(super) struct Message<'a> {
    /// Its type.
    pub ty: u16,
    /// Its sequence number.
    pub seq: u32,
    /// What follows the 16-byte header.
    pub body: &'a [u8],
}

impl Message<'_> {
    /// For an error (or ack) message, its code: 0 or a negative errno.
    pub fn error(&self) -> Option<i32> {
        let code = self.body.get(..4)?;
        (self.ty == NLMSG_ERROR).then(|| i32::from_ne_bytes(code.try_into().expect("4 bytes")))
    }
}

/// The messages in what one read returned; a truncated tail is dropped.
pub(super) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        let header = buf.get(..16)?;
        let len = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let msg = Message {
            ty: u16::from_ne_bytes(header[4..6].try_into().expect("2 bytes")),
            seq: u32::from_ne_bytes(header[8..12].try_into().expect("4 bytes")),
            body: &buf[16..len],
        };
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some(msg)
    })
}

/// What one message of a batch does, in nft's words, for an error: read
/// back from the message so a batch keeps no description per message.
fn describe(msg: &Message<'_>) -> String {
    // The attributes follow the 4-byte nfgenmsg.
    let attrs = || attributes(msg.body.get(4..).unwrap_or_default());
    let name = |ty: u16| {
        attrs()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| {
                String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned()
            })
            .unwrap_or_default()
    };
    let elements = || {
        attrs()
            .find(|(t, _)| *t == NFTA_SET_ELEM_LIST_ELEMENTS)
            .map_or(0, |(_, list)| attributes(list).count())
    };
    match msg.ty {
        NFNL_MSG_BATCH_BEGIN => "the transaction's commit".into(),
        NFNL_MSG_BATCH_END => "batch end".into(),
        ty => match ty & 0xff {
            NFT_MSG_NEWTABLE => format!("add table {}", name(NFTA_TABLE_NAME)),
            NFT_MSG_DELTABLE => format!("delete table {}", name(NFTA_TABLE_NAME)),
            NFT_MSG_NEWCHAIN => format!("add chain {}", name(NFTA_CHAIN_NAME)),
            NFT_MSG_DELCHAIN => format!("delete chain {}", name(NFTA_CHAIN_NAME)),
            NFT_MSG_NEWRULE => format!("add rule to {}", name(NFTA_RULE_CHAIN)),
            NFT_MSG_DELRULE => format!("flush chain {}", name(NFTA_RULE_CHAIN)),
            NFT_MSG_NEWSET => format!("add set {}", name(NFTA_SET_NAME)),
            NFT_MSG_DELSET => format!("delete set {}", name(NFTA_SET_NAME)),
            NFT_MSG_NEWSETELEM => format!(
                "add {} elements of {}",
                elements(),
                name(NFTA_SET_ELEM_LIST_SET)
            ),
            NFT_MSG_DELSETELEM => format!(
                "delete {} elements of {}",
                elements(),
                name(NFTA_SET_ELEM_LIST_SET)
            ),
            other => format!("message {other}"),
        },
    }
}

/// The attributes in `buf`, as (type without flags, value).
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(buf.get(..2)?.try_into().expect("2 bytes")) as usize;
        let ty = u16::from_ne_bytes(buf.get(2..4)?.try_into().expect("2 bytes"));
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((ty & 0x3fff, value))
    })
}

/// A netfilter netlink socket in the network namespace at `netns`, or in
/// the calling thread's; it stays in that namespace for its whole life.
pub(super) fn socket_in(netns: Option<&Path>) -> io::Result<Socket> {
    match netns {
        None => new_socket(),
        Some(path) => {
            let path = path.to_path_buf();
            // Only this short-lived thread enters the namespace.
            std::thread::spawn(move || {
                let ns = std::fs::File::open(&path)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                new_socket()
            })
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
        }
    }
}

fn new_socket() -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(NETLINK_NETFILTER)),
    )?;
    // Errors carry only the header of the refused message, not the
    // message itself, and extended acks carry the kernel's reason.
    set_int_option(&socket, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
    set_int_option(&socket, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
    set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
    // The kernel answers within the send; a lost answer (a receive buffer
    // overrun) must fail the exchange, not hang the proxy.
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(socket)
}

/// Sets an integer socket option that socket2 does not expose.
#[allow(unsafe_code)]
fn set_int_option(socket: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        while !m.len().is_multiple_of(4) {
            m.push(0);
        }
        m
    }

    #[test]
    fn messages_split_acks_errors_and_drop_a_truncated_tail() {
        let mut buf = message(NLMSG_ERROR, 7, &0i32.to_ne_bytes());
        buf.extend(message(NLMSG_ERROR, 8, &(-2i32).to_ne_bytes()));
        buf.extend(message(0x0a10, 9, b"abc"));
        let whole = buf.len();
        buf.extend(message(NLMSG_ERROR, 10, &0i32.to_ne_bytes()));
        buf.truncate(whole + 10);
        let got: Vec<(u32, Option<i32>)> = messages(&buf).map(|m| (m.seq, m.error())).collect();
        assert_eq!(got, [(7, Some(0)), (8, Some(-2)), (9, None)]);
    }

    #[test]
    fn a_refused_message_is_described_from_its_own_bytes() {
        use super::super::ruleset::{Field, Key};
        let elem = |i: u8| Elem {
            key: vec![i, 0, 0, 0],
            data: None,
        };
        let mut batch = Batch::new(100, Family::V4);
        for op in [
            Op::AddTable,
            Op::DeleteTable,
            Op::AddChain(Chain {
                name: "svc-a".into(),
                base: None,
            }),
            Op::AddRule {
                chain: "svc-a".into(),
                exprs: vec![Expr::Verdict(Verdict::Accept)],
            },
            Op::FlushChain("svc-a".into()),
            Op::DeleteChain("svc-a".into()),
            Op::AddSet(Set {
                name: "clients".into(),
                key: Key(vec![Field::Ipv4]),
                data: None,
                timeout_ms: None,
            }),
            Op::DeleteSet("clients".into()),
            Op::AddElems {
                set: "clients".into(),
                elems: (0..3).map(elem).collect(),
            },
            Op::DeleteElems {
                set: "clients".into(),
                elems: vec![elem(1)],
            },
        ] {
            batch.push("orca", &op);
        }
        let (buf, first, count) = batch.finish();
        assert_eq!(first, 100);
        let described: Vec<String> = messages(&buf).map(|m| describe(&m)).collect();
        assert_eq!(described.len(), count as usize);
        assert_eq!(
            described,
            [
                "the transaction's commit",
                "add table orca",
                "delete table orca",
                "add chain svc-a",
                "add rule to svc-a",
                "flush chain svc-a",
                "delete chain svc-a",
                "add set clients",
                "delete set clients",
                "add 3 elements of clients",
                "delete 1 elements of clients",
                "batch end",
            ]
        );
    }
}
