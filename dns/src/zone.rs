//! The cluster domain's names, answered from the shared caches of Services
//! and EndpointSlices, as CoreDNS's kubernetes plugin answers them:
//! `SVC.NS.svc.DOMAIN` is the ClusterIP (the ready endpoints' addresses
//! for a headless Service, an alias for an ExternalName one),
//! `_PORT._PROTO.SVC.NS.svc.DOMAIN` its named port's SRV records, and
//! `HOST.SVC.NS.svc.DOMAIN` one endpoint of a headless Service.

use std::net::IpAddr;
use std::sync::Arc;

use orca_core::api::{EndpointSlice, Service};
use orca_core::watch::{ObjectKey, Reader};

use crate::message::{Name, Query, RData, Record, Response, rcode, rtype};

/// Seconds an answer may be cached: the kubernetes plugin's default.
pub const TTL: u32 = 5;

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The cluster domain and the caches its names come from.
#[derive(Clone)]
pub struct Zone {
    /// The domain as configured, for the SOA record.
    domain: Name,
    /// Its labels, lower-cased, for matching.
    labels: Vec<String>,
    services: Reader<Service>,
    slices: Reader<EndpointSlice>,
}

/// One address of a Service's endpoints, with the name it answers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: IpAddr,
    /// Its `hostname`, else its address with dashes (`10-244-1-5`).
    host: String,
    /// Name, protocol (lower-cased) and port, from its slice.
    ports: Vec<(String, String, u16)>,
}

impl Zone {
    /// The zone of `domain` (like `cluster.local`), answered from these
    /// caches; `None` if `domain` is not a valid name.
    pub fn new(
        domain: &str,
        services: Reader<Service>,
        slices: Reader<EndpointSlice>,
    ) -> Option<Zone> {
        let domain = Name::parse(domain)?;
        let labels = domain.lower_labels();
        (!labels.is_empty()).then_some(Zone {
            domain,
            labels,
            services,
            slices,
        })
    }

    /// The answer to `query` if its name is in the domain; `None` for
    /// names to forward.
    pub fn answer(&self, query: &Query) -> Option<Response> {
        let labels = query.name.lower_labels();
        let inside = labels.len().checked_sub(self.labels.len())?;
        if labels[inside..] != self.labels[..] {
            return None;
        }
        if !self.services.has_synced() || !self.slices.has_synced() {
            // Better a retry than a wrong NXDOMAIN that gets cached.
            return Some(Response::empty(rcode::SERVFAIL));
        }
        let mut response = Response::empty(rcode::NOERROR);
        response.authoritative = true;
        let exists = self.lookup(&labels[..inside], query, &mut response);
        if !exists {
            response.rcode = rcode::NXDOMAIN;
        }
        if response.answers.is_empty() {
            // Negative answers carry the zone's SOA, whose minimum is how
            // long resolvers may cache them (RFC 2308).
            response.authority.push(self.soa());
        }
        Some(response)
    }

