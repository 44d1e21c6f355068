//! The API objects Orca stores: Kubernetes kinds from `k8s-openapi`, and the
//! table that maps a manifest's `apiVersion`/`kind` (or a CLI name such as
//! `deploy`) to where and how the object is stored.

mod compact;
mod shared;

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::validation::{FieldError, Invalid, Validate};

pub use compact::{
    CompactCondition, CompactContainer, CompactMeta, CompactPod, CompactPodSpec, CompactPodStatus,
    PodTemplateFields,
};
pub use shared::{Pool, Pooled, Shared};

pub use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
pub use k8s_openapi::api::coordination::v1::Lease;
pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
pub use k8s_openapi::api::discovery::v1::EndpointSlice;
pub use k8s_openapi::api::networking::v1::Ingress;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
};

/// A kind Orca can store: a `k8s-openapi` type with metadata and validation.
pub trait Object:
    Resource
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Validate
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Whether objects of this kind live in a namespace.
    fn namespaced() -> bool {
        TypeId::of::<Self::Scope>() == TypeId::of::<NamespaceResourceScope>()
    }
}

impl<T> Object for T where
    T: Resource
        + Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Validate
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// What a shared cache holds: a kind as stored, or a compact form of one
/// that keeps only what its readers need ([`CompactPod`]). The cache reads
/// it through these.
pub trait Cached: DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The stored kind it is read from.
    type Kind: Object;
    /// Its name.
    fn name(&self) -> Option<&str>;
    /// Its namespace; `None` for cluster-scoped kinds.
    fn namespace(&self) -> Option<&str>;
    /// The revision it was read at.
    fn resource_version(&self) -> Option<&str>;
    /// Records the revision it was read at.
    fn set_resource_version(&mut self, revision: i64);
    /// Its labels.
    fn labels(&self) -> Option<&BTreeMap<String, String>>;
    /// Its owners.
    fn owner_references(&self) -> &[OwnerReference];
    /// Whether its deletion has begun.
    fn deleting(&self) -> bool;
    /// The node a pod is bound to; `None` for every other kind.
    fn node(&self) -> Option<&str>;
}

impl<K: Object> Cached for K {
    type Kind = K;
    fn name(&self) -> Option<&str> {
        self.metadata().name.as_deref()
    }
    fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata().resource_version.as_deref()
    }
    fn set_resource_version(&mut self, revision: i64) {
        self.metadata_mut().resource_version = Some(revision.to_string());
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata().labels.as_ref()
    }
    fn owner_references(&self) -> &[OwnerReference] {
        self.metadata()
            .owner_references
            .as_deref()
            .unwrap_or_default()
    }
    fn deleting(&self) -> bool {
        self.metadata().deletion_timestamp.is_some()
    }
    fn node(&self) -> Option<&str> {
        (self as &dyn Any)
            .downcast_ref::<Pod>()?
            .spec
            .as_ref()?
            .node_name
            .as_deref()
    }
}

impl Cached for CompactPod {
    type Kind = Pod;
    fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }
    fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
    fn set_resource_version(&mut self, revision: i64) {
        self.metadata.resource_version = Some(revision.to_string());
    }
    fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.labels.as_deref()
    }
    fn owner_references(&self) -> &[OwnerReference] {
        self.metadata
            .owner_references
            .as_deref()
            .map_or(&[], Vec::as_slice)
    }
    fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
    fn node(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }
}

/// How one kind is named and stored; the dynamic view the CLI works with.
#[derive(Debug)]
pub struct Kind {
    /// `apiVersion` as written in manifests (`apps/v1`).
    pub api_version: &'static str,
    /// `kind` as written in manifests (`Deployment`).
    pub kind: &'static str,
    /// Lower-case plural, used in etcd keys and the CLI (`deployments`).
    pub plural: &'static str,
    /// kubectl's short names (`deploy`).
    pub short_names: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the kind has a `status` written by its own owner.
    pub has_status: bool,
    normalize: fn(&Value) -> Result<Value, Invalid>,
}

impl Kind {
    const fn of<K: Object>(
        plural: &'static str,
        short_names: &'static [&'static str],
        namespaced: bool,
        has_status: bool,
    ) -> Self {
        Self {
            api_version: K::API_VERSION,
            kind: K::KIND,
            plural,
            short_names,
            namespaced,
            has_status,
            normalize: normalize::<K>,
        }
    }

    /// Decodes `value` strictly as this kind and validates it.
    pub fn check(&self, value: &Value) -> Result<(), Invalid> {
        (self.normalize)(value).map(|_| ())
    }

    /// Decodes `value` strictly as this kind, validates it, and returns its
    /// canonical form: what a typed writer would write, without explicit
    /// `null`s, so stored objects compare equal however they were spelled.
    pub fn normalize(&self, value: &Value) -> Result<Value, Invalid> {
        (self.normalize)(value)
    }

    /// Finds a kind by a name a user types: kind, plural, singular or short
    /// name, case-insensitively (`Deployment`, `deployments`, `deploy`).
    pub fn lookup(name: &str) -> Option<&'static Kind> {
        let name = name.to_ascii_lowercase();
        KINDS.iter().find(|k| {
            k.kind.eq_ignore_ascii_case(&name)
                || k.plural == name
                || k.short_names.contains(&name.as_str())
        })
    }

    /// Finds the kind a manifest declares with `apiVersion` and `kind`.
    pub fn for_manifest(api_version: &str, kind: &str) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.kind == kind)
    }

    /// Every kind Orca stores.
    pub fn all() -> &'static [Kind] {
        &KINDS
    }
}

