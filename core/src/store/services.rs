//! Service addresses allocated in the store's write path: a Service's
//! ClusterIPs and NodePorts are picked (or checked, when the Service names
//! its own) as it is written, and each is held by a key in etcd written in
//! the same transaction as the Service, so two creates can never get the
//! same address, whoever writes them (a controller, the CLI), and a delete
//! releases them in the transaction that removes the Service.
//!
//! Keys: `/registry/ranges/serviceips/{ip}` and
//! `/registry/ranges/servicenodeports/{port}`, each holding `{ns}/{name}` of
//! the Service. The ranges come from the cluster's network settings at
//! [`NETWORK_KEY`] (written by `orca master`), else the defaults.

use std::collections::BTreeSet;
use std::net::IpAddr;

use etcd_client::{Compare, CompareOp, TxnOp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{FieldError, Invalid};

/// Where the cluster's network settings are kept.
pub const NETWORK_KEY: &str = "/registry/clusterconfig/network";
const IP_KEYS: &str = "/registry/ranges/serviceips/";
const PORT_KEYS: &str = "/registry/ranges/servicenodeports/";

/// The cluster's address ranges, shared by every writer through etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// ClusterIP ranges, one per family (the first is the default family).
    pub service_cidrs: Vec<Cidr>,
    /// Pod ranges, one per family, split into a /24 (or /64) per node.
    pub cluster_cidrs: Vec<Cidr>,
    /// The first and last NodePort.
    pub node_ports: (u16, u16),
}

impl Default for Network {
    fn default() -> Self {
        Self {
            service_cidrs: vec![
                "10.96.0.0/12".parse().expect("valid"),
                "fd00:96::/108".parse().expect("valid"),
            ],
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("valid")],
            node_ports: (30000, 32767),
        }
    }
}

/// An address range, `10.96.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a CIDR such as 10.96.0.0/12"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?;
        let cidr = Self { addr, bits };
        if cidr.host_bits() == 0 || cidr.base() != to_u128(addr) {
            return Err(format!("{s:?}: not a network address with room for hosts"));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn host_bits(&self) -> u8 {
        self.width() - self.bits
    }

    fn base(&self) -> u128 {
        let mask = if self.bits == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.bits)) >> (128 - u32::from(self.width()))
        };
        to_u128(self.addr) & mask
    }

    /// Whether `ip` is a host address of the range (neither the network
    /// address nor, for IPv4, the broadcast address).
    pub fn holds(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let offset = to_u128(ip).wrapping_sub(self.base());
        offset > 0 && offset < self.size() - u128::from(self.addr.is_ipv4())
    }

    /// Number of addresses in the range.
    pub fn size(&self) -> u128 {
        1u128 << self.host_bits().min(127)
    }

    /// The address `offset` into the range.
    pub fn nth(&self, offset: u128) -> IpAddr {
        let n = self.base() + offset;
        if self.addr.is_ipv4() {
            IpAddr::V4(u32::try_from(n).unwrap_or(u32::MAX).into())
        } else {
            IpAddr::V6(n.into())
        }
    }

    /// A random host address of the range.
    pub fn random_host(&self) -> IpAddr {
        let hosts = self.size() - 1 - u128::from(self.addr.is_ipv4());
        self.nth(1 + random() % hosts.max(1))
    }

    /// A random host address of the range not in `taken` (the first free
    /// one from a random start), `None` when every one is taken.
    pub fn free_host(&self, taken: &BTreeSet<IpAddr>) -> Option<IpAddr> {
        let hosts = self.size() - 1 - u128::from(self.addr.is_ipv4());
        let start = random() % hosts.max(1);
        (0..hosts)
            .map(|i| self.nth(1 + (start + i) % hosts))
            .find(|ip| !taken.contains(ip))
    }

    /// The `i`th subnet of `bits` prefix length inside the range, if any.
    pub fn subnet(&self, bits: u8, i: u128) -> Option<Cidr> {
        if bits < self.bits || bits > self.width() {
            return None;
        }
        let count = 1u128 << (bits - self.bits).min(127);
        (i < count).then(|| Cidr {
            addr: self.nth(i << (self.width() - bits)),
            bits,
        })
    }
}

fn random() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

