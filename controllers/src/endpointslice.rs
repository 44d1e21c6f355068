//! The EndpointSlice controller: for each Service with a selector, slices of
//! at most 100 endpoints of the pods it selects (address, ready / serving /
//! terminating, node, the pod it is), with named `targetPort`s resolved per
//! pod, labelled as kube-proxy reads them. Both of Orca's proxies read them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orca_core::api::{
    CompactPod, EndpointSlice, LabelSelector, ObjectMeta, Service, selector_matches,
};
use orca_core::store::{DeleteOptions, Error, Store};
use orca_core::watch::{Action, Change, Controller, Informers, ObjectKey, Reader};

use crate::pods::is_ready;
use crate::replicaset::owner_reference;

/// The label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in [`MANAGED_BY`].
pub const MANAGER: &str = "endpointslice-controller.orca.dev";
/// Endpoints per slice, as Kubernetes caps them.
const MAX_ENDPOINTS: usize = 100;

/// The EndpointSlice control loop.
pub struct EndpointSlices {
    store: Store,
    services: Reader<Service>,
    pods: Reader<CompactPod>,
    slices: Reader<EndpointSlice>,
}

/// Which Services' slices list each pod, kept from the slice cache's
/// changes as they are made, so a pod's change finds them without reading
/// every slice of its namespace.
#[derive(Default)]
struct Listed {
    /// Per slice: its Service and the pods it lists.
    slices: HashMap<ObjectKey, (String, Vec<String>)>,
    /// Per pod (namespace, name): the Services listing it, and in how
    /// many of their slices.
    pods: HashMap<(String, String), HashMap<String, usize>>,
}

impl Listed {
    fn apply(&mut self, slice: &EndpointSlice) {
        let key = ObjectKey::of(slice);
        self.remove(&key);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME))
        else {
            return;
        };
        let namespace = key.namespace.clone().unwrap_or_default();
        let pods: Vec<String> = slice
            .endpoints
            .iter()
            .filter_map(|e| e.target_ref.as_ref()?.name.clone())
            .collect();
        for pod in &pods {
            *self
                .pods
                .entry((namespace.clone(), pod.clone()))
                .or_default()
                .entry(service.clone())
                .or_default() += 1;
        }
        self.slices.insert(key, (service.clone(), pods));
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some((service, pods)) = self.slices.remove(key) else {
            return;
        };
        let namespace = key.namespace.clone().unwrap_or_default();
        for pod in pods {
            let entry = (namespace.clone(), pod);
            if let Some(services) = self.pods.get_mut(&entry) {
                if let Some(n) = services.get_mut(&service) {
                    *n -= 1;
                    if *n == 0 {
                        services.remove(&service);
                    }
                }
                if services.is_empty() {
                    self.pods.remove(&entry);
                }
            }
        }
    }

    /// The Services whose slices list the pod.
    fn services(&self, namespace: &str, pod: &str) -> Vec<ObjectKey> {
        self.pods
            .get(&(namespace.to_string(), pod.to_string()))
            .into_iter()
            .flat_map(|services| services.keys())
            .map(|service| ObjectKey::new(Some(namespace), service))
            .collect()
    }
}

/// The slices of a Service this controller manages.
fn managed<'a>(slices: &'a [Arc<EndpointSlice>], service: &str) -> Vec<&'a EndpointSlice> {
    let mut owned: Vec<&EndpointSlice> = slices
        .iter()
        .map(|s| &**s)
        .filter(|s| {
            let labels = s.metadata.labels.as_ref();
            labels.and_then(|l| l.get(SERVICE_NAME)).map(String::as_str) == Some(service)
                && labels.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(MANAGER)
        })
        .collect();
    owned.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    owned
}

fn selector_of(svc: &Service) -> Option<LabelSelector> {
    let selector = svc.spec.as_ref()?.selector.clone()?;
    (!selector.is_empty()).then_some(LabelSelector {
        match_labels: Some(selector),
        match_expressions: None,
    })
}

