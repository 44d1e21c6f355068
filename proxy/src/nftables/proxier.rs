//! What the kernel should hold for each Service, and the smallest
//! transaction that gets it there.
//!
//! The table follows kube-proxy's nftables mode (KEP-3866) with one change
//! that removes its scaling limits: there are no per-endpoint chains and no
//! per-service sets. A service port's chain sends new connections to a
//! shared pick chain for its size class C (a power of two at least its
//! number of endpoints N), whose rules draw `numgen random mod C` and look
//! `ip daddr . meta l4proto . th dport . <draw>` up in one node-wide map of
//! endpoints (indexes 0..N of every service port → address . port). A draw
//! of an index the service does not have misses the map and the next rule
//! draws again; after [`DRAWS`] misses the last rule draws below C/4, which
//! every service of the class has (N > C/4). The draws are uniform, so is
//! the choice, but for the rare fall-through.
//!
//! Why: the kernel validates the whole table when a transaction adds a
//! rule that jumps or NATs, and checks every element added to a map
//! against every rule that looks it up. Here an endpoint change is element
//! updates in a map only the few pick chains look up, whatever the number
//! of services, and N crossing its class (up above C, down to C/4) is the
//! only change that rewrites a rule. A full sync adds per service a chain,
//! its rules and elements, and no set, so its cost grows linearly.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::ruleset::{
    Base, BaseChain, Chain, ChainKind, CmpOp, CtKey, DynsetOp, Elem, ElemData, Expr, Family, Field,
    Hook, Key, KeyBuf, MetaKey, Op, R0, Set, SetData, Sink, Verdict,
};

/// Verdict map: ClusterIP . protocol . port → the service port's chain.
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map: protocol . node port → the node port's chain.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Verdict map: ClusterIP . protocol . port of services without endpoints → reject.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Verdict map: protocol . node port without endpoints → reject or drop.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Map: ClusterIP . protocol . port . index → endpoint address . port.
pub const ENDPOINTS: &str = "endpoints";
/// Map: protocol . node port . index → endpoint address . port.
pub const NODEPORT_ENDPOINTS: &str = "nodeport-endpoints";
/// Prefix of the chains that pick a service port's endpoint (`pick-16`).
pub const PICK: &str = "pick-";
/// Prefix of the chains that pick a node port's endpoint.
pub const NODEPORT_PICK: &str = "nodeport-pick-";
/// Prefix of an affinity group's verdict map: index → endpoint chain.
pub const ENDPOINT_CHAINS: &str = "endpoint-chains-";
/// Set of ClusterIPs, to reject traffic to ports a Service does not have.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Set of endpoint . endpoint pairs: a pod reaching itself through its
/// Service is masqueraded so the reply comes back through the node.
pub const HAIRPIN: &str = "hairpin";

const MARK_MASQ: &str = "mark-for-masquerade";
const MASQUERADING: &str = "masquerading";
const SERVICES: &str = "services";
const REJECT: &str = "reject-chain";
/// The packet mark bit that asks for masquerade on the way out.
const MASQ_BIT: u32 = 0x4000;
/// conntrack's "new" state bit.
const CT_STATE_NEW: u32 = 8;
/// conntrack's "destination NAT applied" status bit.
const CT_STATUS_DNAT: u32 = 0x20;
/// The route type of local addresses (RTN_LOCAL).
const RTN_LOCAL: u32 = 2;
/// Draws among C before a pick chain falls back to the first C/4
/// endpoints: a miss is at most 3/4 likely, so the fall-through takes at
/// most 10% of new connections (right after N shrank to C/4 + 1) and
/// under 0.4% while N > C/2, the usual case.
pub const DRAWS: u32 = 8;

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
    /// SCTP.
    Sctp = 132,
}

impl Proto {
    /// A Kubernetes protocol name; unset is TCP.
    pub(super) fn parse(s: Option<&str>) -> Option<Proto> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// One endpoint of a service port, as the EndpointSlices say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Address and target port.
    pub addr: SocketAddr,
    /// Ready for new connections.
    pub ready: bool,
    /// Serving, even if terminating.
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
    /// On this node.
    pub local: bool,
}

/// One port of a Service with everything the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The ClusterIP (of the proxier's family).
    pub cluster_ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// Its protocol.
    pub proto: Proto,
    /// The node port, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// The endpoints, sorted.
    pub endpoints: Vec<Endpoint>,
}

/// A Service's identity: namespace and name.
pub type ServiceKey = (String, String);

/// The endpoints traffic may go to: the ready ones, or when none is ready
/// the serving terminating ones (so a rollout's last pod still answers).
fn usable(endpoints: &[Endpoint], local_only: bool) -> Vec<SocketAddr> {
    let candidates: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| !local_only || e.local)
        .collect();
    let ready: Vec<SocketAddr> = candidates
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.addr)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(|e| e.serving && e.terminating)
        .map(|e| e.addr)
        .collect()
}

/// Everything one Service puts in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Its chains and their rules.
    chains: BTreeMap<String, Vec<Vec<Expr>>>,
    /// Its own sets (session affinity).
    sets: BTreeMap<String, Set>,
    /// Its elements, in the node-wide sets and maps and in its own maps.
    elems: BTreeMap<(Arc<str>, Vec<u8>), Option<ElemData>>,
    /// The shared pick chains its chains go to.
    picks: BTreeSet<Pick>,
    /// The classes of its groups, in the order they were made.
    classes: Vec<u32>,
    /// The UDP flows its rules create, to forget when an endpoint leaves.
    udp_flows: BTreeSet<UdpFlow>,
}

/// UDP traffic translated to an endpoint: conntrack keeps sending a
/// client's datagrams to the endpoint its first one went to, so when the
/// endpoint leaves the Service its entries must be deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpFlow {
    /// The ClusterIP the client sent to; `None` for a NodePort (any
    /// address of the node).
    pub dst: Option<IpAddr>,
    /// The port the client sent to.
    pub dport: u16,
    /// The endpoint the flow was translated to.
    pub endpoint: SocketAddr,
}

/// Options of the rules that are not in the Services.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The cluster's pod CIDR: ClusterIP traffic from outside it is
    /// masqueraded so replies return through this node.
    pub cluster_cidr: Option<(IpAddr, u8)>,
    /// The ClusterIP range: new connections to an address in it that no
    /// Service has are refused rather than left to time out.
    pub service_cidr: Option<(IpAddr, u8)>,
}

/// A shared chain that picks an endpoint among up to `class` of a
/// service port (or a node port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pick {
    nodeport: bool,
    class: u32,
}

impl Pick {
    fn chain(self) -> String {
        let prefix = if self.nodeport { NODEPORT_PICK } else { PICK };
        format!("{prefix}{}", self.class)
    }

    /// [`DRAWS`] draws among `class`, then one below `class / 4`: the
    /// service tuple (or node port) and the draw are the key of the
    /// endpoints map.
    fn rules(self, family: Family) -> Vec<Vec<Expr>> {
        let draw = |modulus: u32| {
            let (mut r, at, map) = if self.nodeport {
                (nodeport_tuple(), R0 + 2, NODEPORT_ENDPOINTS)
            } else {
                (
                    service_tuple(family),
                    R0 + family.addr_regs() + 2,
                    ENDPOINTS,
                )
            };
            r.extend([
                Expr::Numgen { dreg: at, modulus },
                Expr::Lookup {
                    set: map.into(),
                    sreg: R0,
                    dreg: Some(at + 1),
                    invert: false,
                },
                Expr::Dnat {
                    family,
                    addr: at + 1,
                    port: at + 1 + family.addr_regs(),
                },
            ]);
            r
        };
        if self.class == 1 {
            return vec![draw(1)];
        }
        let mut rules: Vec<Vec<Expr>> = (0..DRAWS).map(|_| draw(self.class)).collect();
        rules.push(draw((self.class / 4).max(1)));
        rules
    }
}