/// The addresses held when a random pick collided: the next pick avoids them.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// ClusterIPs held by any Service.
    pub ips: BTreeSet<IpAddr>,
    /// NodePorts held by any Service.
    pub ports: BTreeSet<u16>,
}

impl Taken {
    /// Reads the held addresses from the allocation keys' names.
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut taken = Self::default();
        for key in keys {
            if let Some(ip) = key.strip_prefix(IP_KEYS).and_then(|k| k.parse().ok()) {
                taken.ips.insert(ip);
            } else if let Some(port) = key.strip_prefix(PORT_KEYS).and_then(|k| k.parse().ok()) {
                taken.ports.insert(port);
            }
        }
        taken
    }
}

/// The prefix of every allocation key.
pub(crate) const RANGES: &str = "/registry/ranges/";

/// What a Service write must also compare and do in its transaction.
#[derive(Default)]
pub(crate) struct Plan {
    /// The allocation keys that must be free.
    pub compares: Vec<Compare>,
    /// Puts of new allocation keys, deletes of released ones.
    pub ops: Vec<TxnOp>,
    /// Keys the user asked for by value: taken means an error, not a retry.
    pub requested: Vec<(String, FieldError)>,
}

fn ip_key(ip: IpAddr) -> String {
    format!("{IP_KEYS}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{PORT_KEYS}{port}")
}

fn invalid(svc: &Value, errors: Vec<FieldError>) -> Invalid {
    Invalid {
        kind: "Service".into(),
        name: svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        errors,
    }
}