    /// Fills `response` for the name `rel` (its labels before the domain);
    /// whether the name exists.
    fn lookup(&self, rel: &[String], query: &Query, response: &mut Response) -> bool {
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        match rel[..] {
            [] => {
                if matches!(query.qtype, rtype::SOA | rtype::ANY) {
                    response.answers.push(self.soa());
                }
                true
            }
            ["svc"] => true,
            [ns, "svc"] => !self.services.in_namespace(ns).is_empty(),
            [name, ns, "svc"] => match self.service(ns, name) {
                Some(svc) => {
                    self.service_records(&svc, ns, name, query, response);
                    true
                }
                None => false,
            },
            [port, proto, name, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(svc) = self.service(ns, name) else {
                    return false;
                };
                let (port, proto) = (&port[1..], &proto[1..]);
                let found =
                    self.srv_records(&svc, ns, name, &query.name, Some((port, proto)), response);
                if !matches!(query.qtype, rtype::SRV | rtype::ANY) {
                    response.answers.clear();
                    response.additional.clear();
                }
                found
            }
            [host, name, ns, "svc"] => {
                let Some(svc) = self.service(ns, name) else {
                    return false;
                };
                if !is_headless(&svc) {
                    return false;
                }
                let endpoints = self.endpoints(&svc, ns, name);
                let mine: Vec<&Endpoint> = endpoints.iter().filter(|e| e.host == host).collect();
                for ep in &mine {
                    push_address(response, &query.name, ep.ip, query.qtype);
                }
                !mine.is_empty()
            }
            _ => false,
        }
    }

    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectKey::new(Some(ns), name))
    }

    fn service_records(
        &self,
        svc: &Service,
        ns: &str,
        name: &str,
        query: &Query,
        response: &mut Response,
    ) {
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            if let Some(target) = spec
                .and_then(|s| s.external_name.as_deref())
                .and_then(Name::parse)
            {
                response.answers.push(Record {
                    name: query.name.clone(),
                    ttl: TTL,
                    data: RData::Cname(target),
                });
            }
            return;
        }
        if query.qtype == rtype::SRV {
            self.srv_records(svc, ns, name, &query.name, None, response);
            return;
        }
        let addresses: Vec<IpAddr> = if is_headless(svc) {
            self.endpoints(svc, ns, name).iter().map(|e| e.ip).collect()
        } else {
            cluster_ips(svc)
        };
        for ip in addresses {
            push_address(response, &query.name, ip, query.qtype);
        }
    }

    /// SRV records of a Service's named ports (only `port` over `proto` if
    /// given), their targets' addresses in the additional section; whether
    /// the Service has such a port.
    fn srv_records(
        &self,
        svc: &Service,
        ns: &str,
        name: &str,
        owner: &Name,
        only: Option<(&str, &str)>,
        response: &mut Response,
    ) -> bool {
        let svc_name = self.domain.prepend(&[name, ns, "svc"]);
        let wanted = |port: &str, proto: &str| match only {
            Some((p, pr)) => p == port && pr == proto,
            None => true,
        };
        let ports: Vec<(String, String, u16)> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port_name = p.name.as_deref().filter(|n| !n.is_empty())?;
                let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                Some((
                    port_name.to_ascii_lowercase(),
                    proto,
                    u16::try_from(p.port).ok()?,
                ))
            })
            .filter(|(n, pr, _)| wanted(n, pr))
            .collect();
        if ports.is_empty() {
            return false;
        }
        let mut srv = Vec::new();
        if is_headless(svc) {
            for ep in self.endpoints(svc, ns, name) {
                let target = svc_name.prepend(&[&ep.host]);
                let mut any = false;
                for (port_name, proto, port) in &ep.ports {
                    if ports.iter().any(|(n, pr, _)| n == port_name && pr == proto) {
                        srv.push((target.clone(), *port));
                        any = true;
                    }
                }
                if any {
                    push_address_record(&mut response.additional, &target, ep.ip);
                }
            }
        } else {
            for (_, _, port) in &ports {
                srv.push((svc_name.clone(), *port));
            }
            for ip in cluster_ips(svc) {
                push_address_record(&mut response.additional, &svc_name, ip);
            }
        }
        let weight = u16::try_from(100 / srv.len().max(1)).unwrap_or(1).max(1);
        for (target, port) in srv {
            response.answers.push(Record {
                name: owner.clone(),
                ttl: TTL,
                data: RData::Srv {
                    priority: 0,
                    weight,
                    port,
                    target,
                },
            });
        }
        true
    }

    /// The addresses of a Service's endpoints in its EndpointSlices: the
    /// ready ones, or all with `publishNotReadyAddresses`.
    fn endpoints(&self, svc: &Service, ns: &str, name: &str) -> Vec<Endpoint> {
        let all = svc
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            .unwrap_or(false);
        let mut out: Vec<Endpoint> = Vec::new();
        for slice in self.slices.in_namespace(ns) {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if owner.map(String::as_str) != Some(name) {
                continue;
            }
            let ports: Vec<(String, String, u16)> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.name.as_deref().unwrap_or_default().to_ascii_lowercase(),
                        p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                        u16::try_from(p.port?).ok()?,
                    ))
                })
                .collect();
            for ep in &slice.endpoints {
                // Unset ready means ready, as EndpointSlice readers agree.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready && !all {
                    continue;
                }
                for address in &ep.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    let host = ep
                        .hostname
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .unwrap_or_else(|| dashed(ip));
                    out.push(Endpoint {
                        ip,
                        host,
                        ports: ports.clone(),
                    });
                }
            }
        }
        out.sort();
        out.dedup_by(|a, b| a.ip == b.ip);
        out
    }

    fn soa(&self) -> Record {
        Record {
            name: self.domain.clone(),
            ttl: TTL,
            data: RData::Soa {
                mname: self.domain.prepend(&["ns", "dns"]),
                rname: self.domain.prepend(&["hostmaster"]),
                // The cache's revision moves whenever a Service does.
                serial: (self.services.revision() & 0xFFFF_FFFF) as u32,
                minimum: TTL,
            },
        }
    }
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// A Service's ClusterIPs, one per family as dual-stack lists them.
fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
    {
        if let Ok(ip) = ip.parse::<IpAddr>()
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
    }
    ips
}