/// What the proxier remembers of endpoint groups (a service port's or a
/// node port's chain): the size class of those whose N moved within
/// (C/4, C] and so kept a class other than N's power of two, and for
/// session affinity the slot naming its map.
#[derive(Debug, Default)]
struct Groups {
    /// Only the classes a footprint cannot work out from N: a full sync
    /// stores none, so it allocates nothing that outlives it here.
    classes: HashMap<String, u32>,
    slots: HashMap<String, u32>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl Groups {
    /// The class of a group of `n` endpoints: `previous` (the class of
    /// the footprint being replaced; else the stored one) while it still
    /// fits, else the next power of two.
    fn class(&mut self, chain: &str, n: u32, previous: Option<u32>) -> u32 {
        let fits = |c: u32| n <= c && n > c / 4;
        let default = n.next_power_of_two();
        let class = match previous.or_else(|| self.classes.get(chain).copied()) {
            Some(c) if fits(c) => c,
            _ => default,
        };
        if class == default {
            self.classes.remove(chain);
        } else if self.classes.get(chain) != Some(&class) {
            self.classes.insert(chain.to_string(), class);
        }
        class
    }

    fn slot(&mut self, chain: &str) -> u32 {
        if let Some(s) = self.slots.get(chain) {
            return *s;
        }
        let s = self.free_slots.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot
        });
        self.slots.insert(chain.to_string(), s);
        s
    }

    fn release(&mut self, chain: &str) {
        self.classes.remove(chain);
        if let Some(s) = self.slots.remove(chain) {
            self.free_slots.push(s);
        }
    }
}

/// Where a group's packets were addressed: the start of its endpoints'
/// keys.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A ClusterIP port.
    Service(IpAddr, Proto, u16),
    /// A node port, on any local address.
    NodePort(Proto, u16),
}

impl Via {
    fn key(self, index: u32) -> Vec<u8> {
        match self {
            Via::Service(ip, proto, port) => KeyBuf::default().ip(ip).proto(proto as u8).port(port),
            Via::NodePort(proto, port) => KeyBuf::default().proto(proto as u8).port(port),
        }
        .mark(index)
        .done()
    }
}

/// A sink that counts what passes through it into a [`Plan`].
struct Tally<'a> {
    sink: &'a mut dyn Sink,
    plan: Plan,
}

impl Tally<'_> {
    fn push(&mut self, op: Op) {
        self.plan.ops += 1;
        match &op {
            Op::AddRule { .. } => self.plan.rules += 1,
            Op::AddElems { elems, .. } | Op::DeleteElems { elems, .. } => {
                self.plan.elements += elems.len()
            }
            _ => {}
        }
        self.sink.push(op);
    }
}

/// The sync engine: the programmed state and the diff from it.
#[derive(Debug)]
pub struct Proxier {
    family: Family,
    options: Options,
    /// What each programmed Service was programmed from: its footprint is
    /// computed again when it changes (slots and kept classes are
    /// remembered, so it comes out the same), which costs far less memory
    /// than keeping 10k footprints.
    programmed: HashMap<ServiceKey, Vec<ServicePort>>,
    groups: Groups,
    /// How many programmed Services hold each hairpin element, by the
    /// endpoint's address (the element is `ip . ip`).
    hairpin_refs: HashMap<IpAddr, u32>,
    /// How many programmed groups go to each pick chain.
    pick_refs: HashMap<Pick, usize>,
    /// Set after a failed commit: the next sync replaces the whole table.
    needs_full: bool,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operations in the transaction; none means nothing to commit.
    pub ops: usize,
    /// Rules it adds.
    pub rules: usize,
    /// Set and map elements it adds or deletes.
    pub elements: usize,
    /// Whether it replaces the whole table.
    pub full: bool,
    /// UDP flows to endpoints that left: delete their conntrack entries
    /// once the transaction is in.
    pub stale_udp: Vec<UdpFlow>,
}

impl Proxier {
    /// A proxier for the table of `family` that has programmed nothing
    /// yet; its first sync is full.
    pub fn new(options: Options, family: Family) -> Self {
        Proxier {
            family,
            options,
            programmed: HashMap::new(),
            groups: Groups::default(),
            hairpin_refs: HashMap::new(),
            pick_refs: HashMap::new(),
            needs_full: true,
        }
    }

    /// The family of the table this proxier programs.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether the next sync will replace the whole table.
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Marks the kernel state unknown (a failed commit): the next sync is full.
    pub fn invalidate(&mut self) {
        self.needs_full = true;
    }

    /// Number of Services programmed.
    pub fn services(&self) -> usize {
        self.programmed.len()
    }