fn owner(svc: &Value) -> String {
    let field = |f: &str| {
        svc.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    format!("{}/{}", field("namespace"), field("name"))
}

/// The ClusterIPs a stored Service holds (none when headless).
fn cluster_ips(svc: &Value) -> Vec<IpAddr> {
    let spec = &svc["spec"];
    let mut ips: Vec<IpAddr> = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec.get("clusterIP"))
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    let mut seen = BTreeSet::new();
    ips.retain(|ip| seen.insert(*ip));
    ips
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(
        svc.pointer("/spec/type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    )
}

fn node_ports(svc: &Value) -> BTreeSet<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .collect()
}

fn is_headless(svc: &Value) -> bool {
    svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None")
        || matches!(
            svc.pointer("/spec/type").and_then(Value::as_str),
            Some("ExternalName")
        )
}

/// Fills in the addresses of `svc` (being written over `current`, `None`
/// on create): keeps what `current` holds, checks what the Service names,
/// picks the rest at random; returns what the transaction must check and
/// write, including releasing what the Service no longer holds.
pub(crate) fn plan(
    network: &Network,
    current: Option<&Value>,
    svc: &mut Value,
    taken: Option<&Taken>,
) -> Result<Plan, Invalid> {
    let mut plan = Plan::default();
    let who = owner(svc);
    let held_ips: Vec<IpAddr> = current.map(cluster_ips).unwrap_or_default();
    let held_ports: BTreeSet<u16> = current.map(node_ports).unwrap_or_default();

    // ClusterIPs: immutable once set; an update that leaves them out keeps them.
    let mut ips = Vec::new();
    if !is_headless(svc) {
        let asked = cluster_ips(svc);
        if !held_ips.is_empty() {
            if !asked.is_empty() && asked[0] != held_ips[0] {
                return Err(invalid(
                    svc,
                    vec![FieldError::invalid(
                        "spec.clusterIPs[0]",
                        format!("{:?}", asked[0].to_string()),
                        "may not change once set",
                    )],
                ));
            }
            ips.push(held_ips[0]);
        }
        let dual = matches!(
            svc.pointer("/spec/ipFamilyPolicy").and_then(Value::as_str),
            Some("RequireDualStack" | "PreferDualStack")
        );
        for (i, ip) in asked.iter().enumerate() {
            if ips.contains(ip) {
                continue;
            }
            let Some(_) = network.service_cidrs.iter().find(|c| c.holds(*ip)) else {
                let ranges: Vec<String> =
                    network.service_cidrs.iter().map(Cidr::to_string).collect();
                return Err(invalid(
                    svc,
                    vec![FieldError::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("{:?}", ip.to_string()),
                        format!(
                            "provided IP is not in the valid range. The range of valid IPs is {}",
                            ranges.join(",")
                        ),
                    )],
                ));
            };
            ips.push(*ip);
            if !held_ips.contains(ip) {
                plan.requested.push((
                    ip_key(*ip),
                    FieldError::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("{:?}", ip.to_string()),
                        "provided IP is already allocated",
                    ),
                ));
            }
        }
        // The default family first, then the other when dual-stack is asked for.
        let families: Vec<&Cidr> = if dual {
            network.service_cidrs.iter().take(2).collect()
        } else {
            network.service_cidrs.iter().take(1).collect()
        };
        for range in families {
            if !ips.iter().any(|ip| ip.is_ipv4() == range.addr.is_ipv4()) {
                let picked = match taken {
                    None => range.random_host(),
                    Some(taken) => range.free_host(&taken.ips).ok_or_else(|| {
                        invalid(
                            svc,
                            vec![FieldError::forbidden(
                                "spec.clusterIPs",
                                format!("no free address is left in {range}"),
                            )],
                        )
                    })?,
                };
                ips.push(picked);
            }
        }
        for ip in &ips {
            if !held_ips.contains(ip) {
                plan.compares
                    .push(Compare::version(ip_key(*ip), CompareOp::Equal, 0));
                plan.ops.push(TxnOp::put(ip_key(*ip), who.as_str(), None));
            }
        }
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("clusterIP".into(), Value::String(ips[0].to_string()));
            spec.insert(
                "clusterIPs".into(),
                ips.iter().map(|ip| Value::String(ip.to_string())).collect(),
            );
        }
    }
    for ip in &held_ips {
        if !ips.contains(ip) {
            plan.ops.push(TxnOp::delete(ip_key(*ip), None));
        }
    }

    // NodePorts: each port of a NodePort Service gets one; a port keeps the
    // one it had; ports the Service no longer has are released.
    let mut kept = BTreeSet::new();
    if wants_node_ports(svc) {
        let (low, high) = network.node_ports;
        let previous: Vec<(u64, String, u16)> = current
            .and_then(|c| c.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("port")?.as_u64()?,
                    p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_string(),
                    u16::try_from(p.get("nodePort")?.as_u64()?).ok()?,
                ))
            })
            .collect();
        let ports = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut);
        for (i, port) in ports.into_iter().flatten().enumerate() {
            let asked = port
                .get("nodePort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let chosen = match asked {
                Some(p) if !(low..=high).contains(&p) => {
                    return Err(invalid(
                        &Value::Null,
                        vec![FieldError::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            p,
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {low}-{high}"
                            ),
                        )],
                    ));
                }
                Some(p) => {
                    if !held_ports.contains(&p) {
                        plan.requested.push((
                            port_key(p),
                            FieldError::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                p,
                                "provided port is already allocated",
                            ),
                        ));
                    }
                    p
                }
                None => {
                    let number = port.get("port").and_then(Value::as_u64);
                    let protocol = port
                        .get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP");
                    previous
                        .iter()
                        .find(|(n, proto, p)| {
                            Some(*n) == number && proto == protocol && !kept.contains(p)
                        })
                        .map(|(_, _, p)| *p)
                        .unwrap_or_else(|| {
                            let span = u32::from(high - low) + 1;
                            let start = u32::try_from(random() % u128::from(span)).unwrap_or(0);
                            (0..span)
                                .map(|i| low + u16::try_from((start + i) % span).unwrap_or(0))
                                .find(|p| {
                                    !kept.contains(p) && taken.is_none_or(|t| !t.ports.contains(p))
                                })
                                .unwrap_or(low)
                        })
                }
            };
            if !kept.insert(chosen) {
                return Err(invalid(
                    &Value::Null,
                    vec![FieldError::duplicate(
                        format!("spec.ports[{i}].nodePort"),
                        &chosen.to_string(),
                    )],
                ));
            }
            port["nodePort"] = Value::from(chosen);
        }
    }
    for port in &kept {
        if !held_ports.contains(port) {
            plan.compares
                .push(Compare::version(port_key(*port), CompareOp::Equal, 0));
            plan.ops
                .push(TxnOp::put(port_key(*port), who.as_str(), None));
        }
    }
    for port in held_ports.difference(&kept) {
        plan.ops.push(TxnOp::delete(port_key(*port), None));
    }
    Ok(plan)
}

