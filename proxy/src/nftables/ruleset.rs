//! The nf_tables objects the node proxy programs, as plain data: the sync
//! logic emits [`Op`]s, the netlink side encodes them, and [`Model`] (the
//! fake the unit tests use) applies them with the kernel's rules and renders
//! the result as nft-like text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The address family of a table: Orca keeps one table per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip`.
    V4,
    /// `ip6`.
    V6,
}

impl Family {
    /// The family an address belongs to.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The netfilter protocol family number.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::V4 => 2,
            Family::V6 => 10,
        }
    }

    /// nft's name of the family.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The address field type.
    pub fn addr(self) -> Field {
        match self {
            Family::V4 => Field::Ipv4,
            Family::V6 => Field::Ipv6,
        }
    }

    /// 32-bit registers an address takes.
    pub fn addr_regs(self) -> u32 {
        match self {
            Family::V4 => 1,
            Family::V6 => 4,
        }
    }

    /// Offset of the source address in the IP header.
    pub fn saddr_offset(self) -> u32 {
        match self {
            Family::V4 => 12,
            Family::V6 => 8,
        }
    }

    /// Offset of the destination address in the IP header.
    pub fn daddr_offset(self) -> u32 {
        match self {
            Family::V4 => 16,
            Family::V6 => 24,
        }
    }
}

/// A netfilter hook of the `ip` and `ip6` families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing.
    Prerouting = 0,
    /// To a local socket.
    Input = 1,
    /// Routed through.
    Forward = 2,
    /// From a local socket.
    Output = 3,
    /// After routing.
    Postrouting = 4,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Address translation; sees the first packet of each connection.
    Nat,
    /// Filtering; sees every packet.
    Filter,
}

impl ChainKind {
    /// The kernel's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Nat => "nat",
            ChainKind::Filter => "filter",
        }
    }
}

/// Where a base chain hooks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// The hook.
    pub hook: Hook,
    /// Lower runs first (conntrack is at -200, DNAT at -100).
    pub priority: i32,
    /// The chain type.
    pub kind: ChainKind,
}

/// A chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Set for chains the kernel calls from a hook.
    pub base: Option<BaseChain>,
}

/// What a rule or a verdict-map element decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Let the packet through.
    Accept,
    /// Drop it silently.
    Drop,
    /// Back to the calling chain.
    Return,
    /// Call a chain, then continue here.
    Jump(String),
    /// Continue in a chain, never coming back.
    Goto(String),
}

/// One field of a set key or map value (nft's datatypes; the ids are
/// nft's, so `nft list` prints the elements readably).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// An IPv4 address.
    Ipv4 = 7,
    /// An IPv6 address (four registers).
    Ipv6 = 8,
    /// An IP protocol number (one byte).
    Proto = 12,
    /// A port, network byte order (two bytes).
    Port = 13,
    /// A 32-bit integer in host byte order.
    Mark = 19,
}

impl Field {
    /// Bytes the field takes in a key: whole 32-bit registers.
    pub fn width(self) -> usize {
        match self {
            Field::Ipv6 => 16,
            _ => 4,
        }
    }
}

/// A (possibly concatenated) key or value type: each field takes whole
/// 32-bit registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(pub Vec<Field>);

impl Key {
    /// nft's type id of the concatenation.
    pub fn type_id(&self) -> u32 {
        self.0.iter().fold(0, |acc, f| (acc << 6) | *f as u32)
    }

    /// The length in bytes, every field padded to four.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|f| f.width() as u32).sum()
    }

    /// Whether the key has no field (never true for a real set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a map maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    /// A verdict (a verdict map).
    Verdict,
    /// A value.
    Value(Key),
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Its name.
    pub name: String,
    /// The key type.
    pub key: Key,
    /// For maps, the value type.
    pub data: Option<SetData>,
    /// For sets the rules fill (session affinity), the element lifetime.
    pub timeout_ms: Option<u64>,
}

/// A map element's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemData {
    /// Raw bytes.
    Value(Vec<u8>),
    /// A verdict.
    Verdict(Verdict),
}

/// A set element: the key bytes and, in a map, the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Elem {
    /// The key, fields padded to four bytes each.
    pub key: Vec<u8>,
    /// The value, in maps.
    pub data: Option<ElemData>,
}