    /// Plans the transaction that brings the Services named in `changed`
    /// (or all of `desired`'s, when the sync must be full) to `desired`,
    /// and records it as programmed; the operations go to `sink` as they
    /// are planned. On a failed commit call [`Proxier::invalidate`].
    pub fn plan<'a>(
        &mut self,
        changed: impl IntoIterator<Item = &'a ServiceKey>,
        desired: impl Fn(&ServiceKey) -> Option<Vec<ServicePort>>,
        all: impl Fn() -> Vec<ServiceKey>,
        sink: &mut dyn Sink,
    ) -> Plan {
        let mut ops = Tally {
            sink,
            plan: Plan::default(),
        };
        if self.needs_full {
            for op in [Op::AddTable, Op::DeleteTable, Op::AddTable]
                .into_iter()
                .chain(skeleton(&self.options, self.family))
            {
                ops.push(op);
            }
            let previous: Vec<(ServiceKey, Vec<ServicePort>)> = self.programmed.drain().collect();
            let mut before = BTreeSet::new();
            for (key, ports) in &previous {
                before.extend(self.footprint(key, ports, &[]).udp_flows);
            }
            drop(previous);
            self.groups = Groups::default();
            self.hairpin_refs.clear();
            self.pick_refs.clear();
            // The inputs are kept until the next change; read them all
            // before planning, so they sit together on the heap rather than
            // among the plan's garbage, and the heap can shrink once the
            // transaction is in.
            let mut programmed = std::mem::take(&mut self.programmed);
            for key in all() {
                if let Some(ports) = desired(&key).filter(|p| !p.is_empty()) {
                    programmed.insert(key, ports);
                }
            }
            let mut keys: Vec<&ServiceKey> = programmed.keys().collect();
            keys.sort();
            let mut adds = Vec::new();
            let mut after = BTreeSet::new();
            for key in keys {
                let new = self.footprint(key, &programmed[key], &[]);
                // Nothing is deleted in a new table, so a Service's
                // elements can follow its chains at once.
                self.diff(&Footprint::default(), &new, &mut ops, &mut adds);
                for op in adds.drain(..) {
                    ops.push(op);
                }
                after.extend(new.udp_flows);
            }
            self.programmed = programmed;
            self.needs_full = false;
            let stale_udp = before.difference(&after).cloned().collect();
            return Plan {
                full: true,
                stale_udp,
                ..ops.plan
            };
        }
        let mut adds = Vec::new();
        let mut removed_chains = Vec::new();
        let mut stale_udp = Vec::new();
        let mut seen = HashSet::new();
        for key in changed {
            if !seen.insert(key.clone()) {
                continue;
            }
            let old_ports = self.programmed.remove(key).unwrap_or_default();
            let new_ports = desired(key).unwrap_or_default();
            if old_ports == new_ports {
                if !new_ports.is_empty() {
                    self.programmed.insert(key.clone(), new_ports);
                }
                continue;
            }
            let old = self.footprint(key, &old_ports, &[]);
            let new = self.footprint(key, &new_ports, &old.classes);
            self.diff(&old, &new, &mut ops, &mut adds);
            stale_udp.extend(old.udp_flows.difference(&new.udp_flows).cloned());
            removed_chains.extend(
                old.chains
                    .keys()
                    .filter(|c| !new.chains.contains_key(*c))
                    .cloned(),
            );
            if !new.chains.is_empty() {
                self.programmed.insert(key.clone(), new_ports);
            }
        }
        for op in adds {
            ops.push(op);
        }
        for chain in removed_chains {
            self.groups.release(&chain);
        }
        Plan {
            full: false,
            stale_udp,
            ..ops.plan
        }
    }

    /// The footprint of one Service.
    /// `previous` holds the group classes of the footprint this one
    /// replaces (empty when recomputing what is programmed).
    fn footprint(
        &mut self,
        key: &ServiceKey,
        ports: &[ServicePort],
        previous: &[u32],
    ) -> Footprint {
        let mut fp = Footprint::default();
        for sp in ports {
            let id = format!("{}/{}/{}/{}", key.0, key.1, sp.proto.name(), sp.port);
            let svc_chain = format!("svc-{id}");
            let cluster = usable(&sp.endpoints, sp.internal_local);
            let udp = sp.proto == Proto::Udp;
            if udp {
                fp.udp_flows.extend(cluster.iter().map(|e| UdpFlow {
                    dst: Some(sp.cluster_ip),
                    dport: sp.port,
                    endpoint: *e,
                }));
            }
            let svc_key = KeyBuf::default()
                .ip(sp.cluster_ip)
                .proto(sp.proto as u8)
                .port(sp.port)
                .done();
            fp.elems.insert(
                (
                    CLUSTER_IPS.into(),
                    KeyBuf::default().ip(sp.cluster_ip).done(),
                ),
                None,
            );

            let mut rules = Vec::new();
            if let Some((net, bits)) = self.options.cluster_cidr {
                rules.push(masquerade_unless_from(self.family, net, bits));
            }
            let via = Via::Service(sp.cluster_ip, sp.proto, sp.port);
            self.group(
                &mut fp,
                previous,
                &svc_chain,
                via,
                &cluster,
                sp.affinity,
                &mut rules,
            );
            fp.chains.insert(svc_chain.clone(), rules);
            if cluster.is_empty() {
                fp.elems.insert(
                    (NO_ENDPOINT_SERVICES.into(), svc_key),
                    Some(ElemData::Verdict(Verdict::Goto(REJECT.into()))),
                );
            } else {
                fp.elems.insert(
                    (SERVICE_IPS.into(), svc_key),
                    Some(ElemData::Verdict(Verdict::Goto(svc_chain.clone()))),
                );
            }

            if let Some(node_port) = sp.node_port {
                let np_key = KeyBuf::default()
                    .proto(sp.proto as u8)
                    .port(node_port)
                    .done();
                let ext_chain = format!("ext-{id}");
                let via = Via::NodePort(sp.proto, node_port);
                let reached = if sp.external_local {
                    usable(&sp.endpoints, true)
                } else {
                    cluster.clone()
                };
                if udp {
                    fp.udp_flows.extend(reached.iter().map(|e| UdpFlow {
                        dst: None,
                        dport: node_port,
                        endpoint: *e,
                    }));
                }
                let (usable_here, verdict_if_none) = if sp.external_local {
                    // Local only, without masquerade: the client's address
                    // is kept, and a node without endpoints drops so load
                    // balancers' health checks steer away from it.
                    let local = reached;
                    let mut rules = Vec::new();
                    self.group(
                        &mut fp,
                        previous,
                        &ext_chain,
                        via,
                        &local,
                        sp.affinity,
                        &mut rules,
                    );
                    fp.chains.insert(ext_chain.clone(), rules);
                    let none = if cluster.is_empty() {
                        Verdict::Goto(REJECT.into())
                    } else {
                        Verdict::Drop
                    };
                    (!local.is_empty(), none)
                } else {
                    let mut rules = vec![vec![Expr::Verdict(Verdict::Jump(MARK_MASQ.into()))]];
                    if sp.affinity.is_some() {
                        // The service chain knows the clients already seen.
                        rules.push(vec![Expr::Verdict(Verdict::Goto(svc_chain.clone()))]);
                    } else {
                        self.group(
                            &mut fp, previous, &ext_chain, via, &cluster, None, &mut rules,
                        );
                    }
                    fp.chains.insert(ext_chain.clone(), rules);
                    (!cluster.is_empty(), Verdict::Goto(REJECT.into()))
                };
                if usable_here {
                    fp.elems.insert(
                        (SERVICE_NODEPORTS.into(), np_key),
                        Some(ElemData::Verdict(Verdict::Goto(ext_chain))),
                    );
                } else {
                    fp.elems.insert(
                        (NO_ENDPOINT_NODEPORTS.into(), np_key),
                        Some(ElemData::Verdict(verdict_if_none)),
                    );
                }
            }
        }
        fp
    }

    /// The rules and elements of one endpoint group (a chain that DNATs
    /// to `endpoints`, reached through `via`).
    // Each argument is one of the group's own inputs; a struct for them
    // would be built only to be taken apart here.
    #[allow(clippy::too_many_arguments)]
    fn group(
        &mut self,
        fp: &mut Footprint,
        previous: &[u32],
        chain: &str,
        via: Via,
        endpoints: &[SocketAddr],
        affinity: Option<u32>,
        rules: &mut Vec<Vec<Expr>>,
    ) {
        if endpoints.is_empty() {
            return;
        }
        let f = self.family;
        let hairpin: Arc<str> = HAIRPIN.into();
        for ep in endpoints {
            fp.elems.insert(
                (
                    hairpin.clone(),
                    KeyBuf::default().ip(ep.ip()).ip(ep.ip()).done(),
                ),
                None,
            );
        }
        let n = endpoints.len() as u32;
        let Some(seconds) = affinity else {
            let (map, nodeport): (Arc<str>, bool) = match via {
                Via::Service(..) => (ENDPOINTS.into(), false),
                Via::NodePort(..) => (NODEPORT_ENDPOINTS.into(), true),
            };
            for (i, ep) in (0..).zip(endpoints) {
                fp.elems.insert(
                    (map.clone(), via.key(i)),
                    Some(ElemData::Value(
                        KeyBuf::default().ip(ep.ip()).port(ep.port()).done(),
                    )),
                );
            }
            let previous = previous.get(fp.classes.len()).copied();
            let class = self.groups.class(chain, n, previous);
            fp.classes.push(class);
            let pick = Pick { nodeport, class };
            rules.push(vec![Expr::Verdict(Verdict::Goto(pick.chain()))]);
            fp.picks.insert(pick);
            return;
        };
        let slot = self.groups.slot(chain);
        let map = format!("{ENDPOINT_CHAINS}{slot}");
        fp.sets.insert(
            map.clone(),
            Set {
                name: map.clone(),
                key: Key(vec![Field::Mark]),
                data: Some(SetData::Verdict),
                timeout_ms: None,
            },
        );
        let elems: Arc<str> = map.as_str().into();
        let a = f.addr_regs();
        // Session affinity, after kube-proxy: a chain and a client set per
        // endpoint. A client in an endpoint's set goes back to it; a new
        // one is sent to a random endpoint's chain, which remembers it.
        // Every new connection refreshes the client's entry.
        for (i, ep) in endpoints.iter().enumerate() {
            let tag = format!("{chain}__{}/{}", ep.ip(), ep.port());
            let set = format!("affinity-{tag}");
            let ep_chain = format!("endpoint-{tag}");
            fp.sets.insert(
                set.clone(),
                Set {
                    name: set.clone(),
                    key: Key(vec![f.addr()]),
                    data: None,
                    timeout_ms: Some(u64::from(seconds) * 1000),
                },
            );
            fp.chains.insert(
                ep_chain.clone(),
                vec![
                    vec![
                        saddr(f, R0),
                        Expr::Dynset {
                            set: set.clone(),
                            op: DynsetOp::Update,
                            key: R0,
                            data: None,
                        },
                    ],
                    vec![
                        Expr::Immediate {
                            dreg: R0,
                            data: KeyBuf::default().ip(ep.ip()).done(),
                        },
                        Expr::Immediate {
                            dreg: R0 + a,
                            data: ep.port().to_be_bytes().to_vec(),
                        },
                        Expr::Dnat {
                            family: f,
                            addr: R0,
                            port: R0 + a,
                        },
                    ],
                ],
            );
            rules.push(vec![
                saddr(f, R0),
                Expr::Lookup {
                    set,
                    sreg: R0,
                    dreg: None,
                    invert: false,
                },
                Expr::Verdict(Verdict::Goto(ep_chain.clone())),
            ]);
            fp.elems.insert(
                (elems.clone(), KeyBuf::default().mark(i as u32).done()),
                Some(ElemData::Verdict(Verdict::Goto(ep_chain))),
            );
        }
        rules.push(vec![
            Expr::Numgen {
                dreg: R0,
                modulus: n,
            },
            Expr::Lookup {
                set: map,
                sreg: R0,
                dreg: Some(0),
                invert: false,
            },
        ]);
    }

    /// Appends to `ops` (removals, rule changes) and `adds` (element
    /// additions, which must follow every deletion of the transaction) what
    /// turns `old` into `new`.
    fn diff(&mut self, old: &Footprint, new: &Footprint, ops: &mut Tally<'_>, adds: &mut Vec<Op>) {
        // A pick chain comes with its first group and goes with its last.
        for pick in new.picks.difference(&old.picks) {
            let n = self.pick_refs.entry(*pick).or_default();
            *n += 1;
            if *n == 1 {
                let name = pick.chain();
                ops.push(Op::AddChain(Chain {
                    name: name.clone(),
                    base: None,
                }));
                for exprs in pick.rules(self.family) {
                    ops.push(rule(&name, exprs));
                }
            }
        }
        for (name, set) in &new.sets {
            if !old.sets.contains_key(name) {
                ops.push(Op::AddSet(set.clone()));
            }
        }
        for name in new.chains.keys() {
            if !old.chains.contains_key(name) {
                ops.push(Op::AddChain(Chain {
                    name: name.clone(),
                    base: None,
                }));
            }
        }
        // Element removals first: verdict-map elements may point at chains
        // removed below, and a changed value is a delete plus an add.
        let mut deletes: BTreeMap<&Arc<str>, Vec<Elem>> = BTreeMap::new();
        for ((set, key), data) in &old.elems {
            if new.elems.get(&(set.clone(), key.clone())) == Some(data) {
                continue;
            }
            // A map going away takes its elements with it.
            if old.sets.contains_key(&**set) && !new.sets.contains_key(&**set) {
                continue;
            }
            if &**set == HAIRPIN && !self.unref_hairpin(key) {
                continue;
            }
            deletes.entry(set).or_default().push(Elem {
                key: key.clone(),
                data: None,
            });
        }
        for (set, elems) in deletes {
            ops.push(Op::DeleteElems {
                set: set.to_string(),
                elems,
            });
        }
        for (name, rules) in &new.chains {
            if old.chains.get(name) == Some(rules) {
                continue;
            }
            if old.chains.contains_key(name) {
                ops.push(Op::FlushChain(name.clone()));
            }
            for exprs in rules {
                ops.push(Op::AddRule {
                    chain: name.clone(),
                    exprs: exprs.clone(),
                });
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                ops.push(Op::FlushChain(name.clone()));
                ops.push(Op::DeleteChain(name.clone()));
            }
        }
        for name in old.sets.keys() {
            if !new.sets.contains_key(name) {
                ops.push(Op::DeleteSet(name.clone()));
            }
        }
        for pick in old.picks.difference(&new.picks) {
            if let Some(n) = self.pick_refs.get_mut(pick) {
                *n -= 1;
                if *n == 0 {
                    self.pick_refs.remove(pick);
                    ops.push(Op::FlushChain(pick.chain()));
                    ops.push(Op::DeleteChain(pick.chain()));
                }
            }
        }
        let mut additions: BTreeMap<&Arc<str>, Vec<Elem>> = BTreeMap::new();
        for ((set, key), data) in &new.elems {
            if old.elems.get(&(set.clone(), key.clone())) == Some(data) {
                continue;
            }
            if &**set == HAIRPIN && !self.ref_hairpin(key) {
                continue;
            }
            additions.entry(set).or_default().push(Elem {
                key: key.clone(),
                data: data.clone(),
            });
        }
        for (set, elems) in additions {
            adds.push(Op::AddElems {
                set: set.to_string(),
                elems,
            });
        }
    }

    /// The endpoint address a hairpin element is made of.
    fn hairpin_ip(&self, key: &[u8]) -> IpAddr {
        match self.family {
            Family::V4 => IpAddr::from(<[u8; 4]>::try_from(&key[..4]).expect("an IPv4 key")),
            Family::V6 => IpAddr::from(<[u8; 16]>::try_from(&key[..16]).expect("an IPv6 key")),
        }
    }

    /// Counts a reference; true if the element must be added.
    fn ref_hairpin(&mut self, key: &[u8]) -> bool {
        let n = self.hairpin_refs.entry(self.hairpin_ip(key)).or_default();
        *n += 1;
        *n == 1
    }

    /// Drops a reference; true if the element must be deleted.
    fn unref_hairpin(&mut self, key: &[u8]) -> bool {
        let ip = self.hairpin_ip(key);
        match self.hairpin_refs.get_mut(&ip) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.hairpin_refs.remove(&ip);
                true
            }
            None => false,
        }
    }
}