/// The deletes that release everything a stored Service holds.
pub(crate) fn release(svc: &Value) -> Vec<TxnOp> {
    cluster_ips(svc)
        .into_iter()
        .map(|ip| TxnOp::delete(ip_key(ip), None))
        .chain(
            node_ports(svc)
                .into_iter()
                .map(|p| TxnOp::delete(port_key(p), None)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn cidrs_parse_and_hold_host_addresses() {
        let c: Cidr = "10.96.0.0/12".parse().unwrap();
        assert!(c.holds("10.96.0.1".parse().unwrap()));
        assert!(c.holds("10.111.255.254".parse().unwrap()));
        assert!(!c.holds("10.96.0.0".parse().unwrap()), "network address");
        assert!(!c.holds("10.111.255.255".parse().unwrap()), "broadcast");
        assert!(!c.holds("10.112.0.1".parse().unwrap()));
        assert!(!c.holds("fd00:96::1".parse().unwrap()));
        for _ in 0..100 {
            assert!(c.holds(c.random_host()));
        }
        let v6: Cidr = "fd00:96::/108".parse().unwrap();
        assert!(v6.holds("fd00:96::60".parse().unwrap()));
        assert!(v6.holds(v6.random_host()));
        assert!(
            "10.96.0.1/12".parse::<Cidr>().is_err(),
            "not a network address"
        );
        assert!("10.96.0.0/33".parse::<Cidr>().is_err());
        let pods: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(pods.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert!(pods.subnet(24, 256).is_none());
    }

    #[test]
    fn a_new_service_gets_an_address_and_node_ports() {
        let net = Network::default();
        let mut s = svc(
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "nodePort": 30053}]}),
        );
        let plan = plan(&net, None, &mut s, None).unwrap();
        let ip: IpAddr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!(net.service_cidrs[0].holds(ip));
        assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
        let p = s["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&p));
        assert_eq!(s["spec"]["ports"][1]["nodePort"], 30053);
        assert_eq!(plan.compares.len(), 3);
        assert_eq!(
            plan.requested.len(),
            1,
            "only the named port is an error when taken"
        );
    }

    #[test]
    fn updates_keep_addresses_and_release_what_goes() {
        let net = Network::default();
        let mut first =
            svc(json!({"clusterIP": "10.96.0.80", "type": "NodePort", "ports": [{"port": 80}]}));
        plan(&net, None, &mut first, None).unwrap();
        let port = first["spec"]["ports"][0]["nodePort"].clone();
        // The manifest applied again without the allocated fields keeps them.
        let mut again = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        let p = plan(&net, Some(&first), &mut again, None).unwrap();
        assert_eq!(again["spec"]["clusterIP"], "10.96.0.80");
        assert_eq!(again["spec"]["ports"][0]["nodePort"], port);
        assert!(p.ops.is_empty() && p.compares.is_empty());
        // Changing the address is refused; dropping NodePort releases the port.
        let mut moved = svc(json!({"clusterIP": "10.96.0.81", "ports": [{"port": 80}]}));
        let Err(err) = plan(&net, Some(&first), &mut moved, None) else {
            panic!("moved")
        };
        assert!(err.to_string().contains("may not change once set"), "{err}");
        let mut plain = svc(json!({"ports": [{"port": 80}]}));
        let p = plan(&net, Some(&first), &mut plain, None).unwrap();
        assert_eq!(p.ops.len(), 1, "the NodePort is released");
        // Out of range.
        let mut outside = svc(json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}));
        let Err(err) = plan(&net, None, &mut outside, None) else {
            panic!("outside")
        };
        assert!(
            err.to_string()
                .contains("provided IP is not in the valid range"),
            "{err}"
        );
        // Headless: nothing.
        let mut headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(
            plan(&net, None, &mut headless, None)
                .unwrap()
                .ops
                .is_empty()
        );
        assert_eq!(release(&first).len(), 2);
    }

    #[test]
    fn dual_stack_gets_one_address_per_family() {
        let net = Network::default();
        let mut s = svc(json!({"ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}));
        plan(&net, None, &mut s, None).unwrap();
        let ips = cluster_ips(&s);
        assert_eq!(ips.len(), 2);
        assert!(ips[0].is_ipv4() && ips[1].is_ipv6());
    }
}