/// Encodes fields into a key or value, each padded to four bytes.
#[derive(Debug, Default)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    /// An address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => self.0.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => self.0.extend_from_slice(&v6.octets()),
        }
        self
    }

    /// A protocol number.
    pub fn proto(mut self, proto: u8) -> Self {
        self.0.extend_from_slice(&[proto, 0, 0, 0]);
        self
    }

    /// A port.
    pub fn port(mut self, port: u16) -> Self {
        self.0.extend_from_slice(&port.to_be_bytes());
        self.0.extend_from_slice(&[0, 0]);
        self
    }

    /// A host-order integer.
    pub fn mark(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// The bytes.
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

/// Where a payload load reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The IP header.
    Network = 1,
    /// The TCP/UDP header.
    Transport = 2,
}

/// Packet metadata keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The packet mark.
    Mark = 3,
    /// The transport protocol.
    L4Proto = 16,
}

/// Conntrack keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    /// new / established / related bits.
    State = 0,
    /// Status bits (the DNAT bit among them).
    Status = 2,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq = 0,
    /// Not equal.
    Neq = 1,
}

/// Dynamic set operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DynsetOp {
    /// Add if absent.
    Add = 0,
    /// Add if absent, refresh the timeout if present.
    Update = 1,
}

/// The first 32-bit register (`NFT_REG32_00`); keys are concatenated in
/// consecutive registers.
pub const R0: u32 = 8;

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load constant bytes.
    Immediate {
        /// Destination register.
        dreg: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Decide.
    Verdict(Verdict),
    /// Load packet bytes.
    Payload {
        /// Destination register.
        dreg: u32,
        /// Header.
        base: Base,
        /// Offset in the header.
        offset: u32,
        /// Bytes.
        len: u32,
    },
    /// Load metadata.
    Meta {
        /// Destination register.
        dreg: u32,
        /// Which.
        key: MetaKey,
    },
    /// Store metadata.
    MetaSet {
        /// Source register.
        sreg: u32,
        /// Which.
        key: MetaKey,
    },
    /// Compare a register with constant bytes; stop the rule if false.
    Cmp {
        /// Register.
        sreg: u32,
        /// Operator.
        op: CmpOp,
        /// Bytes to compare with.
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise {
        /// Source.
        sreg: u32,
        /// Destination.
        dreg: u32,
        /// Mask.
        mask: Vec<u8>,
        /// Xor.
        xor: Vec<u8>,
    },
    /// Look the key in `sreg..` up in a set (or map, with `dreg`; a
    /// verdict map with `dreg` 0); stop the rule if absent.
    Lookup {
        /// The set.
        set: String,
        /// First key register.
        sreg: u32,
        /// Where a map puts the value.
        dreg: Option<u32>,
        /// Match when absent instead.
        invert: bool,
    },
    /// A random number in `0..modulus`, host order.
    Numgen {
        /// Destination.
        dreg: u32,
        /// Modulus.
        modulus: u32,
    },
    /// Destination NAT to the address in `addr` and the port in `port`.
    Dnat {
        /// The addresses' family.
        family: Family,
        /// Address register.
        addr: u32,
        /// Port register.
        port: u32,
    },
    /// Source NAT to the outgoing interface's address, random ports.
    Masquerade,
    /// Answer with a TCP reset.
    RejectTcpReset,
    /// Answer with ICMP (or ICMPv6) port unreachable.
    RejectIcmp(Family),
    /// The route type of the destination address (host order u32).
    FibDaddrType {
        /// Destination.
        dreg: u32,
    },
    /// Add or refresh an element of a set from the packet path.
    Dynset {
        /// The set.
        set: String,
        /// Operation.
        op: DynsetOp,
        /// Key register.
        key: u32,
        /// Value register, for maps.
        data: Option<u32>,
    },
    /// Load conntrack state.
    Ct {
        /// Destination.
        dreg: u32,
        /// Which.
        key: CtKey,
    },
    /// Count packets and bytes.
    Counter,
}

impl Expr {
    /// The kernel's expression name.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Numgen { .. } => "numgen",
            Expr::Dnat { .. } => "nat",
            Expr::Masquerade => "masq",
            Expr::RejectTcpReset | Expr::RejectIcmp(_) => "reject",
            Expr::FibDaddrType { .. } => "fib",
            Expr::Dynset { .. } => "dynset",
            Expr::Ct { .. } => "ct",
            Expr::Counter => "counter",
        }
    }
}