/// An address as one DNS label: `10-244-1-5`, `fd00--5`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Adds `ip` to the answer if the query asks for its family.
fn push_address(response: &mut Response, name: &Name, ip: IpAddr, qtype: u16) {
    let wanted = match ip {
        IpAddr::V4(_) => matches!(qtype, rtype::A | rtype::ANY),
        IpAddr::V6(_) => matches!(qtype, rtype::AAAA | rtype::ANY),
    };
    if wanted {
        push_address_record(&mut response.answers, name, ip);
    }
}

fn push_address_record(records: &mut Vec<Record>, name: &Name, ip: IpAddr) {
    records.push(Record {
        name: name.clone(),
        ttl: TTL,
        data: match ip {
            IpAddr::V4(v4) => RData::A(v4),
            IpAddr::V6(v6) => RData::Aaaa(v6),
        },
    });
}

#[cfg(test)]
mod tests {
    use orca_core::watch::{Event, store};
    use serde_json::json;

    use super::*;
    use crate::message::{Parsed, parse};

    fn zone(services: Vec<serde_json::Value>, slices: Vec<serde_json::Value>) -> Zone {
        let (svc_reader, mut svc_writer) = store::<Service>();
        let (slice_reader, mut slice_writer) = store::<EndpointSlice>();
        svc_writer.apply(&Event::Init);
        for s in services {
            svc_writer.apply(&Event::InitApply(serde_json::from_value(s).unwrap()));
        }
        svc_writer.apply(&Event::InitDone);
        slice_writer.apply(&Event::Init);
        for s in slices {
            slice_writer.apply(&Event::InitApply(serde_json::from_value(s).unwrap()));
        }
        slice_writer.apply(&Event::InitDone);
        Zone::new("cluster.local", svc_reader, slice_reader).unwrap()
    }

