//! What the node proxy reads of Services and EndpointSlices, kept compact:
//! the watch delivers whole objects, and at 10k Services the typed objects
//! took ~90 MiB, nearly all of it fields no rule reads (target references,
//! metadata, topology). Each object is reduced as it arrives.

use std::net::{IpAddr, SocketAddr};

use orca_core::api::{EndpointSlice, Service};

use super::proxier::{Endpoint, Proto, ServicePort};
use super::ruleset::Family;

/// Kubernetes' default session affinity timeout.
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// What the rules need of a Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its ClusterIPs, one per family (none for headless and ExternalName
    /// Services).
    cluster_ips: Vec<IpAddr>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    affinity: Option<u32>,
    internal_local: bool,
    external_local: bool,
    ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortInfo {
    name: Box<str>,
    proto: Proto,
    port: u16,
    /// For NodePort and LoadBalancer Services.
    node_port: Option<u16>,
}

impl ServiceInfo {
    /// Reduces a Service.
    pub fn new(svc: &Service) -> ServiceInfo {
        let Some(spec) = &svc.spec else {
            return ServiceInfo::default();
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return ServiceInfo::default();
        }
        // Dual-stack Services list one ClusterIP per family in clusterIPs.
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        for ip in spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
        {
            if let Ok(ip) = ip.parse::<IpAddr>()
                && !cluster_ips.iter().any(|c| Family::of(*c) == Family::of(ip))
            {
                cluster_ips.push(ip);
            }
        }
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortInfo {
                    name: p.name.as_deref().unwrap_or_default().into(),
                    proto: Proto::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.port).ok()?,
                    node_port: p
                        .node_port
                        .filter(|_| node_ports)
                        .and_then(|n| u16::try_from(n).ok()),
                })
            })
            .collect();
        ServiceInfo {
            cluster_ips,
            affinity,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            ports,
        }
    }
}

/// What the rules need of an EndpointSlice, for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// `None` for FQDN slices, which no rule uses.
    family: Option<Family>,
    /// Port name, protocol and target port.
    ports: Vec<(Box<str>, Proto, u16)>,
    /// One entry per address, the port left out.
    endpoints: Vec<Endpoint>,
}

impl SliceInfo {
    /// Reduces a slice, as seen from `node` (for `Local` traffic policies).
    pub fn new(slice: &EndpointSlice, node: &str) -> SliceInfo {
        let family = match slice.address_type.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.as_deref().unwrap_or_default().into(),
                    Proto::parse(p.protocol.as_deref())?,
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let mut endpoints = Vec::new();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            // Unset ready means ready; unset serving follows ready.
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let local = ep.node_name.as_deref() == Some(node);
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    endpoints.push(Endpoint {
                        addr: SocketAddr::new(ip, 0),
                        ready,
                        serving,
                        terminating,
                        local,
                    });
                }
            }
        }
        endpoints.shrink_to_fit();
        SliceInfo {
            family,
            ports,
            endpoints,
        }
    }
}

/// The service ports of `family` of a Service and its slices. Headless and
/// ExternalName Services have none, and so has a Service without a
/// ClusterIP of that family.
pub fn service_ports(svc: &ServiceInfo, slices: &[&SliceInfo], family: Family) -> Vec<ServicePort> {
    let Some(cluster_ip) = svc
        .cluster_ips
        .iter()
        .copied()
        .find(|ip| Family::of(*ip) == family)
    else {
        return Vec::new();
    };
    svc.ports
        .iter()
        .map(|p| {
            let mut endpoints = Vec::new();
            for slice in slices.iter().filter(|s| s.family == Some(family)) {
                // Target ports come from the slice, matched by port name,
                // as kube-proxy does: named target ports resolve per pod.
                let Some((_, _, target)) = slice
                    .ports
                    .iter()
                    .find(|(name, proto, _)| *name == p.name && *proto == p.proto)
                else {
                    continue;
                };
                endpoints.extend(slice.endpoints.iter().map(|e| Endpoint {
                    addr: SocketAddr::new(e.addr.ip(), *target),
                    ..*e
                }));
            }
            endpoints.sort();
            endpoints.dedup_by(|a, b| a.addr == b.addr);
            ServicePort {
                cluster_ip,
                port: p.port,
                proto: p.proto,
                node_port: p.node_port,
                affinity: svc.affinity,
                internal_local: svc.internal_local,
                external_local: svc.external_local,
                endpoints,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn named_target_ports_resolve_per_slice_and_protocol() {
        let svc: Service = object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.9", "type": "NodePort", "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }));
        let slice = |name: &str, port: i32, ip: &str, node: &str| -> EndpointSlice {
            object(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
                "endpoints": [{"addresses": [ip], "nodeName": node}]
            }))
        };
        let a = slice("a", 8080, "10.244.1.2", "n1");
        let b = slice("b", 9090, "10.244.2.2", "n2");
        let (a, b) = (SliceInfo::new(&a, "n1"), SliceInfo::new(&b, "n1"));
        let info = ServiceInfo::new(&svc);
        let ports = service_ports(&info, &[&a, &b], Family::V4);
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(
            (http.port, http.proto, http.node_port),
            (80, Proto::Tcp, Some(30080))
        );
        let got: Vec<(String, bool)> = http
            .endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.local))
            .collect();
        assert_eq!(
            got,
            [
                ("10.244.1.2:8080".to_string(), true),
                ("10.244.2.2:9090".to_string(), false)
            ]
        );
        assert_eq!(ports[1].proto, Proto::Udp);
        assert_eq!(ports[1].endpoints[0].addr.port(), 5353);

        let headless: Service = object(serde_json::json!({
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        assert!(service_ports(&ServiceInfo::new(&headless), &[&a], Family::V4).is_empty());
        assert!(
            service_ports(&info, &[&a], Family::V6).is_empty(),
            "no IPv6 ClusterIP"
        );
    }

    #[test]
    fn a_dual_stack_service_has_ports_in_each_family() {
        let svc: Service = object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9", "fd00:96::9"],
                     "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]}
        }));
        let v6: EndpointSlice = object(serde_json::json!({
            "metadata": {"name": "web-v6", "namespace": "default"},
            "addressType": "IPv6",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["fd00:244:1::2"]}]
        }));
        let (svc, v6) = (ServiceInfo::new(&svc), SliceInfo::new(&v6, "n1"));
        let ports = service_ports(&svc, &[&v6], Family::V6);
        assert_eq!(ports[0].cluster_ip, "fd00:96::9".parse::<IpAddr>().unwrap());
        assert_eq!(
            ports[0].endpoints[0].addr,
            "[fd00:244:1::2]:8080".parse().unwrap()
        );
        let v4 = service_ports(&svc, &[&v6], Family::V4);
        assert_eq!(v4[0].cluster_ip, "10.96.0.9".parse::<IpAddr>().unwrap());
        assert!(v4[0].endpoints.is_empty(), "no IPv4 slice");
    }

    #[test]
    fn affinity_and_traffic_policies_are_read() {
        let svc: Service = object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.9", "type": "ClusterIP", "sessionAffinity": "ClientIP",
                     "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        let ports = service_ports(&ServiceInfo::new(&svc), &[], Family::V4);
        assert_eq!(ports[0].affinity, Some(DEFAULT_AFFINITY_SECONDS));
        assert!(ports[0].internal_local && ports[0].external_local);
        assert_eq!(
            ports[0].node_port, None,
            "a ClusterIP Service has no node port"
        );
        let external: Service = object(serde_json::json!({
            "spec": {"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]}
        }));
        assert!(service_ports(&ServiceInfo::new(&external), &[], Family::V4).is_empty());
    }
}