impl EndpointSlices {
    /// The loop and its controller on the shared caches, writing through
    /// `store`. A pod's change requeues the Services that select it now
    /// and those whose slices list it.
    pub fn new(informers: &Informers, store: Store) -> (Arc<Self>, Controller<Service>) {
        let services = informers.all::<Service>();
        let pods = informers.all::<CompactPod>();
        let slices = informers.all::<EndpointSlice>();
        let this = Arc::new(Self {
            store,
            services: services.reader(),
            pods: pods.reader(),
            slices: slices.reader(),
        });
        let by_selector = services.reader();
        let listed = Arc::new(Mutex::new(Listed::default()));
        let following = Arc::downgrade(&listed);
        slices.on_change(move |change| {
            // The controller (whose pod mapping holds the index) is gone.
            let Some(listed) = following.upgrade() else {
                return false;
            };
            let mut listed = listed.lock().unwrap_or_else(PoisonError::into_inner);
            match change {
                Change::Applied(slice) => listed.apply(slice),
                Change::Deleted(slice) => listed.remove(&ObjectKey::of(&**slice)),
                Change::Synced => {}
            }
            true
        });
        let controller = Controller::new(&services)
            .owns(&slices)
            .watches(&pods, move |pod: &CompactPod| {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                let empty = BTreeMap::new();
                let labels = pod.metadata.labels.as_deref().unwrap_or(&empty);
                let mut keys: HashSet<ObjectKey> = by_selector
                    .in_namespace(&namespace)
                    .iter()
                    .filter(|svc| {
                        selector_of(svc).is_some_and(|sel| selector_matches(&sel, labels))
                    })
                    .map(|svc| ObjectKey::of(&**svc))
                    .collect();
                keys.extend(
                    listed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .services(&namespace, name),
                );
                keys.into_iter().collect()
            })
            .named("endpointslice");
        (this, controller)
    }

    /// Brings one Service's slices to the pods it selects now.
    pub async fn reconcile(&self, key: ObjectKey) -> Result<Action, Error> {
        let namespace = key.namespace.clone().unwrap_or_default();
        let in_namespace = self.slices.in_namespace(&namespace);
        let existing = managed(&in_namespace, &key.name);
        let api = self.store.api::<EndpointSlice>(&namespace);
        let svc = self.services.get(&key);
        let Some(selector) = svc.as_deref().and_then(selector_of) else {
            // Gone, or without a selector (its slices are the user's): ours go.
            for slice in existing {
                delete(&api, slice).await?;
            }
            return Ok(Action::AwaitChange);
        };
        let svc = svc.expect("a selector came from it");
        let mut pods: Vec<Arc<CompactPod>> = self
            .pods
            .selected(&namespace, &selector)
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_deref())
                    .is_some()
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

        // Pods group by the ports they resolve to and their address family.
        let mut groups: BTreeMap<(String, Vec<ResolvedPort>), Vec<Endpoint>> = BTreeMap::new();
        for pod in &pods {
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
            let Some(ports) = resolve_ports(&svc, pod) else {
                continue;
            };
            groups
                .entry((family.to_string(), ports))
                .or_default()
                .push(endpoint(pod, ip));
        }
        let mut desired: Vec<(String, Vec<EndpointPort>, Vec<Endpoint>)> = Vec::new();
        for ((family, ports), endpoints) in groups {
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .map(|(name, port, protocol)| EndpointPort {
                    name: Some(name),
                    port: Some(port),
                    protocol: Some(protocol),
                    app_protocol: None,
                })
                .collect();
            for chunk in endpoints.chunks(MAX_ENDPOINTS) {
                desired.push((family.clone(), ports.clone(), chunk.to_vec()));
            }
        }