/// One change to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create the table if absent.
    AddTable,
    /// Delete the table and everything in it.
    DeleteTable,
    /// Create a chain if absent.
    AddChain(Chain),
    /// Remove every rule of a chain.
    FlushChain(String),
    /// Delete a chain (and its rules); nothing may refer to it.
    DeleteChain(String),
    /// Append a rule.
    AddRule {
        /// The chain.
        chain: String,
        /// The rule's expressions.
        exprs: Vec<Expr>,
    },
    /// Create a set or map.
    AddSet(Set),
    /// Delete a set; no rule may use it.
    DeleteSet(String),
    /// Add elements; adding one that exists with another value fails.
    AddElems {
        /// The set.
        set: String,
        /// The elements.
        elems: Vec<Elem>,
    },
    /// Delete elements; deleting one that is absent fails.
    DeleteElems {
        /// The set.
        set: String,
        /// The elements (values ignored).
        elems: Vec<Elem>,
    },
}

/// Where a transaction's operations go, in order, as they are planned: a
/// list for the model, the netlink batch for the kernel, so a full sync
/// never holds its whole operation list.
pub trait Sink {
    /// Takes the next operation.
    fn push(&mut self, op: Op);
}

impl Sink for Vec<Op> {
    fn push(&mut self, op: Op) {
        Vec::push(self, op);
    }
}

/// A refusal of [`Model::apply`], worded like the kernel's errno.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

#[derive(Debug, Clone, Default)]
struct ModelChain {
    base: Option<BaseChain>,
    rules: Vec<Vec<Expr>>,
}

#[derive(Debug, Clone)]
struct ModelSet {
    def: Set,
    elems: BTreeMap<Vec<u8>, Option<ElemData>>,
}

/// The in-memory fake of the kernel table: applies operations with the
/// kernel's checks (a transaction either applies whole or not at all) and
/// renders the table as text.
#[derive(Debug, Clone, Default)]
pub struct Model {
    table: Option<(BTreeMap<String, ModelChain>, BTreeMap<String, ModelSet>)>,
}