fn saddr(family: Family, dreg: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: Base::Network,
        offset: family.saddr_offset(),
        len: family.addr_regs() * 4,
    }
}

fn daddr(family: Family, dreg: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: Base::Network,
        offset: family.daddr_offset(),
        len: family.addr_regs() * 4,
    }
}

fn l4proto(dreg: u32) -> Expr {
    Expr::Meta {
        dreg,
        key: MetaKey::L4Proto,
    }
}

fn dport(dreg: u32) -> Expr {
    Expr::Payload {
        dreg,
        base: Base::Transport,
        offset: 2,
        len: 2,
    }
}

/// `<address> & mask ==/!= net`.
fn in_cidr(load: Expr, net: IpAddr, bits: u8, op: CmpOp) -> [Expr; 3] {
    let net = KeyBuf::default().ip(net).done();
    let mut mask = vec![0u8; net.len()];
    for i in 0..usize::from(bits).min(net.len() * 8) {
        mask[i / 8] |= 0x80 >> (i % 8);
    }
    let masked: Vec<u8> = net.iter().zip(&mask).map(|(n, m)| n & m).collect();
    [
        load,
        Expr::Bitwise {
            sreg: R0,
            dreg: R0,
            xor: vec![0; mask.len()],
            mask,
        },
        Expr::Cmp {
            sreg: R0,
            op,
            data: masked,
        },
    ]
}

/// `ip saddr != net/bits jump mark-for-masquerade`.
fn masquerade_unless_from(family: Family, net: IpAddr, bits: u8) -> Vec<Expr> {
    let mut r = in_cidr(saddr(family, R0), net, bits, CmpOp::Neq).to_vec();
    r.push(Expr::Verdict(Verdict::Jump(MARK_MASQ.into())));
    r
}

/// `<host-order register> & bits != 0` (or `== 0`).
fn bits_test(load: Expr, bits: u32, op: CmpOp) -> [Expr; 3] {
    [
        load,
        Expr::Bitwise {
            sreg: R0,
            dreg: R0,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: R0,
            op,
            data: vec![0; 4],
        },
    ]
}

fn ct_new() -> [Expr; 3] {
    bits_test(
        Expr::Ct {
            dreg: R0,
            key: CtKey::State,
        },
        CT_STATE_NEW,
        CmpOp::Neq,
    )
}