        let labels = BTreeMap::from([
            (SERVICE_NAME.to_string(), key.name.clone()),
            (MANAGED_BY.to_string(), MANAGER.to_string()),
        ]);
        for (i, (family, ports, endpoints)) in desired.iter().enumerate() {
            match existing.get(i) {
                Some(slice)
                    if slice.address_type == *family
                        && slice.endpoints == *endpoints
                        && slice.ports.as_ref() == Some(ports) => {}
                Some(slice) => {
                    let mut changed = (*slice).clone();
                    changed.address_type = family.clone();
                    changed.endpoints = endpoints.clone();
                    changed.ports = Some(ports.clone());
                    match api.update(&changed).await {
                        Ok(_) => {}
                        // The cache was behind: the next pass sees the slice as it is.
                        Err(Error::Conflict { .. } | Error::NotFound { .. }) => {
                            return Ok(Action::Requeue(std::time::Duration::from_millis(100)));
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => {
                    let slice = EndpointSlice {
                        metadata: ObjectMeta {
                            generate_name: Some(format!("{}-", key.name)),
                            namespace: Some(namespace.clone()),
                            labels: Some(labels.clone()),
                            owner_references: Some(vec![owner_reference(
                                "v1",
                                "Service",
                                &svc.metadata,
                            )]),
                            ..ObjectMeta::default()
                        },
                        address_type: family.clone(),
                        endpoints: endpoints.clone(),
                        ports: Some(ports.clone()),
                    };
                    api.create(&slice).await?;
                }
            }
        }
        for slice in existing.iter().skip(desired.len()) {
            delete(&api, slice).await?;
        }
        Ok(Action::AwaitChange)
    }
}

async fn delete(
    api: &orca_core::store::Api<EndpointSlice>,
    slice: &EndpointSlice,
) -> Result<(), Error> {
    let name = slice.metadata.name.clone().unwrap_or_default();
    api.delete_if_exists(&name, DeleteOptions::default())
        .await
        .map(|_| ())
}

/// A Service port as one pod serves it: name, number, protocol.
type ResolvedPort = (String, i32, String);

/// The Service's ports as `pod` serves them: `(name, port, protocol)`, a
/// named `targetPort` looked up among the pod's container ports. `None`
/// when a named port is not there (the pod is left out, as Kubernetes
/// does).
fn resolve_ports(svc: &Service, pod: &CompactPod) -> Option<Vec<ResolvedPort>> {
    let ports = svc.spec.as_ref()?.ports.clone().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    ports
        .iter()
        .map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let number = match &p.target_port {
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .map(|cp| cp.container_port)?,
                None => p.port,
            };
            Some((p.name.clone().unwrap_or_default(), number, protocol))
        })
        .collect()
}

fn endpoint(pod: &CompactPod, ip: String) -> Endpoint {
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = is_ready(pod);
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready && !terminating),
            serving: Some(ready),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, service: &str, pods: &[&str]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME.to_string(),
                    service.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: pods
                .iter()
                .map(|p| Endpoint {
                    target_ref: Some(ObjectReference {
                        name: Some(p.to_string()),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: None,
        }
    }

    fn services(listed: &Listed, pod: &str) -> Vec<String> {
        let mut names: Vec<String> = listed
            .services("default", pod)
            .into_iter()
            .map(|k| k.name)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_slices_as_they_change() {
        let mut listed = Listed::default();
        listed.apply(&slice("web-1", "web", &["a", "b"]));
        listed.apply(&slice("web-2", "web", &["b"]));
        listed.apply(&slice("api-1", "api", &["b"]));
        assert_eq!(services(&listed, "a"), ["web"]);
        assert_eq!(services(&listed, "b"), ["api", "web"]);
        // A changed slice forgets the pods it no longer lists.
        listed.apply(&slice("web-1", "web", &["c"]));
        assert!(services(&listed, "a").is_empty());
        assert_eq!(services(&listed, "c"), ["web"]);
        assert_eq!(services(&listed, "b"), ["api", "web"]);
        listed.remove(&ObjectKey::new(Some("default"), "web-2"));
        assert_eq!(services(&listed, "b"), ["api"]);
        listed.remove(&ObjectKey::new(Some("default"), "api-1"));
        assert!(services(&listed, "b").is_empty());
        assert!(listed.pods.keys().all(|(_, pod)| pod == "c"));
    }
}