    fn service(name: &str, cluster_ip: &str, ports: serde_json::Value) -> serde_json::Value {
        json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": cluster_ip, "ports": ports},
        })
    }

    fn query(name: &str, qtype: u16) -> Query {
        let mut m = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.trim_end_matches('.').split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        match parse(&m) {
            Some(Parsed::Query(q)) => q,
            other => panic!("{other:?}"),
        }
    }

    fn cluster() -> Zone {
        zone(
            vec![
                service(
                    "nginx",
                    "10.96.0.10",
                    json!([{"name": "http", "port": 80}, {"port": 8080, "name": "alt", "protocol": "UDP"}]),
                ),
                service("db", "None", json!([{"name": "pg", "port": 5432}])),
                json!({
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"type": "ExternalName", "externalName": "www.example.com"},
                }),
                json!({
                    "metadata": {"name": "dual", "namespace": "default"},
                    "spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11", "fd00::11"]},
                }),
            ],
            vec![json!({
                "metadata": {"name": "db-abcde", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.1.6"], "hostname": "db-0"},
                    {"addresses": ["10.244.1.7"], "conditions": {"ready": false}},
                ],
            })],
        )
    }

    fn addresses(r: &Response) -> Vec<String> {
        r.answers
            .iter()
            .map(|a| match &a.data {
                RData::A(ip) => ip.to_string(),
                RData::Aaaa(ip) => ip.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_service_resolves_to_its_cluster_ip_whatever_the_case() {
        let z = cluster();
        let r = z
            .answer(&query("NGINX.default.svc.Cluster.Local", rtype::A))
            .unwrap();
        assert_eq!(r.rcode, rcode::NOERROR);
        assert!(r.authoritative);
        assert_eq!(addresses(&r), ["10.96.0.10"]);
        assert_eq!(r.answers[0].ttl, 5);
        // The owner name keeps the client's spelling.
        assert_eq!(
            r.answers[0].name.to_string(),
            "NGINX.default.svc.Cluster.Local."
        );
    }

    #[test]
    fn aaaa_of_an_ipv4_service_is_an_empty_noerror_and_dual_stack_has_both() {
        let z = cluster();
        let r = z
            .answer(&query("nginx.default.svc.cluster.local", rtype::AAAA))
            .unwrap();
        assert_eq!(r.rcode, rcode::NOERROR);
        assert!(r.answers.is_empty());
        assert!(matches!(r.authority[0].data, RData::Soa { minimum: 5, .. }));
        let r = z
            .answer(&query("dual.default.svc.cluster.local", rtype::AAAA))
            .unwrap();
        assert_eq!(addresses(&r), ["fd00::11"]);
        let r = z
            .answer(&query("dual.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(addresses(&r), ["10.96.0.11"]);
    }

    #[test]
    fn a_headless_service_resolves_to_its_ready_endpoints() {
        let z = cluster();
        let r = z
            .answer(&query("db.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(addresses(&r), ["10.244.1.5", "10.244.1.6"]);
        // Each endpoint by its hostname, else its dashed address.
        let r = z
            .answer(&query("db-0.db.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(addresses(&r), ["10.244.1.6"]);
        let r = z
            .answer(&query("10-244-1-5.db.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(addresses(&r), ["10.244.1.5"]);
        let r = z
            .answer(&query("10-244-1-7.db.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(r.rcode, rcode::NXDOMAIN);
    }

    #[test]
    fn named_ports_have_srv_records() {
        let z = cluster();
        let r = z
            .answer(&query(
                "_http._tcp.nginx.default.svc.cluster.local",
                rtype::SRV,
            ))
            .unwrap();
        assert_eq!(r.answers.len(), 1);
        let RData::Srv { port, target, .. } = &r.answers[0].data else {
            panic!("{r:?}");
        };
        assert_eq!(*port, 80);
        assert_eq!(target.to_string(), "nginx.default.svc.cluster.local.");
        assert_eq!(r.additional.len(), 1);
        // The UDP port is not a TCP one.
        let r = z
            .answer(&query(
                "_alt._tcp.nginx.default.svc.cluster.local",
                rtype::SRV,
            ))
            .unwrap();
        assert_eq!(r.rcode, rcode::NXDOMAIN);
        let r = z
            .answer(&query(
                "_alt._udp.nginx.default.svc.cluster.local",
                rtype::SRV,
            ))
            .unwrap();
        assert_eq!(r.answers.len(), 1);
        // The Service's name gives every named port.
        let r = z
            .answer(&query("nginx.default.svc.cluster.local", rtype::SRV))
            .unwrap();
        assert_eq!(r.answers.len(), 2);
        // A headless Service's SRV records name each endpoint, with the
        // slice's target port.
        let r = z
            .answer(&query("_pg._tcp.db.default.svc.cluster.local", rtype::SRV))
            .unwrap();
        let targets: Vec<(String, u16)> = r
            .answers
            .iter()
            .map(|a| match &a.data {
                RData::Srv { target, port, .. } => (target.to_string(), *port),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            targets,
            [
                (
                    "10-244-1-5.db.default.svc.cluster.local.".to_string(),
                    15432
                ),
                ("db-0.db.default.svc.cluster.local.".to_string(), 15432)
            ]
        );
        assert_eq!(r.additional.len(), 2);
    }

    #[test]
    fn an_external_name_service_is_an_alias() {
        let r = cluster()
            .answer(&query("web.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(r.answers.len(), 1);
        assert_eq!(
            r.answers[0].data,
            RData::Cname(Name::parse("www.example.com").unwrap())
        );
    }

    #[test]
    fn unknown_names_in_the_domain_are_nxdomain_and_others_are_not_ours() {
        let z = cluster();
        for name in [
            "nope.default.svc.cluster.local",
            "nginx.other.svc.cluster.local",
            "a.b.c.d.e.f.cluster.local",
            "nginx.default.cluster.local",
        ] {
            let r = z.answer(&query(name, rtype::A)).unwrap();
            assert_eq!(r.rcode, rcode::NXDOMAIN, "{name}");
            assert!(matches!(r.authority[0].data, RData::Soa { .. }), "{name}");
        }
        // Names that exist without records of their own.
        for name in [
            "cluster.local",
            "svc.cluster.local",
            "default.svc.cluster.local",
        ] {
            let r = z.answer(&query(name, rtype::A)).unwrap();
            assert_eq!(r.rcode, rcode::NOERROR, "{name}");
            assert!(r.answers.is_empty());
        }
        assert_eq!(
            z.answer(&query("cluster.local", rtype::SOA))
                .unwrap()
                .answers
                .len(),
            1
        );
        assert!(z.answer(&query("example.com", rtype::A)).is_none());
        assert!(z.answer(&query("local", rtype::A)).is_none());
        assert!(z.answer(&query("xcluster.local", rtype::A)).is_none());
    }

    #[test]
    fn nothing_is_answered_before_the_caches_have_listed() {
        let (services, _w1) = store::<Service>();
        let (slices, _w2) = store::<EndpointSlice>();
        let z = Zone::new("cluster.local", services, slices).unwrap();
        let r = z
            .answer(&query("nginx.default.svc.cluster.local", rtype::A))
            .unwrap();
        assert_eq!(r.rcode, rcode::SERVFAIL);
    }
}