fn fib_local() -> [Expr; 2] {
    [
        Expr::FibDaddrType { dreg: R0 },
        Expr::Cmp {
            sreg: R0,
            op: CmpOp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

/// `fib daddr type local ip daddr != 127.0.0.0/8` (`ip6 daddr != ::1`):
/// a NodePort is served on the node's addresses but not on loopback, as in
/// kube-proxy's nftables mode. Translated, a packet from 127.0.0.1 cannot
/// leave the node (the kernel drops loopback sources on other links unless
/// `route_localnet` is set, which would expose 127.0.0.1 services to the
/// network); left alone, it meets no listener and is refused at once.
fn node_port_address(family: Family) -> Vec<Expr> {
    let loopback = match family {
        Family::V4 => (IpAddr::from([127, 0, 0, 0]), 8),
        Family::V6 => (IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
    };
    let mut r = fib_local().to_vec();
    r.extend(in_cidr(
        daddr(family, R0),
        loopback.0,
        loopback.1,
        CmpOp::Neq,
    ));
    r
}

fn vmap(load: Vec<Expr>, set: &str) -> Vec<Expr> {
    let mut v = load;
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: R0,
        dreg: Some(0),
        invert: false,
    });
    v
}

fn service_tuple(family: Family) -> Vec<Expr> {
    let a = family.addr_regs();
    vec![daddr(family, R0), l4proto(R0 + a), dport(R0 + a + 1)]
}

fn nodeport_tuple() -> Vec<Expr> {
    vec![l4proto(R0), dport(R0 + 1)]
}

fn base(name: &str, kind: ChainKind, hook: Hook, priority: i32) -> Op {
    Op::AddChain(Chain {
        name: name.into(),
        base: Some(BaseChain {
            hook,
            priority,
            kind,
        }),
    })
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule {
        chain: chain.into(),
        exprs,
    }
}

/// The node-wide part of the table: hooks, the maps, the shared chains.
pub fn skeleton(options: &Options, family: Family) -> Vec<Op> {
    let addr = family.addr();
    let verdict_map = |name: &str, key: Vec<Field>| {
        Op::AddSet(Set {
            name: name.into(),
            key: Key(key),
            data: Some(SetData::Verdict),
            timeout_ms: None,
        })
    };
    let mut ops = vec![
        verdict_map(SERVICE_IPS, vec![addr, Field::Proto, Field::Port]),
        verdict_map(NO_ENDPOINT_SERVICES, vec![addr, Field::Proto, Field::Port]),
        verdict_map(SERVICE_NODEPORTS, vec![Field::Proto, Field::Port]),
        verdict_map(NO_ENDPOINT_NODEPORTS, vec![Field::Proto, Field::Port]),
        Op::AddSet(Set {
            name: ENDPOINTS.into(),
            key: Key(vec![addr, Field::Proto, Field::Port, Field::Mark]),
            data: Some(SetData::Value(Key(vec![addr, Field::Port]))),
            timeout_ms: None,
        }),
        Op::AddSet(Set {
            name: NODEPORT_ENDPOINTS.into(),
            key: Key(vec![Field::Proto, Field::Port, Field::Mark]),
            data: Some(SetData::Value(Key(vec![addr, Field::Port]))),
            timeout_ms: None,
        }),
        Op::AddSet(Set {
            name: CLUSTER_IPS.into(),
            key: Key(vec![addr]),
            data: None,
            timeout_ms: None,
        }),
        Op::AddSet(Set {
            name: HAIRPIN.into(),
            key: Key(vec![addr, addr]),
            data: None,
            timeout_ms: None,
        }),
    ];
    for name in [MARK_MASQ, MASQUERADING, SERVICES, REJECT] {
        ops.push(Op::AddChain(Chain {
            name: name.into(),
            base: None,
        }));
    }
    ops.extend([
        base("nat-prerouting", ChainKind::Nat, Hook::Prerouting, -100),
        base("nat-output", ChainKind::Nat, Hook::Output, -100),
        base("nat-postrouting", ChainKind::Nat, Hook::Postrouting, 100),
        base("filter-input", ChainKind::Filter, Hook::Input, -110),
        base("filter-forward", ChainKind::Filter, Hook::Forward, -110),
        base("filter-output", ChainKind::Filter, Hook::Output, -110),
        base(
            "filter-output-post-dnat",
            ChainKind::Filter,
            Hook::Output,
            -90,
        ),
    ]);
    let mark = Expr::Meta {
        dreg: R0,
        key: MetaKey::Mark,
    };
    let set_mark = Expr::MetaSet {
        sreg: R0,
        key: MetaKey::Mark,
    };
    ops.extend([
        rule(
            MARK_MASQ,
            vec![
                mark.clone(),
                Expr::Bitwise {
                    sreg: R0,
                    dreg: R0,
                    mask: (!MASQ_BIT).to_ne_bytes().to_vec(),
                    xor: MASQ_BIT.to_ne_bytes().to_vec(),
                },
                set_mark.clone(),
            ],
        ),
        rule(MASQUERADING, {
            let mut r = bits_test(mark.clone(), MASQ_BIT, CmpOp::Eq).to_vec();
            r.push(Expr::Verdict(Verdict::Return));
            r
        }),
        rule(
            MASQUERADING,
            vec![
                mark,
                Expr::Bitwise {
                    sreg: R0,
                    dreg: R0,
                    mask: (!MASQ_BIT).to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                set_mark,
                Expr::Masquerade,
            ],
        ),
        rule(SERVICES, vmap(service_tuple(family), SERVICE_IPS)),
        rule(SERVICES, {
            let mut r = node_port_address(family);
            r.extend(vmap(nodeport_tuple(), SERVICE_NODEPORTS));
            r
        }),
        rule(
            REJECT,
            vec![
                l4proto(R0),
                Expr::Cmp {
                    sreg: R0,
                    op: CmpOp::Eq,
                    data: vec![Proto::Tcp as u8],
                },
                Expr::RejectTcpReset,
            ],
        ),
        rule(REJECT, vec![Expr::RejectIcmp(family)]),
        rule(
            "nat-prerouting",
            vec![Expr::Verdict(Verdict::Jump(SERVICES.into()))],
        ),
        rule(
            "nat-output",
            vec![Expr::Verdict(Verdict::Jump(SERVICES.into()))],
        ),
        rule(
            "nat-postrouting",
            vec![Expr::Verdict(Verdict::Jump(MASQUERADING.into()))],
        ),
        rule("nat-postrouting", {
            let mut r = bits_test(
                Expr::Ct {
                    dreg: R0,
                    key: CtKey::Status,
                },
                CT_STATUS_DNAT,
                CmpOp::Neq,
            )
            .to_vec();
            r.extend([
                saddr(family, R0),
                daddr(family, R0 + family.addr_regs()),
                Expr::Lookup {
                    set: HAIRPIN.into(),
                    sreg: R0,
                    dreg: None,
                    invert: false,
                },
                Expr::Masquerade,
            ]);
            r
        }),
    ]);
    let no_endpoints = || {
        let mut r = ct_new().to_vec();
        r.extend(vmap(service_tuple(family), NO_ENDPOINT_SERVICES));
        r
    };
    let no_endpoint_nodeports = || {
        let mut r = ct_new().to_vec();
        r.extend(node_port_address(family));
        r.extend(vmap(nodeport_tuple(), NO_ENDPOINT_NODEPORTS));
        r
    };
    let bad_port = || {
        let mut r = ct_new().to_vec();
        r.extend([
            daddr(family, R0),
            Expr::Lookup {
                set: CLUSTER_IPS.into(),
                sreg: R0,
                dreg: None,
                invert: false,
            },
            Expr::Verdict(Verdict::Goto(REJECT.into())),
        ]);
        r
    };
    ops.extend([
        rule("filter-input", no_endpoint_nodeports()),
        rule("filter-forward", no_endpoints()),
        rule("filter-forward", bad_port()),
        rule("filter-output", no_endpoints()),
        rule("filter-output", no_endpoint_nodeports()),
        // After DNAT, only traffic to a ClusterIP port no Service has is left.
        rule("filter-output-post-dnat", bad_port()),
    ]);
    if let Some((net, bits)) = options.service_cidr {
        for chain in ["filter-forward", "filter-output-post-dnat"] {
            let mut r = ct_new().to_vec();
            r.extend(in_cidr(daddr(family, R0), net, bits, CmpOp::Eq));
            r.push(Expr::Verdict(Verdict::Goto(REJECT.into())));
            ops.push(rule(chain, r));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::ruleset::Model;
    use super::*;

    fn ep(ip: &str, port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(ip.parse().unwrap(), port),
            ready: true,
            serving: true,
            terminating: false,
            local: false,
        }
    }

    fn port(ip: &str, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            cluster_ip: ip.parse().unwrap(),
            port,
            proto: Proto::Tcp,
            node_port: None,
            affinity: None,
            internal_local: false,
            external_local: false,
            endpoints,
        }
    }

    fn key(name: &str) -> ServiceKey {
        ("default".into(), name.into())
    }

    /// Services by key; what the tracker would hand the proxier.
    type Desired = BTreeMap<ServiceKey, Vec<ServicePort>>;

    /// A plan and the operations it sent.
    struct Synced {
        plan: Plan,
        ops: Vec<Op>,
    }

    impl std::ops::Deref for Synced {
        type Target = Plan;

        fn deref(&self) -> &Plan {
            &self.plan
        }
    }

    fn sync(p: &mut Proxier, m: &mut Model, desired: &Desired, changed: &[ServiceKey]) -> Synced {
        let mut ops = Vec::new();
        let plan = p.plan(
            changed,
            |k| desired.get(k).cloned(),
            || desired.keys().cloned().collect(),
            &mut ops,
        );
        assert_eq!(plan.ops, ops.len(), "the plan counts what it sent");
        m.apply(&ops).expect("the kernel model accepts the plan");
        Synced { plan, ops }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Target {
        Endpoints(Vec<SocketAddr>),
        Reject,
        Absent,
    }

    fn modulus(rule: &[Expr]) -> u32 {
        rule.iter()
            .find_map(|e| match e {
                Expr::Numgen { modulus, .. } => Some(*modulus),
                _ => None,
            })
            .expect("the pick rule draws a number")
    }

    /// Where the chain sends new connections, read from the model alone:
    /// through its pick chain and the endpoints map, whose class and
    /// indexes are checked, or through its affinity map.
    fn chain_endpoints(m: &Model, chain: &str, via: Via) -> Vec<SocketAddr> {
        let rules = m.rules(chain).expect("chain exists");
        let addr = |v: &[u8]| {
            SocketAddr::new(
                Ipv4Addr::new(v[0], v[1], v[2], v[3]).into(),
                u16::from_be_bytes([v[4], v[5]]),
            )
        };
        let goto = rules.iter().flatten().find_map(|e| match e {
            Expr::Verdict(Verdict::Goto(c))
                if c.starts_with(PICK) || c.starts_with(NODEPORT_PICK) =>
            {
                Some(c.clone())
            }
            _ => None,
        });
        let mut out = Vec::new();
        if let Some(pick) = goto {
            let (map, class) = match pick.strip_prefix(NODEPORT_PICK) {
                Some(c) => (NODEPORT_ENDPOINTS, c),
                None => (ENDPOINTS, &pick[PICK.len()..]),
            };
            let class: u32 = class.parse().unwrap();
            let prefix = &via.key(0)[..via.key(0).len() - 4];
            let elems: BTreeMap<Vec<u8>, Option<ElemData>> = m
                .elements(map)
                .into_iter()
                .filter(|e| e.key.starts_with(prefix))
                .map(|e| (e.key, e.data))
                .collect();
            for i in 0..elems.len() as u32 {
                let Some(Some(ElemData::Value(v))) = elems.get(&via.key(i)) else {
                    panic!("{chain}: index {i} missing among {} endpoints", elems.len())
                };
                out.push(addr(v));
            }
            let n = out.len() as u32;
            assert!(
                n <= class && n > class / 4,
                "{chain}: {n} endpoints in class {class}"
            );
            let moduli: Vec<u32> = m
                .rules(&pick)
                .expect("pick chain exists")
                .iter()
                .map(|r| modulus(r))
                .collect();
            let (last, draws) = moduli.split_last().unwrap();
            assert!(draws.iter().all(|d| *d == class), "{pick}: {moduli:?}");
            assert!(
                *last <= n && (class == 1 || *last == (class / 4).max(1)),
                "{pick}: {moduli:?}"
            );
        } else if let Some((pick, map)) = rules.iter().find_map(|r| {
            r.iter().find_map(|e| match e {
                Expr::Lookup { set, .. } if set.starts_with(ENDPOINT_CHAINS) => {
                    Some((r, set.clone()))
                }
                _ => None,
            })
        }) {
            for e in m.elements(&map) {
                let Some(ElemData::Verdict(Verdict::Goto(ep_chain))) = e.data else {
                    panic!("endpoint chain element without goto")
                };
                let ep_rules = m.rules(&ep_chain).expect("endpoint chain exists");
                let imm: Vec<u8> = ep_rules[1]
                    .iter()
                    .filter_map(|e| match e {
                        Expr::Immediate { data, .. } => Some(data.clone()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                out.push(addr(&imm));
            }
            assert_eq!(modulus(pick) as usize, out.len(), "{chain}: modulus");
        }
        out.sort();
        out
    }

    fn resolve(m: &Model, ip: &str, port: u16) -> Target {
        let k = KeyBuf::default()
            .ip(ip.parse().unwrap())
            .proto(Proto::Tcp as u8)
            .port(port)
            .done();
        let find = |set| m.elements(set).into_iter().find(|e| e.key == k);
        if let Some(e) = find(SERVICE_IPS) {
            let Some(ElemData::Verdict(Verdict::Goto(chain))) = e.data else {
                panic!("service-ips element without goto")
            };
            let via = Via::Service(ip.parse().unwrap(), Proto::Tcp, port);
            return Target::Endpoints(chain_endpoints(m, &chain, via));
        }
        if find(NO_ENDPOINT_SERVICES).is_some() {
            return Target::Reject;
        }
        Target::Absent
    }

    fn addrs(list: &[&str]) -> Target {
        let mut v: Vec<SocketAddr> = list.iter().map(|s| s.parse().unwrap()).collect();
        v.sort();
        Target::Endpoints(v)
    }

    #[test]
    fn a_cluster_ip_spreads_over_its_ready_endpoints() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut unready = ep("10.244.1.3", 8080);
        unready.ready = false;
        let desired = Desired::from([(
            key("web"),
            vec![port(
                "10.96.0.10",
                80,
                vec![ep("10.244.1.2", 8080), unready, ep("10.244.2.4", 8080)],
            )],
        )]);
        let plan = sync(&mut p, &mut m, &desired, &[]);
        assert!(plan.full, "the first sync is full");
        assert_eq!(
            resolve(&m, "10.96.0.10", 80),
            addrs(&["10.244.1.2:8080", "10.244.2.4:8080"])
        );
        let text = m.render();
        assert!(
            text.contains(
                "set service-ips { 10.96.0.10 . tcp . 80 : goto svc-default/web/tcp/80 }"
            ),
            "{text}"
        );
        for want in [
            "chain svc-default/web/tcp/80 {\n  goto pick-2\n}",
            "set endpoints { 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 8080, 10.96.0.10 . tcp . 80 . 1 : 10.244.2.4 . 8080 }",
            "  dnat to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints\n",
            "  dnat to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints\n",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert!(
            text.contains("set hairpin { 10.244.1.2 . 10.244.1.2, 10.244.2.4 . 10.244.2.4 }"),
            "{text}"
        );
    }

    #[test]
    fn no_ready_endpoint_rejects_unless_one_is_terminating_but_serving() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut gone = ep("10.244.1.2", 80);
        gone.ready = false;
        gone.serving = false;
        let mut desired = Desired::from([(key("a"), vec![port("10.96.0.1", 80, vec![gone])])]);
        sync(&mut p, &mut m, &desired, &[]);
        assert_eq!(resolve(&m, "10.96.0.1", 80), Target::Reject);

        let mut draining = ep("10.244.1.3", 80);
        draining.ready = false;
        draining.terminating = true;
        desired.insert(key("a"), vec![port("10.96.0.1", 80, vec![gone, draining])]);
        sync(&mut p, &mut m, &desired, &[key("a")]);
        assert_eq!(resolve(&m, "10.96.0.1", 80), addrs(&["10.244.1.3:80"]));
    }

    #[test]
    fn one_endpoint_change_among_10k_services_is_one_small_transaction() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut desired = Desired::new();
        for i in 0..10_000u32 {
            let ip = Ipv4Addr::from(0x0a60_0000 + i).to_string();
            let eps = (0..10u32)
                .map(|j| ep(&Ipv4Addr::from(0x0af4_0000 + i * 10 + j).to_string(), 8080))
                .collect();
            desired.insert(key(&format!("s{i}")), vec![port(&ip, 80, eps)]);
        }
        sync(&mut p, &mut m, &desired, &[]);
        let (rules, elems) = m.counts();
        assert!(
            rules > 10_000 && elems > 100_000,
            "{rules} rules, {elems} elements"
        );

        // One endpoint of one service becomes unready.
        let svc = desired.get_mut(&key("s77")).unwrap();
        svc[0].endpoints[9].ready = false;
        let plan = sync(&mut p, &mut m, &desired, &[key("s77")]);
        assert!(!plan.full);
        assert!(plan.ops.len() <= 6, "{:#?}", plan.ops);
        let touched: usize = plan
            .ops
            .iter()
            .map(|op| match op {
                Op::AddElems { elems, .. } | Op::DeleteElems { elems, .. } => elems.len(),
                _ => 1,
            })
            .sum();
        assert!(touched <= 6, "{:#?}", plan.ops);
        let Target::Endpoints(now) = resolve(&m, "10.96.0.77", 80) else {
            panic!("s77 lost its rules")
        };
        assert_eq!(now.len(), 9);

        // Nothing changed: nothing to do.
        let plan = sync(&mut p, &mut m, &desired, &[key("s1"), key("s2")]);
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
    }

    #[test]
    fn a_deleted_service_leaves_nothing_behind() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut empty = Model::default();
        empty.apply(&[Op::AddTable]).unwrap();
        empty
            .apply(&skeleton(&Options::default(), Family::V4))
            .unwrap();
        let mut aff = port(
            "10.96.0.2",
            80,
            vec![ep("10.244.1.2", 80), ep("10.244.1.3", 80)],
        );
        aff.affinity = Some(60);
        aff.node_port = Some(30080);
        let mut desired = Desired::from([
            (
                key("a"),
                vec![port("10.96.0.1", 80, vec![ep("10.244.1.2", 80)])],
            ),
            (key("b"), vec![aff]),
        ]);
        sync(&mut p, &mut m, &desired, &[]);
        desired.clear();
        sync(&mut p, &mut m, &desired, &[key("a"), key("b")]);
        assert_eq!(m.render(), empty.render());
        assert_eq!(p.services(), 0);
    }

    #[test]
    fn a_failed_commit_makes_the_next_sync_full() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let desired = Desired::from([(
            key("a"),
            vec![port("10.96.0.1", 80, vec![ep("10.244.1.2", 80)])],
        )]);
        sync(&mut p, &mut m, &desired, &[]);
        p.invalidate();
        let plan = sync(&mut p, &mut m, &desired, &[]);
        assert!(plan.full);
        assert_eq!(plan.ops[..3], [Op::AddTable, Op::DeleteTable, Op::AddTable]);
        assert_eq!(resolve(&m, "10.96.0.1", 80), addrs(&["10.244.1.2:80"]));
    }

    #[test]
    fn session_affinity_has_a_chain_and_client_set_per_endpoint() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut sp = port(
            "10.96.0.5",
            80,
            vec![ep("10.244.1.2", 80), ep("10.244.1.3", 80)],
        );
        sp.affinity = Some(30);
        let mut desired = Desired::from([(key("a"), vec![sp.clone()])]);
        sync(&mut p, &mut m, &desired, &[]);
        assert_eq!(
            resolve(&m, "10.96.0.5", 80),
            addrs(&["10.244.1.2:80", "10.244.1.3:80"])
        );
        let text = m.render();
        assert!(
            text.contains("ip saddr @affinity-svc-default/a/tcp/80__10.244.1.2/80 goto endpoint-svc-default/a/tcp/80__10.244.1.2/80"),
            "{text}"
        );
        assert!(
            text.contains("update @affinity-svc-default/a/tcp/80__10.244.1.3/80 { ip saddr }"),
            "{text}"
        );

        // Losing an endpoint removes its set and chain; the other keeps its clients.
        sp.endpoints.remove(0);
        desired.insert(key("a"), vec![sp]);
        let plan = sync(&mut p, &mut m, &desired, &[key("a")]);
        assert!(plan.ops.contains(&Op::DeleteSet(
            "affinity-svc-default/a/tcp/80__10.244.1.2/80".into()
        )));
        assert!(
            !plan
                .ops
                .iter()
                .any(|op| matches!(op, Op::DeleteSet(s) if s.contains("10.244.1.3")))
        );
        assert_eq!(resolve(&m, "10.96.0.5", 80), addrs(&["10.244.1.3:80"]));
    }

    #[test]
    fn node_ports_follow_the_external_traffic_policy() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut local = ep("10.244.1.2", 80);
        local.local = true;
        let mut sp = port("10.96.0.7", 80, vec![local, ep("10.244.2.2", 80)]);
        sp.node_port = Some(30007);
        let mut desired = Desired::from([(key("np"), vec![sp.clone()])]);
        sync(&mut p, &mut m, &desired, &[]);
        let text = m.render();
        assert!(
            text.contains("set service-nodeports { tcp . 30007 : goto ext-default/np/tcp/80 }"),
            "{text}"
        );
        assert_eq!(
            m.rules("ext-default/np/tcp/80").unwrap(),
            vec![
                vec![Expr::Verdict(Verdict::Jump(MARK_MASQ.into()))],
                vec![Expr::Verdict(Verdict::Goto("nodeport-pick-2".into()))],
            ]
        );
        let node_port = Via::NodePort(Proto::Tcp, 30007);
        assert_eq!(
            chain_endpoints(&m, "ext-default/np/tcp/80", node_port),
            vec![local.addr, sp.endpoints[1].addr]
        );

        // Local: only this node's endpoints, no masquerade.
        sp.external_local = true;
        desired.insert(key("np"), vec![sp.clone()]);
        sync(&mut p, &mut m, &desired, &[key("np")]);
        assert_eq!(
            chain_endpoints(&m, "ext-default/np/tcp/80", node_port),
            vec![local.addr]
        );

        // Local without a local endpoint: dropped, so a balancer's health
        // check moves away; the ClusterIP still works.
        sp.endpoints.retain(|e| !e.local);
        desired.insert(key("np"), vec![sp]);
        sync(&mut p, &mut m, &desired, &[key("np")]);
        let text = m.render();
        assert!(
            text.contains("set no-endpoint-nodeports { tcp . 30007 : drop }"),
            "{text}"
        );
        assert_eq!(resolve(&m, "10.96.0.7", 80), addrs(&["10.244.2.2:80"]));
    }

    #[test]
    fn node_ports_are_not_looked_up_for_loopback() {
        for (family, not_loopback) in [
            (Family::V4, "(ip daddr & 255.0.0.0) ^ 0.0.0.0 != 127.0.0.0"),
            (
                Family::V6,
                "(ip6 daddr & ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff) ^ :: != ::1",
            ),
        ] {
            let (mut p, mut m) = (Proxier::new(Options::default(), family), Model::default());
            sync(&mut p, &mut m, &Desired::new(), &[]);
            let text = m.render();
            for map in [SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS] {
                let wanted = format!(
                    "fib daddr type == [02, 00, 00, 00] {not_loopback} meta l4proto . th dport vmap @{map}"
                );
                assert!(text.contains(&wanted), "{wanted} missing from\n{text}");
            }
        }
    }

    #[test]
    fn internal_traffic_policy_local_keeps_cluster_ip_traffic_on_the_node() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut local = ep("10.244.1.2", 80);
        local.local = true;
        let mut sp = port("10.96.0.8", 80, vec![local, ep("10.244.2.2", 80)]);
        sp.internal_local = true;
        let desired = Desired::from([(key("itp"), vec![sp])]);
        sync(&mut p, &mut m, &desired, &[]);
        assert_eq!(resolve(&m, "10.96.0.8", 80), addrs(&["10.244.1.2:80"]));
    }

    #[test]
    fn off_cluster_clients_are_masqueraded_when_the_pod_cidr_is_known() {
        let mut p = Proxier::new(
            Options {
                cluster_cidr: Some(("10.244.0.0".parse().unwrap(), 16)),
                service_cidr: None,
            },
            Family::V4,
        );
        let mut m = Model::default();
        let desired = Desired::from([(
            key("a"),
            vec![port("10.96.0.1", 80, vec![ep("10.244.1.2", 80)])],
        )]);
        sync(&mut p, &mut m, &desired, &[]);
        let text = m.render();
        assert!(
            text.contains(
                "(ip saddr & 255.255.0.0) ^ 0.0.0.0 != 10.244.0.0 jump mark-for-masquerade"
            ),
            "{text}"
        );
    }

    #[test]
    fn hairpin_elements_are_shared_between_services() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut desired = Desired::from([
            (
                key("a"),
                vec![port("10.96.0.1", 80, vec![ep("10.244.1.2", 80)])],
            ),
            (
                key("b"),
                vec![port("10.96.0.2", 81, vec![ep("10.244.1.2", 81)])],
            ),
        ]);
        sync(&mut p, &mut m, &desired, &[]);
        desired.remove(&key("a"));
        sync(&mut p, &mut m, &desired, &[key("a")]);
        assert_eq!(m.elements(HAIRPIN).len(), 1, "still used by b");
        desired.remove(&key("b"));
        sync(&mut p, &mut m, &desired, &[key("b")]);
        assert!(m.elements(HAIRPIN).is_empty());
    }

    /// A random walk of service and endpoint changes: every incremental
    /// plan applies cleanly and leaves the table resolving exactly like the
    /// desired state, and like a full sync of it.
    #[test]
    fn incremental_syncs_match_the_desired_state() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut desired = Desired::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        sync(&mut p, &mut m, &desired, &[]);
        for round in 0..400 {
            let i = next(12);
            let k = key(&format!("s{i}"));
            if next(5) == 0 {
                desired.remove(&k);
            } else {
                let n = next(4);
                let eps = (0..n)
                    .map(|j| {
                        let mut e = ep(
                            &format!("10.244.{}.{}", next(3), j + 1),
                            80 + next(2) as u16,
                        );
                        e.ready = next(4) != 0;
                        e
                    })
                    .collect::<Vec<_>>();
                let mut sp = port(&format!("10.96.0.{}", i + 1), 80, eps);
                sp.affinity = (next(3) == 0).then_some(60);
                sp.node_port = (next(2) == 0).then_some(30000 + i as u16);
                sp.endpoints.sort();
                sp.endpoints.dedup_by(|a, b| a.addr == b.addr);
                desired.insert(k.clone(), vec![sp]);
            }
            sync(&mut p, &mut m, &desired, &[k]);
            for j in 0..12 {
                let ip = format!("10.96.0.{}", j + 1);
                let want = match desired.get(&key(&format!("s{j}"))) {
                    None => Target::Absent,
                    Some(ports) => {
                        let eps = usable(&ports[0].endpoints, false);
                        if eps.is_empty() {
                            Target::Reject
                        } else {
                            let mut eps = eps;
                            eps.sort();
                            Target::Endpoints(eps)
                        }
                    }
                };
                assert_eq!(resolve(&m, &ip, 80), want, "round {round}, service s{j}");
            }
            assert_eq!(pick_chains(&m), used_pick_chains(&m), "round {round}");
        }
        let (mut fresh, mut full) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        sync(&mut fresh, &mut full, &desired, &[]);
        // Classes depend on the history (a group keeps its class while it
        // fits), so the pick chains may differ; nothing else may.
        let without_picks = |m: &Model| {
            let (rules, elems) = m.counts();
            let picks: usize = pick_chains(m)
                .iter()
                .map(|c| m.rules(c).unwrap().len())
                .sum();
            (rules - picks, elems)
        };
        assert_eq!(without_picks(&m), without_picks(&full));
    }

    /// The pick chains in the table.
    fn pick_chains(m: &Model) -> BTreeSet<String> {
        m.render()
            .lines()
            .filter_map(|l| l.strip_prefix("chain ")?.strip_suffix(" {"))
            .filter(|c| c.starts_with(PICK) || c.starts_with(NODEPORT_PICK))
            .map(String::from)
            .collect()
    }

    /// The pick chains some rule goes to: a pick chain no group uses is
    /// deleted with its last group.
    fn used_pick_chains(m: &Model) -> BTreeSet<String> {
        m.render()
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| {
                w[0] == "goto" && (w[1].starts_with(PICK) || w[1].starts_with(NODEPORT_PICK))
            })
            .map(|w| w[1].to_string())
            .collect()
    }

    #[test]
    fn an_endpoint_count_change_within_its_class_touches_elements_only() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let eps = |n: u32| {
            (0..n)
                .map(|j| ep(&format!("10.244.1.{}", j + 1), 80))
                .collect::<Vec<_>>()
        };
        let class = |m: &Model| {
            m.rules("svc-default/a/tcp/80")
                .unwrap()
                .iter()
                .flatten()
                .find_map(|e| match e {
                    Expr::Verdict(Verdict::Goto(c)) => c.strip_prefix(PICK)?.parse::<u32>().ok(),
                    _ => None,
                })
        };
        let mut desired = Desired::from([(key("a"), vec![port("10.96.0.1", 80, eps(10))])]);
        sync(&mut p, &mut m, &desired, &[]);
        assert_eq!(class(&m), Some(16));
        let text = m.render();
        assert_eq!(
            text.matches("numgen random mod 16 map @endpoints").count(),
            DRAWS as usize,
            "{text}"
        );
        assert!(
            text.contains("numgen random mod 4 map @endpoints"),
            "{text}"
        );

        // Down to 5 (> 16/4): still class 16; no rule is written.
        for n in [9, 12, 16, 5] {
            desired.insert(key("a"), vec![port("10.96.0.1", 80, eps(n))]);
            let plan = sync(&mut p, &mut m, &desired, &[key("a")]);
            assert!(
                plan.ops
                    .iter()
                    .all(|op| matches!(op, Op::AddElems { .. } | Op::DeleteElems { .. })),
                "{n}: {:#?}",
                plan.ops
            );
            assert_eq!(class(&m), Some(16));
            assert_eq!(
                resolve(&m, "10.96.0.1", 80),
                Target::Endpoints(usable(&eps(n), false))
            );
        }

        // Down to 4 (= 16/4): class 4, pick-16 goes with its last group.
        desired.insert(key("a"), vec![port("10.96.0.1", 80, eps(4))]);
        let plan = sync(&mut p, &mut m, &desired, &[key("a")]);
        assert_eq!(class(&m), Some(4));
        assert!(plan.ops.contains(&Op::DeleteChain("pick-16".into())));
        assert_eq!(pick_chains(&m), BTreeSet::from(["pick-4".to_string()]));

        // Up to 17: class 32.
        desired.insert(key("a"), vec![port("10.96.0.1", 80, eps(17))]);
        sync(&mut p, &mut m, &desired, &[key("a")]);
        assert_eq!(class(&m), Some(32));
        assert_eq!(
            resolve(&m, "10.96.0.1", 80),
            Target::Endpoints(usable(&eps(17), false))
        );
    }

    #[test]
    fn an_ipv6_service_gets_its_own_table_with_16_byte_addresses() {
        let ports = vec![port("fd00:96::9", 80, vec![ep("fd00:244:1::2", 8080)])];
        let mut p = Proxier::new(
            Options {
                cluster_cidr: Some(("fd00:244::".parse().unwrap(), 56)),
                service_cidr: Some(("fd00:96::".parse().unwrap(), 108)),
            },
            Family::V6,
        );
        let mut m = Model::default();
        let desired = Desired::from([(key("web"), ports)]);
        sync(&mut p, &mut m, &desired, &[]);
        let text = m.render();
        for want in [
            "set service-ips { fd00:96::9 . tcp . 80 : goto svc-default/web/tcp/80 }",
            "set endpoints { fd00:96::9 . tcp . 80 . 0 : fd00:244:1::2 . 8080 }",
            "ip6 daddr . meta l4proto . th dport vmap @service-ips",
            "dnat to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints",
            "(ip6 saddr & ffff:ffff:ffff:ff00::) ^ :: != fd00:244:: jump mark-for-masquerade",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }

    #[test]
    fn a_udp_endpoint_that_leaves_is_reported_for_conntrack() {
        let (mut p, mut m) = (
            Proxier::new(Options::default(), Family::V4),
            Model::default(),
        );
        let mut sp = port(
            "10.96.0.3",
            53,
            vec![ep("10.244.1.2", 5353), ep("10.244.1.3", 5353)],
        );
        sp.proto = Proto::Udp;
        sp.node_port = Some(30053);
        let mut desired = Desired::from([(key("dns"), vec![sp.clone()])]);
        assert!(sync(&mut p, &mut m, &desired, &[]).stale_udp.is_empty());
        sp.endpoints[0].ready = false;
        desired.insert(key("dns"), vec![sp]);
        let plan = sync(&mut p, &mut m, &desired, &[key("dns")]);
        let gone: SocketAddr = "10.244.1.2:5353".parse().unwrap();
        assert_eq!(
            plan.stale_udp,
            vec![
                UdpFlow {
                    dst: None,
                    dport: 30053,
                    endpoint: gone
                },
                UdpFlow {
                    dst: Some("10.96.0.3".parse().unwrap()),
                    dport: 53,
                    endpoint: gone
                },
            ]
        );
        // TCP keeps its connections: nothing to forget.
        let tcp = Desired::from([(
            key("web"),
            vec![port("10.96.0.4", 80, vec![ep("10.244.1.2", 80)])],
        )]);
        sync(&mut p, &mut m, &tcp, &[key("web")]);
        let plan = sync(&mut p, &mut m, &Desired::new(), &[key("web")]);
        assert!(plan.stale_udp.is_empty());
    }
}