static KINDS: [Kind; 11] = [
    Kind::of::<Pod>("pods", &["po"], true, true),
    Kind::of::<Service>("services", &["svc"], true, true),
    Kind::of::<EndpointSlice>("endpointslices", &[], true, false),
    Kind::of::<Node>("nodes", &["no"], false, true),
    Kind::of::<Namespace>("namespaces", &["ns"], false, true),
    Kind::of::<Secret>("secrets", &[], true, false),
    Kind::of::<ConfigMap>("configmaps", &["cm"], true, false),
    Kind::of::<Deployment>("deployments", &["deploy"], true, true),
    Kind::of::<ReplicaSet>("replicasets", &["rs"], true, true),
    Kind::of::<Ingress>("ingresses", &["ing"], true, true),
    Kind::of::<Lease>("leases", &[], true, false),
];

/// Whether `selector` matches `labels`, as Kubernetes reads a
/// `LabelSelector`: every `matchLabels` pair and every `matchExpressions`
/// requirement must hold (an empty selector matches everything; an unknown
/// operator matches nothing).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && selector.match_expressions.iter().flatten().all(|req| {
            let value = labels.get(&req.key);
            let listed = |v: &String| req.values.iter().flatten().any(|x| x == v);
            match req.operator.as_str() {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The table entry of a typed kind.
pub fn kind_of<K: Object>() -> &'static Kind {
    KINDS
        .iter()
        .find(|k| k.api_version == K::API_VERSION && k.kind == K::KIND)
        .expect("every Object type is in the kind table")
}

fn normalize<K: Object>(value: &Value) -> Result<Value, Invalid> {
    decode::<K>(value).map(|obj| serde_json::to_value(&obj).expect("k8s-openapi objects serialise"))
}

/// Decodes `value` as `K`, strictly: a field of the wrong type or a field the
/// kind does not have is an error naming its path, then runs validation.
pub fn decode<K: Object>(value: &Value) -> Result<K, Invalid> {
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let invalid = |errors| Invalid {
        kind: K::KIND.to_string(),
        name: name.clone(),
        errors,
    };
    let object: K = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        invalid(vec![FieldError::invalid(
            path,
            "",
            e.into_inner().to_string(),
        )])
    })?;
    // The k8s-openapi types skip fields they do not know; reading the object
    // back and comparing keys finds them, as kubectl's strict decoding does.
    let back = serde_json::to_value(&object).expect("k8s-openapi objects serialise");
    let mut unknown = Vec::new();
    unknown_fields(value, &back, String::new(), &mut unknown);
    let mut errors = unknown;
    errors.extend(object.validate());
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(object)
}

fn unknown_fields(given: &Value, kept: &Value, path: String, out: &mut Vec<FieldError>) {
    match (given, kept) {
        (Value::Object(given), Value::Object(kept)) => {
            for (key, value) in given {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(k) => unknown_fields(value, k, child, out),
                    // `null` means "unset" and leaves nothing to keep.
                    None if value.is_null() => {}
                    None => out.push(FieldError::unknown(child)),
                }
            }
        }
        (Value::Array(given), Value::Array(kept)) => {
            for (i, (g, k)) in given.iter().zip(kept).enumerate() {
                unknown_fields(g, k, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_by_every_name() {
        for name in ["Deployment", "deployments", "deploy", "DEPLOY"] {
            assert_eq!(Kind::lookup(name).map(|k| k.kind), Some("Deployment"));
        }
        assert_eq!(Kind::lookup("po").map(|k| k.plural), Some("pods"));
        assert!(Kind::lookup("widgets").is_none());
        assert_eq!(
            Kind::for_manifest("networking.k8s.io/v1", "Ingress").map(|k| k.plural),
            Some("ingresses")
        );
        assert!(Kind::for_manifest("v1", "Deployment").is_none());
    }

    #[test]
    fn scope_matches_the_table() {
        assert!(Pod::namespaced());
        assert!(!Node::namespaced());
        assert!(!kind_of::<Namespace>().namespaced);
        assert!(kind_of::<Lease>().namespaced);
    }

    #[test]
    fn unknown_fields_are_named() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labelz": {"a": "b"}},
            "data": {"k": "v"}, "extra": 1, "nothing": null
        });
        let err = decode::<ConfigMap>(&cm).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["extra", "metadata.labelz"]);
    }

    #[test]
    fn selectors_match_as_kubernetes_reads_them() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: Some(exprs),
        };
        assert!(selector_matches(&LabelSelector::default(), &labels));
        assert!(selector_matches(&sel(&[("app", "web")], vec![]), &labels));
        assert!(!selector_matches(&sel(&[("app", "db")], vec![]), &labels));
        assert!(selector_matches(
            &sel(&[], vec![req("tier", "In", &["front", "back"])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("tier", "NotIn", &["front"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![req("zone", "NotIn", &["a"])]),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], vec![req("app", "Exists", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("app", "DoesNotExist", &[])]),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], vec![req("app", "Near", &["web"])]),
            &labels
        ));
    }

    #[test]
    fn wrong_types_name_the_path() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}});
        let err = decode::<ConfigMap>(&cm).unwrap_err();
        assert_eq!(err.errors[0].field, "metadata.name");
    }
}