impl Model {
    /// Applies one transaction atomically.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), ModelError> {
        let mut next = self.clone();
        for op in ops {
            next.apply_one(op)?;
        }
        next.check_references()?;
        *self = next;
        Ok(())
    }

    fn apply_one(&mut self, op: &Op) -> Result<(), ModelError> {
        let err = |m: String| Err(ModelError(m));
        if let Op::AddTable = op {
            self.table.get_or_insert_with(Default::default);
            return Ok(());
        }
        let Some((chains, sets)) = &mut self.table else {
            return err(format!("{op:?}: no such table"));
        };
        match op {
            Op::AddTable => {}
            Op::DeleteTable => self.table = None,
            Op::AddChain(c) => {
                chains.entry(c.name.clone()).or_insert_with(|| ModelChain {
                    base: c.base.clone(),
                    rules: Vec::new(),
                });
            }
            Op::FlushChain(name) => match chains.get_mut(name) {
                Some(c) => c.rules.clear(),
                None => return err(format!("flush chain {name}: no such chain")),
            },
            Op::DeleteChain(name) => {
                if chains.remove(name).is_none() {
                    return err(format!("delete chain {name}: no such chain"));
                }
            }
            Op::AddRule { chain, exprs } => {
                // The kernel resolves what a rule names as it reads the
                // message: a chain or set added later in the same
                // transaction is not there yet.
                for e in exprs {
                    let known = match e {
                        Expr::Verdict(Verdict::Jump(c) | Verdict::Goto(c)) => {
                            chains.contains_key(c)
                        }
                        Expr::Lookup { set, .. } | Expr::Dynset { set, .. } => {
                            sets.contains_key(set)
                        }
                        _ => true,
                    };
                    if !known {
                        return err(format!("add rule to {chain}: {e:?} names nothing yet"));
                    }
                }
                match chains.get_mut(chain) {
                    Some(c) => c.rules.push(exprs.clone()),
                    None => return err(format!("add rule to {chain}: no such chain")),
                }
            }
            Op::AddSet(s) => {
                sets.entry(s.name.clone()).or_insert_with(|| ModelSet {
                    def: s.clone(),
                    elems: BTreeMap::new(),
                });
            }
            Op::DeleteSet(name) => {
                if sets.remove(name).is_none() {
                    return err(format!("delete set {name}: no such set"));
                }
            }
            Op::AddElems { set, elems } => {
                let Some(s) = sets.get_mut(set) else {
                    return err(format!("add elements to {set}: no such set"));
                };
                for e in elems {
                    if e.key.len() != s.def.key.len() as usize {
                        return err(format!("add element to {set}: key length"));
                    }
                    if let Some(ElemData::Verdict(Verdict::Jump(c) | Verdict::Goto(c))) = &e.data
                        && !chains.contains_key(c)
                    {
                        return err(format!("add element to {set}: no chain {c} yet"));
                    }
                    match s.elems.get(&e.key) {
                        Some(d) if *d != e.data => {
                            return err(format!("add element to {set}: exists with another value"));
                        }
                        _ => {
                            s.elems.insert(e.key.clone(), e.data.clone());
                        }
                    }
                }
            }
            Op::DeleteElems { set, elems } => {
                let Some(s) = sets.get_mut(set) else {
                    return err(format!("delete elements of {set}: no such set"));
                };
                for e in elems {
                    if s.elems.remove(&e.key).is_none() {
                        return err(format!("delete element of {set}: no such element"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every chain and set a rule or element names must still exist once
    /// the transaction is applied (deletions included); what a message
    /// names must exist when it is read, which `apply_one` checks.
    fn check_references(&self) -> Result<(), ModelError> {
        let Some((chains, sets)) = &self.table else {
            return Ok(());
        };
        let chain_ok = |v: &Verdict| match v {
            Verdict::Jump(c) | Verdict::Goto(c) => chains.contains_key(c),
            _ => true,
        };
        for (name, c) in chains {
            for rule in &c.rules {
                for e in rule {
                    let ok = match e {
                        Expr::Verdict(v) => chain_ok(v),
                        Expr::Lookup { set, .. } | Expr::Dynset { set, .. } => {
                            sets.contains_key(set)
                        }
                        _ => true,
                    };
                    if !ok {
                        return Err(ModelError(format!(
                            "chain {name}: dangling reference in {e:?}"
                        )));
                    }
                }
            }
        }
        for (name, s) in sets {
            for d in s.elems.values() {
                if let Some(ElemData::Verdict(v)) = d
                    && !chain_ok(v)
                {
                    return Err(ModelError(format!(
                        "set {name}: element to a missing chain {v:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The elements of a set, sorted by key.
    pub fn elements(&self, set: &str) -> Vec<Elem> {
        self.table
            .as_ref()
            .and_then(|(_, sets)| sets.get(set))
            .map(|s| {
                s.elems
                    .iter()
                    .map(|(key, data)| Elem {
                        key: key.clone(),
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rules of a chain, in order.
    pub fn rules(&self, chain: &str) -> Option<Vec<Vec<Expr>>> {
        let (chains, _) = self.table.as_ref()?;
        chains.get(chain).map(|c| c.rules.clone())
    }

    /// Number of rules and elements in the table.
    pub fn counts(&self) -> (usize, usize) {
        self.table.as_ref().map_or((0, 0), |(chains, sets)| {
            (
                chains.values().map(|c| c.rules.len()).sum(),
                sets.values().map(|s| s.elems.len()).sum(),
            )
        })
    }

    /// The table as nft-like text: chains with their rules, sets with
    /// their elements, all sorted by name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Some((chains, sets)) = &self.table else {
            return out;
        };
        for (name, s) in sets {
            let mut elems: Vec<String> = s
                .elems
                .iter()
                .map(|(k, d)| {
                    let key = fields(k, &s.def.key);
                    match (d, &s.def.data) {
                        (Some(ElemData::Verdict(v)), _) => format!("{key} : {}", verdict(v)),
                        (Some(ElemData::Value(v)), Some(SetData::Value(t))) => {
                            format!("{key} : {}", fields(v, t))
                        }
                        _ => key,
                    }
                })
                .collect();
            elems.sort();
            let _ = writeln!(out, "set {name} {{ {} }}", elems.join(", "));
        }
        for (name, c) in chains {
            let _ = writeln!(out, "chain {name} {{");
            if let Some(b) = &c.base {
                let _ = writeln!(
                    out,
                    "  type {} hook {:?} priority {}",
                    b.kind.name(),
                    b.hook,
                    b.priority
                );
            }
            for rule in &c.rules {
                let _ = writeln!(out, "  {}", render_rule(rule, sets));
            }
            let _ = writeln!(out, "}}");
        }
        out
    }
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(c) => format!("jump {c}"),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

/// Renders key or value bytes by their field types.
fn fields(bytes: &[u8], key: &Key) -> String {
    let mut at = 0;
    key.0
        .iter()
        .map(|f| {
            let end = (at + f.width()).min(bytes.len());
            let text = field(*f, &bytes[at.min(end)..end]);
            at = end;
            text
        })
        .collect::<Vec<_>>()
        .join(" . ")
}

fn field(f: Field, b: &[u8]) -> String {
    match (f, b) {
        (Field::Ipv4, [a, b, c, d, ..]) => Ipv4Addr::new(*a, *b, *c, *d).to_string(),
        (Field::Ipv6, b) if b.len() == 16 => {
            Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).to_string()
        }
        (Field::Proto, [6, ..]) => "tcp".into(),
        (Field::Proto, [17, ..]) => "udp".into(),
        (Field::Proto, [132, ..]) => "sctp".into(),
        (Field::Proto, [p, ..]) => p.to_string(),
        (Field::Port, [a, b, ..]) => u16::from_be_bytes([*a, *b]).to_string(),
        (Field::Mark, [a, b, c, d]) => u32::from_ne_bytes([*a, *b, *c, *d]).to_string(),
        _ => format!("{b:02x?}"),
    }
}

/// Renders a rule by following what each register holds.
fn render_rule(rule: &[Expr], sets: &BTreeMap<String, ModelSet>) -> String {
    let mut regs: BTreeMap<u32, (String, Option<Field>)> = BTreeMap::new();
    let mut words: Vec<String> = Vec::new();
    let reg = |regs: &BTreeMap<u32, (String, Option<Field>)>, r: u32| {
        regs.get(&r)
            .cloned()
            .unwrap_or_else(|| (format!("r{r}"), None))
    };
    let concat = |regs: &BTreeMap<u32, (String, Option<Field>)>, r: u32, fields: &[Field]| {
        let mut at = r;
        fields
            .iter()
            .map(|f| {
                let text = reg(regs, at).0;
                at += f.width() as u32 / 4;
                text
            })
            .collect::<Vec<_>>()
            .join(" . ")
    };
    for e in rule {
        match e {
            Expr::Immediate { dreg, data } => {
                let f = match data.len() {
                    2 => Field::Port,
                    16 => Field::Ipv6,
                    _ => Field::Mark,
                };
                regs.insert(*dreg, (field(f, data), Some(f)));
            }
            Expr::Verdict(v) => words.push(verdict(v)),
            Expr::Payload {
                dreg, base, offset, ..
            } => {
                let (name, f) = match (base, offset, e) {
                    (Base::Network, 12, Expr::Payload { len: 4, .. }) => ("ip saddr", Field::Ipv4),
                    (Base::Network, 16, Expr::Payload { len: 4, .. }) => ("ip daddr", Field::Ipv4),
                    (Base::Network, 8, Expr::Payload { len: 16, .. }) => ("ip6 saddr", Field::Ipv6),
                    (Base::Network, 24, Expr::Payload { len: 16, .. }) => {
                        ("ip6 daddr", Field::Ipv6)
                    }
                    (Base::Transport, 2, _) => ("th dport", Field::Port),
                    (Base::Transport, 0, _) => ("th sport", Field::Port),
                    _ => ("payload", Field::Mark),
                };
                regs.insert(*dreg, (name.into(), Some(f)));
            }
            Expr::Meta { dreg, key } => {
                let (name, f) = match key {
                    MetaKey::Mark => ("meta mark", Field::Mark),
                    MetaKey::L4Proto => ("meta l4proto", Field::Proto),
                };
                regs.insert(*dreg, (name.into(), Some(f)));
            }
            Expr::MetaSet { sreg, key } => {
                let name = match key {
                    MetaKey::Mark => "meta mark",
                    MetaKey::L4Proto => "meta l4proto",
                };
                words.push(format!("{name} set {}", reg(&regs, *sreg).0));
            }
            Expr::Cmp { sreg, op, data } => {
                let (lhs, f) = reg(&regs, *sreg);
                let rhs = f.map_or_else(|| format!("{data:02x?}"), |f| field(f, data));
                let op = match op {
                    CmpOp::Eq => "==",
                    CmpOp::Neq => "!=",
                };
                words.push(format!("{lhs} {op} {rhs}"));
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                let (src, f) = reg(&regs, *sreg);
                let f = f.unwrap_or(Field::Mark);
                let text = format!("({src} & {}) ^ {}", field(f, mask), field(f, xor));
                regs.insert(*dreg, (text, Some(f)));
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                let def = sets.get(set).map(|s| s.def.clone());
                let fields = def.as_ref().map_or(vec![Field::Mark], |d| d.key.0.clone());
                let key = concat(&regs, *sreg, &fields);
                match (dreg, def.and_then(|d| d.data)) {
                    (Some(0), _) => words.push(format!("{key} vmap @{set}")),
                    (Some(d), Some(SetData::Value(t))) => {
                        let mut at = *d;
                        for f in &t.0 {
                            let text = format!("{key} map @{set}");
                            regs.insert(at, (text, Some(*f)));
                            at += f.width() as u32 / 4;
                        }
                    }
                    _ => words.push(format!("{key} {}@{set}", if *invert { "!= " } else { "" })),
                }
            }
            Expr::Numgen { dreg, modulus } => {
                regs.insert(
                    *dreg,
                    (format!("numgen random mod {modulus}"), Some(Field::Mark)),
                );
            }
            Expr::Dnat { addr, .. } => words.push(format!("dnat to {}", reg(&regs, *addr).0)),
            Expr::Masquerade => words.push("masquerade fully-random".into()),
            Expr::RejectTcpReset => words.push("reject with tcp reset".into()),
            Expr::RejectIcmp(_) => words.push("reject".into()),
            Expr::FibDaddrType { dreg } => {
                regs.insert(*dreg, ("fib daddr type".into(), None));
            }
            Expr::Dynset { set, op, key, data } => {
                let op = match op {
                    DynsetOp::Add => "add",
                    DynsetOp::Update => "update",
                };
                let value = data.map_or(String::new(), |d| format!(" : {}", reg(&regs, d).0));
                words.push(format!("{op} @{set} {{ {}{value} }}", reg(&regs, *key).0));
            }
            Expr::Ct { dreg, key } => {
                let name = match key {
                    CtKey::State => "ct state",
                    CtKey::Status => "ct status",
                };
                regs.insert(*dreg, (name.into(), Some(Field::Mark)));
            }
            Expr::Counter => words.push("counter".into()),
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str) -> Op {
        Op::AddChain(Chain {
            name: name.into(),
            base: None,
        })
    }

    #[test]
    fn what_a_message_names_must_exist_when_it_is_read() {
        let goto = |from: &str| Op::AddRule {
            chain: from.into(),
            exprs: vec![Expr::Verdict(Verdict::Goto("b".into()))],
        };
        let map = Op::AddSet(Set {
            name: "m".into(),
            key: Key(vec![Field::Ipv4]),
            data: Some(SetData::Verdict),
            timeout_ms: None,
        });
        let element = Op::AddElems {
            set: "m".into(),
            elems: vec![Elem {
                key: vec![10, 0, 0, 1],
                data: Some(ElemData::Verdict(Verdict::Goto("b".into()))),
            }],
        };
        let mut model = Model::default();
        let err = model
            .apply(&[Op::AddTable, chain("a"), goto("a"), chain("b")])
            .unwrap_err();
        assert!(err.0.contains("names nothing yet"), "{err}");
        let err = model
            .apply(&[Op::AddTable, map.clone(), element.clone(), chain("b")])
            .unwrap_err();
        assert!(err.0.contains("no chain b yet"), "{err}");
        model
            .apply(&[
                Op::AddTable,
                chain("b"),
                chain("a"),
                goto("a"),
                map,
                element,
            ])
            .expect("every name exists when it is read");
    }
}
