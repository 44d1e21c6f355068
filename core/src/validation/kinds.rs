//! The validation rules of each kind, following Kubernetes' own
//! (`apimachinery/pkg/util/validation` and `pkg/apis/*/validation`): the same
//! field paths, the same messages, bad values rendered the way Go renders
//! them, so an error reads as `kubectl` would print it.
//!
//! The API server defaults an object before it validates it; Orca validates
//! the object as written, so an unset field is read as its default
//! (`protocol` as `TCP`, `restartPolicy` as `Always`) rather than reported
//! missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, ExecAction, GRPCAction, HTTPGetAction, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, ServicePort, ServiceSpec, SleepAction,
    TCPSocketAction, Volume,
};
use k8s_openapi::api::networking::v1::{HTTPIngressPath, IngressBackend, IngressSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ErrorType, FieldError, Validate, quote};
use crate::api::*;

type Errors = Vec<FieldError>;
type Labels = BTreeMap<String, String>;
/// A format check: the reasons `value` breaks it, in Kubernetes' words.
type Rule = fn(&str) -> Vec<String>;

// ---------------------------------------------------------------------------
// Formats and their messages (k8s.io/apimachinery/pkg/util/validation)
// ---------------------------------------------------------------------------

const NEGATIVE: &str = "must be greater than or equal to 0";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const INVALID_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const INVALID_CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const QUANTITY_FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
/// Secrets and ConfigMaps hold at most 1 MiB.
const MAX_DATA_BYTES: usize = 1 << 20;
const MAX_ANNOTATION_BYTES: usize = 256 << 10;
const SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Go's `RegexError`, double space between examples included.
fn regex_error(msg: &str, format: &str, examples: &[&str]) -> String {
    let examples: String = examples
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}'{e}', ", if i > 0 { " or " } else { "" }))
        .collect();
    format!("{msg} (e.g. {examples}regex used for validation is '{format}')")
}

fn too_long(value: &str, max: usize) -> Vec<String> {
    if value.len() > max {
        vec![format!("must be no more than {max} characters")]
    } else {
        Vec::new()
    }
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    matches!((b.first(), b.last()), (Some(&f), Some(&l)) if is_lower_alnum(f) && is_lower_alnum(l))
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

fn matches_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns_label)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn matches_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    matches!((b.first(), b.last()), (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn dns1123_label(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 63);
    if !matches_dns_label(v) {
        // A valid subdomain that is no label can only be one with dots.
        msgs.push(if matches_subdomain(v) {
            "must not contain dots".to_string()
        } else {
            regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                "[a-z0-9]([-a-z0-9]*[a-z0-9])?",
                &["my-name", "123-abc"],
            )
        });
    }
    msgs
}

fn dns1123_subdomain(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 253);
    if !matches_subdomain(v) {
        msgs.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    msgs
}

/// Service names: a DNS label that starts with a letter.
fn dns1035_label(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 63);
    if !(matches_dns_label(v) && v.starts_with(|c: char| c.is_ascii_lowercase())) {
        msgs.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            "[a-z]([-a-z0-9]*[a-z0-9])?",
            &["my-name", "abc-123"],
        ));
    }
    msgs
}

fn wildcard_subdomain(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 253);
    if !v.strip_prefix("*.").is_some_and(matches_subdomain) {
        msgs.push(regex_error(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character",
            &format!(r"\*\.{SUBDOMAIN_FMT}"),
            &["*.example.com"],
        ));
    }
    msgs
}

/// Label keys, annotation keys, finalizers: `[prefix/]name`.
fn qualified_name(v: &str) -> Vec<String> {
    let mut msgs = Vec::new();
    let name_error = || {
        regex_error(
            LABEL_KEY_MSG,
            LABEL_KEY_FMT,
            &["MyName", "my.name", "123-abc"],
        )
    };
    let name = match v.split('/').collect::<Vec<_>>()[..] {
        [name] => name,
        [prefix, name] => {
            if prefix.is_empty() {
                msgs.push("prefix part must be non-empty".to_string());
            } else {
                msgs.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            return vec![format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                name_error()
            )];
        }
    };
    if name.is_empty() {
        msgs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        msgs.push("name part must be no more than 63 characters".to_string());
    }
    if !matches_label_name(name) {
        msgs.push(format!("name part {}", name_error()));
    }
    msgs
}

fn label_value(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 63);
    if !(v.is_empty() || matches_label_name(v)) {
        msgs.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            &format!("({LABEL_KEY_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    msgs
}

/// Keys of Secret and ConfigMap data: they become file names in volumes.
fn config_key(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 253);
    if v.is_empty()
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        msgs.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match v {
        "." => msgs.push("must not be '.'".to_string()),
        ".." => msgs.push("must not be '..'".to_string()),
        _ if v.starts_with("..") => msgs.push("must not start with '..'".to_string()),
        _ => {}
    }
    msgs
}

/// Named ports: an IANA_SVC_NAME.
fn port_name(v: &str) -> Vec<String> {
    let mut msgs = too_long(v, 15);
    let b = v.as_bytes();
    if b.is_empty() || !b.iter().all(|&c| is_lower_alnum(c) || c == b'-') {
        msgs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !b.iter().any(u8::is_ascii_lowercase) {
        msgs.push("must contain at least one letter (a-z)".to_string());
    }
    if v.contains("--") {
        msgs.push("must not contain consecutive hyphens".to_string());
    }
    if v.starts_with('-') || v.ends_with('-') {
        msgs.push("must not begin or end with a hyphen".to_string());
    }
    msgs
}

/// Kubernetes 1.34 accepts any printable ASCII name but `=`
/// (RelaxedEnvironmentVariableValidation, on by default).
fn env_var_name(v: &str) -> Vec<String> {
    if v.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=') {
        Vec::new()
    } else {
        vec!["a valid environment variable name must consist only of printable ASCII characters other than '='".to_string()]
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// One `Invalid value` error per broken rule, as Kubernetes reports them.
fn check(errs: &mut Errors, path: &str, value: &str, rule: Rule) {
    errs.extend(
        rule(value)
            .into_iter()
            .map(|msg| FieldError::invalid(path, quote(value), msg)),
    );
}

fn check_port(errs: &mut Errors, path: &str, port: i32) {
    if !(1..=65535).contains(&port) {
        errs.push(FieldError::invalid(path, port, PORT_RANGE));
    }
}

fn check_port_or_name(errs: &mut Errors, path: &str, port: &IntOrString) {
    match port {
        IntOrString::Int(p) => check_port(errs, path, *p),
        IntOrString::String(name) => check(errs, path, name, port_name),
    }
}

fn non_negative<T: Into<i64>>(errs: &mut Errors, path: &str, value: Option<T>) {
    if let Some(v) = value.map(Into::into).filter(|v| *v < 0) {
        errs.push(FieldError::invalid(path, v, NEGATIVE));
    }
}

fn supported(errs: &mut Errors, path: &str, value: &str, values: &[&str]) {
    if !values.contains(&value) {
        errs.push(FieldError::not_supported(path, value, values));
    }
}

fn required_because(path: impl Into<String>, detail: &str) -> FieldError {
    FieldError {
        detail: detail.to_string(),
        ..FieldError::required(path)
    }
}

/// A `Duplicate value` whose value is not a quoted string.
fn duplicate_of(path: impl Into<String>, rendered: String) -> FieldError {
    FieldError {
        field: path.into(),
        error: ErrorType::Duplicate(rendered),
        detail: String::new(),
    }
}

/// Kubernetes' `Too long`/`Too many`, which have no error type here: the size
/// is reported as the invalid value, with Kubernetes' wording.
fn over_limit(path: &str, size: usize, limit: usize, unit: &str) -> FieldError {
    FieldError::invalid(path, size, format!("must have at most {limit} {unit}"))
}

/// A string field that is set and not empty.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn or_default<'a>(value: &'a Option<String>, default: &'a str) -> &'a str {
    given(value).unwrap_or(default)
}

/// Parses an IP address; an IPv4-mapped IPv6 address counts as IPv4, as in Go.
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn parse_cidr(text: &str) -> Option<IpAddr> {
    let (ip, bits) = text.split_once('/')?;
    let max = if ip.contains(':') { 128 } else { 32 };
    let bits_ok = !bits.is_empty()
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u32>().is_ok_and(|b| b <= max);
    parse_ip(ip).filter(|_| bits_ok)
}

/// One address of each family, as a dual-stack pair must be.
fn dual_stack(ips: &[IpAddr]) -> bool {
    ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6)
}

/// Addresses an endpoint may not have: nothing useful listens there for a Service.
fn check_non_special_ip(errs: &mut Errors, path: &str, text: &str, ip: IpAddr) {
    let (unspecified, loopback, link_local, link_local_multicast) = match ip {
        IpAddr::V4(v4) => (
            v4.is_unspecified(),
            v4.is_loopback(),
            v4.is_link_local(),
            v4.octets()[..3] == [224, 0, 0],
        ),
        IpAddr::V6(v6) => (
            v6.is_unspecified(),
            v6.is_loopback(),
            v6.is_unicast_link_local(),
            v6.segments()[0] & 0xff0f == 0xff02,
        ),
    };
    let mut reject = |detail: String| errs.push(FieldError::invalid(path, quote(text), detail));
    if unspecified {
        reject(format!("may not be unspecified ({text})"));
    }
    if loopback {
        reject("may not be in the loopback range (127.0.0.0/8, ::1/128)".to_string());
    }
    if link_local {
        reject("may not be in the link-local range (169.254.0.0/16, fe80::/10)".to_string());
    }
    if link_local_multicast {
        reject(
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".to_string(),
        );
    }
}

/// Reads a resource quantity (`500m`, `1.5Gi`, `2e3`) as a number, or `None`
/// where Kubernetes would refuse to parse it.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return None;
    }
    // Parsing `<number>e<exponent>` in one go rounds once, so `1` and `1000m` compare equal.
    let decimal = |exponent: i32| format!("{number}e{exponent}").parse::<f64>().ok();
    let binary = |power: i32| number.parse::<f64>().ok().map(|n| n * 2f64.powi(power));
    let value = match suffix {
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "" => decimal(0),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            decimal(exponent.parse().ok()?)
        }
    }?;
    Some(if text.starts_with('-') { -value } else { value })
}

// ---------------------------------------------------------------------------
// Go renderings of bad values
// ---------------------------------------------------------------------------

/// Go's `%#v` of a `map[string]string`: keys sorted, values quoted.
fn go_map(map: Option<&Labels>) -> String {
    match map {
        None => "map[string]string(nil)".to_string(),
        Some(map) => {
            let entries: Vec<_> = map
                .iter()
                .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
                .collect();
            format!("map[string]string{{{}}}", entries.join(", "))
        }
    }
}

/// Go's `%#v` of a `[]string`.
fn go_strings<S: AsRef<str>>(list: &[S]) -> String {
    let items: Vec<_> = list.iter().map(|s| quote(s.as_ref())).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// The protobuf `String()` Kubernetes prints a `*LabelSelector` with.
fn go_selector(selector: &LabelSelector) -> String {
    let labels: String = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {v},"))
        .collect();
    let expressions: String = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let values = r.values.as_deref().unwrap_or_default().join(" ");
            format!(
                "LabelSelectorRequirement{{Key:{},Operator:{},Values:[{values}],}},",
                r.key, r.operator
            )
        })
        .collect();
    format!(
        "&LabelSelector{{MatchLabels:map[string]string{{{labels}}},MatchExpressions:[]LabelSelectorRequirement{{{expressions}}},}}"
    )
}

/// `IntOrString.String()`: the number, or the string unquoted.
fn go_int_or_string(value: &IntOrString) -> String {
    match value {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// Go's `%#v` of the `core.ServicePort` Kubernetes names a repeated port with.
fn go_service_port(protocol: &str, port: i32) -> String {
    format!(
        r#"core.ServicePort{{Name:"", Protocol:{}, AppProtocol:(*string)(nil), Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:""}}, NodePort:0}}"#,
        quote(protocol)
    )
}

// ---------------------------------------------------------------------------
// Metadata, labels, selectors
// ---------------------------------------------------------------------------

fn validate_meta(meta: &ObjectMeta, name_rule: Rule, namespaced: bool, errs: &mut Errors) {
    match (given(&meta.name), given(&meta.generate_name)) {
        // The store makes the name from the prefix on create.
        (None, Some(_)) => {}
        (None, None) => errs.push(required_because(
            "metadata.name",
            "name or generateName is required",
        )),
        (Some(name), _) => check(errs, "metadata.name", name, name_rule),
    }
    // A cluster-scoped object's namespace is dropped by the API server, not refused.
    if let Some(namespace) = given(&meta.namespace).filter(|_| namespaced) {
        check(errs, "metadata.namespace", namespace, dns1123_label);
    }
    non_negative(errs, "metadata.generation", meta.generation);
    validate_labels(meta.labels.as_ref(), "metadata.labels", errs);
    validate_annotations(meta.annotations.as_ref(), "metadata.annotations", errs);
    for finalizer in meta.finalizers.iter().flatten() {
        check(errs, "metadata.finalizers", finalizer, qualified_name);
    }
}

fn validate_labels(labels: Option<&Labels>, path: &str, errs: &mut Errors) {
    for (key, value) in labels.into_iter().flatten() {
        check(errs, path, key, qualified_name);
        check(errs, path, value, label_value);
    }
}

fn validate_annotations(annotations: Option<&Labels>, path: &str, errs: &mut Errors) {
    let annotations = annotations.into_iter().flatten();
    for (key, _) in annotations.clone() {
        // Annotation keys are qualified names in any case.
        for msg in qualified_name(&key.to_lowercase()) {
            errs.push(FieldError::invalid(path, quote(key), msg));
        }
    }
    let size: usize = annotations.map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ANNOTATION_BYTES {
        errs.push(over_limit(path, size, MAX_ANNOTATION_BYTES, "bytes"));
    }
}

fn validate_selector(selector: &LabelSelector, path: &str, errs: &mut Errors) {
    validate_labels(
        selector.match_labels.as_ref(),
        &format!("{path}.matchLabels"),
        errs,
    );
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errs.push(required_because(
                format!("{p}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                format!("{p}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            operator => errs.push(FieldError::invalid(
                format!("{p}.operator"),
                quote(operator),
                "not a valid selector operator",
            )),
        }
        check(errs, &format!("{p}.key"), &requirement.key, qualified_name);
        for (j, value) in values.iter().enumerate() {
            check(errs, &format!("{p}.values[{j}]"), value, label_value);
        }
    }
}

/// A selector with no requirement at all, which selects everything.
fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Whether `labels` satisfy every requirement of a (valid) selector.
fn selector_matches(selector: &LabelSelector, labels: Option<&Labels>) -> bool {
    let label = |key: &str| labels.and_then(|l| l.get(key));
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| label(k) == Some(v))
        && selector.match_expressions.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            match (r.operator.as_str(), label(&r.key)) {
                ("In", Some(v)) => values.contains(v),
                ("NotIn", v) => v.is_none_or(|v| !values.contains(v)),
                ("Exists", v) => v.is_some(),
                ("DoesNotExist", v) => v.is_none(),
                _ => false,
            }
        })
}

// ---------------------------------------------------------------------------
// Pod specs
// ---------------------------------------------------------------------------

fn validate_pod_template(template: &PodTemplateSpec, path: &str, errs: &mut Errors) {
    let meta = template.metadata.as_ref();
    // Kubernetes names these `template.labels`, without `metadata`.
    validate_labels(
        meta.and_then(|m| m.labels.as_ref()),
        &format!("{path}.labels"),
        errs,
    );
    validate_annotations(
        meta.and_then(|m| m.annotations.as_ref()),
        &format!("{path}.annotations"),
        errs,
    );
    let default = PodSpec::default();
    validate_pod_spec(
        template.spec.as_ref().unwrap_or(&default),
        &format!("{path}.spec"),
        false,
        errs,
    );
}

/// `in_pod` adds the checks Kubernetes makes of Pods but not of templates.
fn validate_pod_spec(spec: &PodSpec, path: &str, in_pod: bool, errs: &mut Errors) {
    non_negative(
        errs,
        &format!("{path}.terminationGracePeriodSeconds"),
        spec.termination_grace_period_seconds,
    );
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    validate_volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &format!("{path}.volumes"),
        errs,
    );

    let containers_path = format!("{path}.containers");
    if spec.containers.is_empty() {
        errs.push(FieldError::required(&containers_path));
    }
    let mut names = BTreeSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let p = format!("{containers_path}[{i}]");
        validate_container(container, &p, in_pod, errs);
        if !names.insert(container.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{p}.name"), &container.name));
        }
        validate_hooks_and_probes(container, &p, grace, errs);
        if container.restart_policy.is_some() {
            errs.push(FieldError::forbidden(
                format!("{p}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        let p = format!("{path}.initContainers[{i}]");
        validate_container(container, &p, in_pod, errs);
        // An init container that restarts always is a sidecar, with probes and hooks.
        let sidecar = container.restart_policy.as_deref().is_some_and(|policy| {
            supported(errs, &format!("{p}.restartPolicy"), policy, &["Always"]);
            policy == "Always"
        });
        if names.contains(container.name.as_str()) {
            errs.push(FieldError::duplicate(format!("{p}.name"), &container.name));
        } else if !container.name.is_empty() {
            names.insert(&container.name);
        }
        if sidecar {
            validate_hooks_and_probes(container, &p, grace, errs);
            continue;
        }
        let hooks_and_probes = [
            ("lifecycle", container.lifecycle.is_some()),
            ("livenessProbe", container.liveness_probe.is_some()),
            ("readinessProbe", container.readiness_probe.is_some()),
            ("startupProbe", container.startup_probe.is_some()),
        ];
        for (field, _) in hooks_and_probes.into_iter().filter(|(_, set)| *set) {
            errs.push(FieldError::forbidden(
                format!("{p}.{field}"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
    }

    let restart_policy = or_default(&spec.restart_policy, "Always");
    supported(
        errs,
        &format!("{path}.restartPolicy"),
        restart_policy,
        &["Always", "OnFailure", "Never"],
    );
    let dns_policies = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    supported(
        errs,
        &format!("{path}.dnsPolicy"),
        or_default(&spec.dns_policy, "ClusterFirst"),
        &dns_policies,
    );
    validate_labels(
        spec.node_selector.as_ref(),
        &format!("{path}.nodeSelector"),
        errs,
    );
    let named: [(&str, &Option<String>, Rule); 5] = [
        (
            "serviceAccountName",
            &spec.service_account_name,
            dns1123_subdomain,
        ),
        ("nodeName", &spec.node_name, dns1123_subdomain),
        ("hostname", &spec.hostname, dns1123_label),
        ("subdomain", &spec.subdomain, dns1123_label),
        (
            "priorityClassName",
            &spec.priority_class_name,
            dns1123_subdomain,
        ),
    ];
    for (field, value, rule) in named {
        if let Some(value) = given(value) {
            check(errs, &format!("{path}.{field}"), value, rule);
        }
    }
    if let Some(d) = spec
        .active_deadline_seconds
        .filter(|d| !(1..=i64::from(i32::MAX)).contains(d))
    {
        errs.push(FieldError::invalid(
            format!("{path}.activeDeadlineSeconds"),
            d,
            "must be between 1 and 2147483647, inclusive",
        ));
    }
}

fn validate_volumes(volumes: &[Volume], path: &str, errs: &mut Errors) {
    let mut names = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let p = format!("{path}[{i}].name");
        if volume.name.is_empty() {
            errs.push(FieldError::required(&p));
        } else {
            check(errs, &p, &volume.name, dns1123_label);
        }
        if !names.insert(volume.name.as_str()) {
            errs.push(FieldError::duplicate(p, &volume.name));
        }
    }
}

fn validate_container(container: &Container, path: &str, in_pod: bool, errs: &mut Errors) {
    let name_path = format!("{path}.name");
    if container.name.is_empty() {
        errs.push(FieldError::required(name_path));
    } else {
        check(errs, &name_path, &container.name, dns1123_label);
    }
    let image = container.image.as_deref().unwrap_or_default();
    if image.is_empty() {
        errs.push(FieldError::required(format!("{path}.image")));
    } else if in_pod && image.trim() != image {
        errs.push(FieldError::invalid(
            format!("{path}.image"),
            quote(image),
            "must not have leading or trailing whitespace",
        ));
    }
    if let Some(policy) = given(&container.termination_message_policy) {
        let policies = ["File", "FallbackToLogsOnError"];
        supported(
            errs,
            &format!("{path}.terminationMessagePolicy"),
            policy,
            &policies,
        );
    }
    validate_container_ports(
        container.ports.as_deref().unwrap_or_default(),
        &format!("{path}.ports"),
        errs,
    );
    validate_env(
        container.env.as_deref().unwrap_or_default(),
        &format!("{path}.env"),
        errs,
    );
    if let Some(policy) = given(&container.image_pull_policy) {
        let policies = ["Always", "IfNotPresent", "Never"];
        supported(errs, &format!("{path}.imagePullPolicy"), policy, &policies);
    }
    if let Some(resources) = &container.resources {
        validate_resources(resources, &format!("{path}.resources"), errs);
    }
}

fn validate_container_ports(ports: &[ContainerPort], path: &str, errs: &mut Errors) {
    let mut names = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(name) = given(&port.name) {
            if !port_name(name).is_empty() {
                check(errs, &format!("{p}.name"), name, port_name);
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{p}.name"), name));
            }
        }
        if port.container_port == 0 {
            errs.push(FieldError::required(format!("{p}.containerPort")));
        } else {
            check_port(errs, &format!("{p}.containerPort"), port.container_port);
        }
        if let Some(host_port) = port.host_port.filter(|&h| h != 0) {
            check_port(errs, &format!("{p}.hostPort"), host_port);
        }
        supported(
            errs,
            &format!("{p}.protocol"),
            or_default(&port.protocol, "TCP"),
            PROTOCOLS,
        );
    }
}

fn validate_env(env: &[EnvVar], path: &str, errs: &mut Errors) {
    for (i, var) in env.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if var.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        } else {
            check(errs, &format!("{p}.name"), &var.name, env_var_name);
        }
        let Some(from) = &var.value_from else {
            continue;
        };
        let from_path = format!("{p}.valueFrom");
        let sources = [
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
            from.file_key_ref.is_some(),
        ];
        let problem = match sources.into_iter().filter(|&set| set).count() {
            0 => {
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
            }
            _ if given(&var.value).is_some() => "may not be specified when `value` is not empty",
            1 => continue,
            _ => "may not have more than one field specified at a time",
        };
        errs.push(FieldError::invalid(from_path, quote(""), problem));
    }
}

/// Extended resources (`example.com/gpu`) and hugepages cannot be
/// overcommitted, so their request must equal their limit.
fn overcommit_allowed(resource: &str) -> bool {
    let native = !resource.contains('/') || resource.contains("kubernetes.io/");
    native && !resource.starts_with("hugepages-")
}

fn validate_resources(resources: &ResourceRequirements, path: &str, errs: &mut Errors) {
    let limits = quantities(resources.limits.as_ref(), &format!("{path}.limits"), errs);
    let requests_path = format!("{path}.requests");
    for (resource, (text, request)) in quantities(resources.requests.as_ref(), &requests_path, errs)
    {
        let Some((limit_text, limit)) = limits.get(resource) else {
            continue;
        };
        let detail = if !overcommit_allowed(resource) && request != *limit {
            format!("must be equal to {resource} limit of {limit_text}")
        } else if request > *limit {
            format!("must be less than or equal to {resource} limit of {limit_text}")
        } else {
            continue;
        };
        errs.push(FieldError::invalid(&requests_path, quote(text), detail));
    }
}

/// Reads a `limits` or `requests` map, reporting quantities that do not parse
/// or are negative; returns the ones that parse, with their text.
fn quantities<'a>(
    map: Option<&'a BTreeMap<String, Quantity>>,
    path: &str,
    errs: &mut Errors,
) -> BTreeMap<&'a str, (&'a str, f64)> {
    let mut parsed = BTreeMap::new();
    for (resource, Quantity(text)) in map.into_iter().flatten() {
        let p = format!("{path}[{resource}]");
        match parse_quantity(text) {
            None => errs.push(FieldError::invalid(p, quote(text), QUANTITY_FORMAT)),
            Some(value) => {
                if value < 0.0 {
                    errs.push(FieldError::invalid(p, quote(text), NEGATIVE));
                }
                parsed.insert(resource.as_str(), (text.as_str(), value));
            }
        }
    }
    parsed
}

/// What a probe or lifecycle hook does; exactly one action is allowed.
struct Handler<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
    grpc: Option<&'a GRPCAction>,
    sleep: Option<&'a SleepAction>,
}

fn validate_hooks_and_probes(container: &Container, path: &str, grace: i64, errs: &mut Errors) {
    let lifecycle = container.lifecycle.as_ref();
    for (hook, handler) in [
        ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
        ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
    ] {
        let Some(h) = handler else { continue };
        let handler = Handler {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
            grpc: None,
            sleep: h.sleep.as_ref(),
        };
        validate_handler(handler, &format!("{path}.lifecycle.{hook}"), grace, errs);
    }
    let probes = [
        ("livenessProbe", &container.liveness_probe, false),
        ("readinessProbe", &container.readiness_probe, true),
        ("startupProbe", &container.startup_probe, false),
    ];
    for (field, probe, readiness) in probes {
        if let Some(probe) = probe {
            validate_probe(probe, &format!("{path}.{field}"), readiness, grace, errs);
        }
    }
}

fn validate_handler(handler: Handler<'_>, path: &str, grace: i64, errs: &mut Errors) {
    let mut count = 0;
    // Kubernetes checks the first action it finds and forbids each further one.
    let mut first = |name: &str, errs: &mut Errors| {
        count += 1;
        if count > 1 {
            errs.push(FieldError::forbidden(
                format!("{path}.{name}"),
                "may not specify more than 1 handler type",
            ));
        }
        count == 1
    };
    if let Some(exec) = handler.exec {
        if first("exec", errs) && exec.command.as_deref().unwrap_or_default().is_empty() {
            errs.push(FieldError::required(format!("{path}.exec.command")));
        }
    }
    if let Some(http) = handler.http_get {
        if first("httpGet", errs) {
            validate_http_get(http, &format!("{path}.httpGet"), errs);
        }
    }
    if let Some(tcp) = handler.tcp_socket {
        if first("tcpSocket", errs) {
            check_port_or_name(errs, &format!("{path}.tcpSocket.port"), &tcp.port);
        }
    }
    if let Some(grpc) = handler.grpc {
        if first("grpc", errs) {
            check_port(errs, &format!("{path}.grpc.port"), grpc.port);
        }
    }
    if let Some(sleep) = handler.sleep {
        if first("sleep", errs) && !(0..=grace).contains(&sleep.seconds) {
            errs.push(FieldError::invalid(
                format!("{path}.sleep"),
                sleep.seconds,
                format!(
                    "must be non-negative and less than terminationGracePeriodSeconds ({grace})"
                ),
            ));
        }
    }
    if count == 0 {
        errs.push(required_because(path, "must specify a handler type"));
    }
}

fn validate_http_get(http: &HTTPGetAction, path: &str, errs: &mut Errors) {
    check_port_or_name(errs, &format!("{path}.port"), &http.port);
    supported(
        errs,
        &format!("{path}.scheme"),
        or_default(&http.scheme, "HTTP"),
        &["HTTP", "HTTPS"],
    );
    for header in http.http_headers.iter().flatten() {
        let name = &header.name;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            let detail = regex_error(
                "a valid HTTP header must consist of alphanumeric characters or '-'",
                "[-A-Za-z0-9]+",
                &["X-Header-Name"],
            );
            errs.push(FieldError::invalid(
                format!("{path}.httpHeaders"),
                quote(name),
                detail,
            ));
        }
    }
}

/// Readiness probes may not set a grace period; the others must succeed once.
fn validate_probe(probe: &Probe, path: &str, readiness: bool, grace: i64, errs: &mut Errors) {
    let handler = Handler {
        exec: probe.exec.as_ref(),
        http_get: probe.http_get.as_ref(),
        tcp_socket: probe.tcp_socket.as_ref(),
        grpc: probe.grpc.as_ref(),
        sleep: None,
    };
    validate_handler(handler, path, grace, errs);
    let counts = [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ];
    for (field, value) in counts {
        non_negative(errs, &format!("{path}.{field}"), value);
    }
    let grace_path = format!("{path}.terminationGracePeriodSeconds");
    if let Some(t) = probe.termination_grace_period_seconds.filter(|&t| t <= 0) {
        errs.push(FieldError::invalid(
            &grace_path,
            t,
            "must be greater than 0",
        ));
    }
    if readiness {
        if let Some(t) = probe.termination_grace_period_seconds {
            errs.push(FieldError::invalid(
                grace_path,
                t,
                "must not be set for readinessProbes",
            ));
        }
    } else if let Some(s) = probe.success_threshold.filter(|&s| s != 0 && s != 1) {
        // Zero is the unset value, defaulted to 1.
        errs.push(FieldError::invalid(
            format!("{path}.successThreshold"),
            s,
            "must be 1",
        ));
    }
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// The selector and template rules Deployments and ReplicaSets share.
fn validate_workload(selector: &LabelSelector, template: &PodTemplateSpec, errs: &mut Errors) {
    // k8s-openapi reads a missing selector as an empty one; both parts unset
    // means it was not given.
    let specified = selector.match_labels.is_some() || selector.match_expressions.is_some();
    if !specified {
        errs.push(FieldError::required("spec.selector"));
    } else {
        let before = errs.len();
        validate_selector(selector, "spec.selector", errs);
        let selector_valid = errs.len() == before;
        if selector_is_empty(selector) {
            // Kubernetes says "deployment" for ReplicaSets too.
            errs.push(FieldError::invalid(
                "spec.selector",
                go_selector(selector),
                "empty selector is invalid for deployment",
            ));
        }
        if !selector_valid {
            // Without a usable selector Kubernetes checks the template no further.
            errs.push(FieldError::invalid(
                "spec.selector",
                go_selector(selector),
                "invalid label selector",
            ));
            return;
        }
    }
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    // A missing selector matches nothing, an empty one everything.
    let matches = specified && (selector_is_empty(selector) || selector_matches(selector, labels));
    if !matches {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    validate_pod_template(template, "spec.template", errs);
    let spec = template.spec.as_ref();
    let restart_policy = spec.map_or("Always", |s| or_default(&s.restart_policy, "Always"));
    supported(
        errs,
        "spec.template.spec.restartPolicy",
        restart_policy,
        &["Always"],
    );
    if spec.is_some_and(|s| s.active_deadline_seconds.is_some()) {
        errs.push(FieldError::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
}

fn validate_rolling_update(
    max_unavailable: &IntOrString,
    max_surge: &IntOrString,
    errs: &mut Errors,
) {
    let unavailable_path = "spec.strategy.rollingUpdate.maxUnavailable";
    for (path, value) in [
        (unavailable_path, max_unavailable),
        ("spec.strategy.rollingUpdate.maxSurge", max_surge),
    ] {
        match value {
            IntOrString::Int(i) => non_negative(errs, path, Some(*i)),
            IntOrString::String(s) if percent(s).is_none() => errs.push(FieldError::invalid(
                path,
                s,
                regex_error(
                    "a valid percent string must be a numeric string followed by an ending '%'",
                    "[0-9]+%",
                    &["1%", "93%"],
                ),
            )),
            IntOrString::String(_) => {}
        }
    }
    if int_or_percent(max_unavailable) == 0 && int_or_percent(max_surge) == 0 {
        errs.push(FieldError::invalid(
            unavailable_path,
            go_int_or_string(max_unavailable),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if let IntOrString::String(s) = max_unavailable {
        if percent(s).is_some_and(|p| p > 100) {
            errs.push(FieldError::invalid(
                unavailable_path,
                s,
                "must not be greater than 100%",
            ));
        }
    }
}

/// The number of a `[0-9]+%` string.
fn percent(value: &str) -> Option<i64> {
    let digits = value.strip_suffix('%')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().unwrap_or(0))
}

/// The number an int-or-percent stands for, the way Kubernetes compares it
/// with zero.
fn int_or_percent(value: &IntOrString) -> i64 {
    match value {
        IntOrString::Int(i) => i64::from(*i),
        IntOrString::String(s) => percent(s).or_else(|| s.parse().ok()).unwrap_or(0),
    }
}

impl Validate for Deployment {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let default = DeploymentSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&default);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        validate_workload(&spec.selector, &spec.template, &mut errs);

        let strategy = spec.strategy.clone().unwrap_or_default();
        match or_default(&strategy.type_, "RollingUpdate") {
            "Recreate" if strategy.rolling_update.is_some() => errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            )),
            "Recreate" => {}
            "RollingUpdate" => {
                // Both default to 25%.
                let rolling = strategy.rolling_update.unwrap_or_default();
                let quarter = || IntOrString::String("25%".to_string());
                let max_unavailable = rolling.max_unavailable.unwrap_or_else(quarter);
                let max_surge = rolling.max_surge.unwrap_or_else(quarter);
                validate_rolling_update(&max_unavailable, &max_surge, &mut errs);
            }
            other => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                other,
                &["Recreate", "RollingUpdate"],
            )),
        }
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        non_negative(
            &mut errs,
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
        );
        // Defaulted to 600 seconds.
        let deadline = spec.progress_deadline_seconds.unwrap_or(600);
        non_negative(&mut errs, "spec.progressDeadlineSeconds", Some(deadline));
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                deadline,
                "must be greater than minReadySeconds",
            ));
        }
        errs
    }
}

impl Validate for ReplicaSet {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let default = ReplicaSetSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&default);
        non_negative(&mut errs, "spec.replicas", spec.replicas);
        non_negative(&mut errs, "spec.minReadySeconds", spec.min_ready_seconds);
        let no_template = PodTemplateSpec::default();
        let template = spec.template.as_ref().unwrap_or(&no_template);
        validate_workload(&spec.selector, template, &mut errs);
        errs
    }
}

impl Validate for Pod {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let default = PodSpec::default();
        validate_pod_spec(
            self.spec.as_ref().unwrap_or(&default),
            "spec",
            true,
            &mut errs,
        );
        errs
    }
}

// ---------------------------------------------------------------------------
// Services and endpoints
// ---------------------------------------------------------------------------

impl Validate for Service {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1035_label, true, &mut errs);
        let default = ServiceSpec::default();
        validate_service_spec(self.spec.as_ref().unwrap_or(&default), &mut errs);
        errs
    }
}

fn validate_service_spec(spec: &ServiceSpec, errs: &mut Errors) {
    let type_ = or_default(&spec.type_, "ClusterIP");
    let ports = spec.ports.as_deref().unwrap_or_default();
    // The API server copies `clusterIP` into `clusterIPs` before validating.
    let listed = spec.cluster_ips.as_deref().unwrap_or_default();
    let cluster_ips: Vec<&str> = match given(&spec.cluster_ip) {
        Some(ip) if listed.is_empty() => vec![ip],
        _ => listed.iter().map(String::as_str).collect(),
    };
    let headless = cluster_ips == ["None"];

    if ports.is_empty() && !headless && type_ != "ExternalName" {
        errs.push(FieldError::required("spec.ports"));
    }
    if headless && matches!(type_, "LoadBalancer" | "NodePort") {
        let detail = format!("may not be set to 'None' for {type_} services");
        errs.push(FieldError::invalid(
            "spec.clusterIPs[0]",
            quote("None"),
            detail,
        ));
    }
    if type_ == "ExternalName" {
        validate_external_name(spec, &cluster_ips, errs);
    } else {
        validate_cluster_ips(&cluster_ips, errs);
    }
    validate_service_ports(ports, type_, errs);
    validate_labels(spec.selector.as_ref(), "spec.selector", errs);

    let affinity = or_default(&spec.session_affinity, "None");
    supported(
        errs,
        "spec.sessionAffinity",
        affinity,
        &["ClientIP", "None"],
    );
    let config = spec.session_affinity_config.as_ref();
    // Unset, the ClientIP timeout defaults to three hours.
    let timeout = config
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match affinity {
        "ClientIP" => {
            if let Some(t) = timeout.filter(|t| !(1..=86400).contains(t)) {
                let path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
                errs.push(FieldError::invalid(
                    path,
                    t,
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        "None" if config.is_some() => {
            let detail = "must not be set when session affinity is None";
            errs.push(FieldError::forbidden("spec.sessionAffinityConfig", detail));
        }
        _ => {}
    }
    supported(
        errs,
        "spec.type",
        type_,
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
    );
    for (field, policy) in [
        ("externalTrafficPolicy", &spec.external_traffic_policy),
        ("internalTrafficPolicy", &spec.internal_traffic_policy),
    ] {
        if let Some(policy) = given(policy) {
            supported(
                errs,
                &format!("spec.{field}"),
                policy,
                &["Cluster", "Local"],
            );
        }
    }
}

fn validate_external_name(spec: &ServiceSpec, cluster_ips: &[&str], errs: &mut Errors) {
    if !cluster_ips.is_empty() {
        errs.push(FieldError::forbidden(
            "spec.clusterIPs",
            "may not be set for ExternalName services",
        ));
    }
    // A trailing dot marks the name as fully qualified.
    let name = spec.external_name.as_deref().unwrap_or_default();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        errs.push(FieldError::required("spec.externalName"));
    } else {
        check(errs, "spec.externalName", name, dns1123_subdomain);
    }
}

fn validate_cluster_ips(cluster_ips: &[&str], errs: &mut Errors) {
    let all = || go_strings(cluster_ips);
    let mut parsed = Vec::new();
    for (i, ip) in cluster_ips.iter().enumerate() {
        match (i, *ip) {
            (0, "None") if cluster_ips.len() > 1 => {
                let detail = "'None' must be the first and only value";
                errs.push(FieldError::invalid("spec.clusterIPs", all(), detail));
            }
            (0, "None") => {}
            _ => match parse_ip(ip) {
                Some(addr) => parsed.push(addr),
                None => errs.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    quote(ip),
                    INVALID_IP,
                )),
            },
        }
    }
    if cluster_ips.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.clusterIPs",
            all(),
            "may only hold up to 2 values",
        ));
    }
    // Past a bad address, a complaint about families would only confuse.
    if parsed.len() == 2 && !dual_stack(&parsed) {
        let detail = "may specify no more than one IP for each IP family";
        errs.push(FieldError::invalid("spec.clusterIPs", all(), detail));
    }
}

fn validate_service_ports(ports: &[ServicePort], type_: &str, errs: &mut Errors) {
    let mut names = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = format!("spec.ports[{i}]");
        match given(&port.name) {
            None if ports.len() > 1 => errs.push(FieldError::required(format!("{p}.name"))),
            None => {}
            Some(name) => {
                check(errs, &format!("{p}.name"), name, dns1123_label);
                if !names.insert(name) {
                    errs.push(FieldError::duplicate(format!("{p}.name"), name));
                }
            }
        }
        check_port(errs, &format!("{p}.port"), port.port);
        let protocol = or_default(&port.protocol, "TCP");
        supported(errs, &format!("{p}.protocol"), protocol, PROTOCOLS);
        match &port.target_port {
            // Unset, the target port is `port`.
            None | Some(IntOrString::Int(0)) => {}
            Some(IntOrString::String(name)) if name.is_empty() => {}
            Some(target) => check_port_or_name(errs, &format!("{p}.targetPort"), target),
        }
        if let Some(app_protocol) = &port.app_protocol {
            check(
                errs,
                &format!("{p}.appProtocol"),
                app_protocol,
                qualified_name,
            );
        }
        // The node port's range is the allocator's business, not validation's.
        if let Some(node_port) = port.node_port.filter(|&n| n != 0) {
            if type_ == "ClusterIP" {
                let detail = "may not be used when `type` is 'ClusterIP'";
                errs.push(FieldError::forbidden(format!("{p}.nodePort"), detail));
            }
            if !node_ports.insert((protocol, node_port)) {
                errs.push(duplicate_of(format!("{p}.nodePort"), node_port.to_string()));
            }
        }
        if !seen.insert((protocol, port.port)) {
            errs.push(duplicate_of(p, go_service_port(protocol, port.port)));
        }
    }
}

impl Validate for EndpointSlice {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let address_type = self.address_type.as_str();
        if address_type.is_empty() {
            errs.push(FieldError::required("addressType"));
        } else {
            supported(
                &mut errs,
                "addressType",
                address_type,
                &["FQDN", "IPv4", "IPv6"],
            );
        }
        if self.endpoints.len() > 1000 {
            errs.push(over_limit("endpoints", self.endpoints.len(), 1000, "items"));
        } else {
            for (i, endpoint) in self.endpoints.iter().enumerate() {
                let p = format!("endpoints[{i}]");
                validate_addresses(
                    &endpoint.addresses,
                    address_type,
                    &format!("{p}.addresses"),
                    &mut errs,
                );
                if let Some(node) = &endpoint.node_name {
                    check(&mut errs, &format!("{p}.nodeName"), node, dns1123_subdomain);
                }
                if let Some(hostname) = &endpoint.hostname {
                    check(&mut errs, &format!("{p}.hostname"), hostname, dns1123_label);
                }
            }
        }
        let ports = self.ports.as_deref().unwrap_or_default();
        if ports.len() > 20000 {
            errs.push(over_limit("ports", ports.len(), 20000, "items"));
            return errs;
        }
        let mut names = BTreeSet::new();
        for (i, port) in ports.iter().enumerate() {
            let p = format!("ports[{i}]");
            let name = port.name.as_deref().unwrap_or_default();
            if !name.is_empty() {
                check(&mut errs, &format!("{p}.name"), name, dns1123_label);
            }
            // Unnamed ports collide too: a slice may have one.
            if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{p}.name"), name));
            }
            supported(
                &mut errs,
                &format!("{p}.protocol"),
                or_default(&port.protocol, "TCP"),
                PROTOCOLS,
            );
            if let Some(number) = port.port {
                check_port(&mut errs, &format!("{p}.port"), number);
            }
            if let Some(app_protocol) = &port.app_protocol {
                check(
                    &mut errs,
                    &format!("{p}.appProtocol"),
                    app_protocol,
                    qualified_name,
                );
            }
        }
        errs
    }
}

fn validate_addresses(addresses: &[String], address_type: &str, path: &str, errs: &mut Errors) {
    if addresses.is_empty() {
        errs.push(required_because(path, "must contain at least 1 address"));
    } else if addresses.len() > 100 {
        errs.push(over_limit(path, addresses.len(), 100, "items"));
    }
    for (i, address) in addresses.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let ip = parse_ip(address);
        match address_type {
            "IPv4" | "IPv6" => match ip.filter(|ip| ip.is_ipv4() == (address_type == "IPv4")) {
                Some(ip) => check_non_special_ip(errs, &p, address, ip),
                None => errs.push(FieldError::invalid(
                    p,
                    quote(address),
                    format!("must be a valid {address_type} address"),
                )),
            },
            "FQDN" => check_fqdn(errs, &p, address),
            _ => {}
        }
    }
}

fn check_fqdn(errs: &mut Errors, path: &str, name: &str) {
    if name.is_empty() {
        return errs.push(FieldError::required(path));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let msgs = dns1123_subdomain(name);
    if !msgs.is_empty() {
        return errs.push(FieldError::invalid(path, quote(name), msgs.join(",")));
    }
    if !name.contains('.') {
        let detail = "should be a domain with at least two segments separated by dots";
        return errs.push(FieldError::invalid(path, quote(name), detail));
    }
    if let Some((label, msgs)) = name
        .split('.')
        .map(|l| (l, dns1123_label(l)))
        .find(|(_, m)| !m.is_empty())
    {
        errs.push(FieldError::invalid(path, quote(label), msgs.join(",")));
    }
}

impl Validate for Ingress {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let default = IngressSpec::default();
        validate_ingress_spec(self.spec.as_ref().unwrap_or(&default), &mut errs);
        errs
    }
}

fn validate_ingress_spec(spec: &IngressSpec, errs: &mut Errors) {
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        let value = if spec.rules.is_some() {
            "[]networking.IngressRule{}"
        } else {
            "[]networking.IngressRule(nil)"
        };
        errs.push(FieldError::invalid(
            "spec",
            value,
            "either `defaultBackend` or `rules` must be specified",
        ));
    }
    if let Some(backend) = &spec.default_backend {
        validate_backend(backend, "spec.defaultBackend", errs);
    }
    for (i, rule) in rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        if let Some(host) = given(&rule.host) {
            if parse_ip(host).is_some() {
                errs.push(FieldError::invalid(
                    format!("{p}.host"),
                    quote(host),
                    "must be a DNS name, not an IP address",
                ));
            }
            let rule: Rule = if host.contains('*') {
                wildcard_subdomain
            } else {
                dns1123_subdomain
            };
            check(errs, &format!("{p}.host"), host, rule);
        }
        let Some(http) = &rule.http else { continue };
        if http.paths.is_empty() {
            errs.push(FieldError::required(format!("{p}.http.paths")));
        }
        for (j, path) in http.paths.iter().enumerate() {
            validate_ingress_path(path, &format!("{p}.http.paths[{j}]"), errs);
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        for (j, host) in tls.hosts.iter().flatten().enumerate() {
            let rule: Rule = if host.contains('*') {
                wildcard_subdomain
            } else {
                dns1123_subdomain
            };
            check(errs, &format!("spec.tls[{i}].hosts[{j}]"), host, rule);
        }
        if let Some(secret) = given(&tls.secret_name) {
            check(
                errs,
                &format!("spec.tls[{i}].secretName"),
                secret,
                dns1123_subdomain,
            );
        }
    }
    if let Some(class) = &spec.ingress_class_name {
        check(errs, "spec.ingressClassName", class, dns1123_subdomain);
    }
}

fn validate_ingress_path(rule: &HTTPIngressPath, path: &str, errs: &mut Errors) {
    let value = rule.path.as_deref().unwrap_or_default();
    let not_absolute = || {
        FieldError::invalid(
            format!("{path}.path"),
            quote(value),
            "must be an absolute path",
        )
    };
    match rule.path_type.as_str() {
        // Kubernetes looks no further, not even at the backend.
        "" => {
            return errs.push(required_because(
                format!("{path}.pathType"),
                "pathType must be specified",
            ));
        }
        "Exact" | "Prefix" => {
            if !value.starts_with('/') {
                errs.push(not_absolute());
            }
            for sequence in ["//", "/./", "/../", "%2f", "%2F"]
                .into_iter()
                .filter(|s| value.contains(s))
            {
                let detail = format!("must not contain '{sequence}'");
                errs.push(FieldError::invalid(
                    format!("{path}.path"),
                    quote(value),
                    detail,
                ));
            }
            for suffix in ["/..", "/."].into_iter().filter(|s| value.ends_with(s)) {
                let detail = format!("cannot end with '{suffix}'");
                errs.push(FieldError::invalid(
                    format!("{path}.path"),
                    quote(value),
                    detail,
                ));
            }
        }
        "ImplementationSpecific" => {
            if !value.is_empty() && !value.starts_with('/') {
                errs.push(not_absolute());
            }
        }
        other => {
            let types = ["Exact", "ImplementationSpecific", "Prefix"];
            errs.push(FieldError::not_supported(
                format!("{path}.pathType"),
                other,
                &types,
            ));
        }
    }
    validate_backend(&rule.backend, &format!("{path}.backend"), errs);
}

fn validate_backend(backend: &IngressBackend, path: &str, errs: &mut Errors) {
    match (&backend.resource, &backend.service) {
        (Some(_), Some(_)) => {
            errs.push(FieldError::invalid(
                path,
                quote(""),
                "cannot set both resource and service backends",
            ));
        }
        (Some(resource), None) => {
            if let Some(group) = &resource.api_group {
                check(
                    errs,
                    &format!("{path}.resource.apiGroup"),
                    group,
                    dns1123_subdomain,
                );
            }
            if resource.kind.is_empty() {
                errs.push(required_because(
                    format!("{path}.resource.kind"),
                    "kind is required",
                ));
            }
            if resource.name.is_empty() {
                errs.push(required_because(
                    format!("{path}.resource.name"),
                    "name is required",
                ));
            }
        }
        (None, Some(service)) => {
            let name_path = format!("{path}.service.name");
            if service.name.is_empty() {
                errs.push(FieldError::required(name_path));
            } else {
                check(errs, &name_path, &service.name, dns1035_label);
            }
            let port = service.port.as_ref();
            let name = port.and_then(|p| given(&p.name));
            let number = port.and_then(|p| p.number).filter(|&n| n != 0);
            match (name, number) {
                (Some(_), Some(_)) => {
                    errs.push(FieldError::invalid(
                        path,
                        quote(""),
                        "cannot set both port name & port number",
                    ));
                }
                (Some(name), None) => {
                    check(errs, &format!("{path}.service.port.name"), name, port_name)
                }
                (None, Some(number)) => {
                    check_port(errs, &format!("{path}.service.port.number"), number)
                }
                (None, None) => {
                    errs.push(required_because(path, "port name or number is required"))
                }
            }
        }
        (None, None) => errs.push(FieldError::invalid(
            path,
            quote(""),
            "resource or service backend is required",
        )),
    }
}

// ---------------------------------------------------------------------------
// Cluster objects and stored data
// ---------------------------------------------------------------------------

impl Validate for Node {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, false, &mut errs);
        let Some(spec) = &self.spec else { return errs };
        if let Some(cidr) = given(&spec.pod_cidr).filter(|c| parse_cidr(c).is_none()) {
            errs.push(FieldError::invalid(
                "spec.podCIDR",
                quote(cidr),
                INVALID_CIDR,
            ));
        }
        let cidrs = spec.pod_cidrs.as_deref().unwrap_or_default();
        let mut parsed = Vec::new();
        for (i, cidr) in cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(ip) => parsed.push(ip),
                None => errs.push(FieldError::invalid(
                    format!("spec.podCIDRs[{i}]"),
                    quote(cidr),
                    INVALID_CIDR,
                )),
            }
        }
        if cidrs.len() > 1 && (cidrs.len() > 2 || (parsed.len() == 2 && !dual_stack(&parsed))) {
            errs.push(FieldError::invalid(
                "spec.podCIDRs",
                go_strings(cidrs),
                "may specify no more than one CIDR for each IP family",
            ));
        }
        errs
    }
}

impl Validate for Namespace {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_label, false, &mut errs);
        errs
    }
}

impl Validate for Secret {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        // The API server folds `stringData` into `data` before validating.
        let mut data: BTreeMap<&str, &[u8]> = self
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.0.as_slice()))
            .collect();
        data.extend(
            self.string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_bytes())),
        );
        for key in data.keys() {
            check(&mut errs, &format!("data[{key}]"), key, config_key);
        }
        let size: usize = data.values().map(|v| v.len()).sum();
        if size > MAX_DATA_BYTES {
            errs.push(over_limit("data", size, MAX_DATA_BYTES, "bytes"));
        }
        if self.type_.as_deref() == Some("kubernetes.io/tls") {
            for key in ["tls.crt", "tls.key"]
                .into_iter()
                .filter(|k| !data.contains_key(k))
            {
                errs.push(FieldError::required(format!("data[{key}]")));
            }
        }
        errs
    }
}

impl Validate for ConfigMap {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let data = self.data.as_ref();
        let binary = self.binary_data.as_ref();
        for key in data.into_iter().flat_map(BTreeMap::keys) {
            check(&mut errs, &format!("data[{key}]"), key, config_key);
            if binary.is_some_and(|b| b.contains_key(key)) {
                let detail = "duplicate of key present in binaryData";
                errs.push(FieldError::invalid(
                    format!("data[{key}]"),
                    quote(key),
                    detail,
                ));
            }
        }
        for key in binary.into_iter().flat_map(BTreeMap::keys) {
            check(&mut errs, &format!("binaryData[{key}]"), key, config_key);
            if data.is_some_and(|d| d.contains_key(key)) {
                let detail = "duplicate of key present in data";
                errs.push(FieldError::invalid(
                    format!("binaryData[{key}]"),
                    quote(key),
                    detail,
                ));
            }
        }
        let size = data
            .into_iter()
            .flatten()
            .map(|(_, v)| v.len())
            .sum::<usize>()
            + binary
                .into_iter()
                .flatten()
                .map(|(_, v)| v.0.len())
                .sum::<usize>();
        // Kubernetes names the whole object here; `data` says where to look.
        if size > MAX_DATA_BYTES {
            errs.push(over_limit("data", size, MAX_DATA_BYTES, "bytes"));
        }
        errs
    }
}

impl Validate for Lease {
    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        validate_meta(&self.metadata, dns1123_subdomain, true, &mut errs);
        let Some(spec) = &self.spec else { return errs };
        if let Some(d) = spec.lease_duration_seconds.filter(|&d| d <= 0) {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                d,
                "must be greater than 0",
            ));
        }
        non_negative(&mut errs, "spec.leaseTransitions", spec.lease_transitions);
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::Resource;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    const SEED: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx-deployment
  labels:
    app: nginx
spec:
  replicas: 3
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
        - name: nginx
          image: nginx:1.7.9
          ports:
            - containerPort: 80
"#;

    const SUBDOMAIN_MSG: &str = r"a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

    fn seed() -> Value {
        crate::yaml::from_str("seed.yaml", SEED).expect("the seed manifest is YAML")
    }

    /// `value` with the JSON pointer `pointer` set to `new` (its parent must exist).
    fn set(mut value: Value, pointer: &str, new: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        match value.pointer_mut(parent).expect("the parent exists") {
            Value::Array(items) => items[key.parse::<usize>().expect("an index")] = new,
            parent => {
                parent
                    .as_object_mut()
                    .expect("an object")
                    .insert(key.to_string(), new);
            }
        }
        value
    }

    /// The rendered errors of `value` read as `K`, without the decoding checks.
    fn errors<K: Resource + DeserializeOwned + Validate>(mut value: Value) -> Vec<String> {
        value["apiVersion"] = json!(K::API_VERSION);
        value["kind"] = json!(K::KIND);
        let object: K = serde_json::from_value(value).expect("the object decodes");
        object.validate().iter().map(ToString::to_string).collect()
    }

    #[track_caller]
    fn assert_has(errors: &[String], wanted: &str) {
        assert!(
            errors.iter().any(|e| e == wanted),
            "missing {wanted:?} in {errors:#?}"
        );
    }

    fn pod(spec: Value) -> Vec<String> {
        errors::<Pod>(json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}))
    }

    fn service(spec: Value) -> Vec<String> {
        errors::<Service>(json!({"metadata": {"name": "web"}, "spec": spec}))
    }

    #[test]
    fn seed_manifest_decodes_and_validates() {
        let deployment = crate::api::decode::<Deployment>(&seed()).expect("the seed is valid");
        assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(3));
    }

    #[test]
    fn negative_replicas_are_named() {
        let err = crate::api::decode::<Deployment>(&set(seed(), "/spec/replicas", json!(-1)))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"The Deployment "nginx-deployment" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"#
        );
    }

    #[test]
    fn selector_must_match_template_labels() {
        let value = set(
            seed(),
            "/spec/template/metadata/labels",
            json!({"app": "x"}),
        );
        let err = crate::api::decode::<Deployment>(&value).unwrap_err();
        assert_eq!(
            err.errors[0].to_string(),
            r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"x"}: `selector` does not match template `labels`"#
        );
        assert_eq!(err.errors.len(), 1);
    }

    #[test]
    fn container_image_is_required() {
        let value = set(
            seed(),
            "/spec/template/spec/containers/0/image",
            Value::Null,
        );
        let err = crate::api::decode::<Deployment>(&value).unwrap_err();
        let messages: Vec<_> = err.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["spec.template.spec.containers[0].image: Required value"]
        );
    }

    #[test]
    fn names_must_be_dns_subdomains() {
        let err = crate::api::decode::<Deployment>(&set(seed(), "/metadata/name", json!("Foo_")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                r#"The Deployment "Foo_" is invalid: metadata.name: Invalid value: "Foo_": {SUBDOMAIN_MSG}"#
            )
        );
        let long = "a".repeat(254);
        let errs = errors::<Deployment>(set(seed(), "/metadata/name", json!(long)));
        assert_eq!(
            errs,
            [format!(
                "metadata.name: Invalid value: {long:?}: must be no more than 253 characters"
            )]
        );
        let errs = errors::<Deployment>(set(seed(), "/metadata/name", Value::Null));
        assert_eq!(
            errs,
            ["metadata.name: Required value: name or generateName is required"]
        );
    }

    #[test]
    fn every_error_is_collected() {
        let value = set(seed(), "/metadata/name", json!("Foo_"));
        let value = set(value, "/spec/replicas", json!(-1));
        let value = set(value, "/spec/template/spec/containers/0/image", Value::Null);
        let value = set(
            value,
            "/spec/template/spec/containers/0/ports/0/containerPort",
            json!(70000),
        );
        let err = crate::api::decode::<Deployment>(&value).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.replicas",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[0].ports[0].containerPort",
            ]
        );
        let text = err.to_string();
        assert!(
            text.starts_with(r#"The Deployment "Foo_" is invalid: "#),
            "{text}"
        );
        assert!(
            text.contains(
                "\n* spec.replicas: Invalid value: -1: must be greater than or equal to 0"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\n* spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ),
            "{text}"
        );
    }

    #[test]
    fn missing_selector_is_required_and_matches_nothing() {
        let value = seed();
        let mut value = value;
        value["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(
            errors::<Deployment>(value),
            [
                "spec.selector: Required value",
                r#"spec.template.metadata.labels: Invalid value: map[string]string{"app":"nginx"}: `selector` does not match template `labels`"#,
            ]
        );
    }

    #[test]
    fn empty_and_broken_selectors() {
        let empty = set(seed(), "/spec/selector", json!({"matchLabels": {}}));
        assert_eq!(
            errors::<Deployment>(empty),
            [
                "spec.selector: Invalid value: &LabelSelector{MatchLabels:map[string]string{},MatchExpressions:[]LabelSelectorRequirement{},}: empty selector is invalid for deployment"
            ]
        );
        let broken = set(
            seed(),
            "/spec/selector",
            json!({"matchExpressions": [
                {"key": "app", "operator": "Like", "values": ["x"]},
                {"key": "tier", "operator": "In"},
                {"key": "env", "operator": "Exists", "values": ["prod"]},
            ]}),
        );
        assert_eq!(
            errors::<Deployment>(broken),
            [
                r#"spec.selector.matchExpressions[0].operator: Invalid value: "Like": not a valid selector operator"#,
                "spec.selector.matchExpressions[1].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
                "spec.selector.matchExpressions[2].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                "spec.selector: Invalid value: &LabelSelector{MatchLabels:map[string]string{},MatchExpressions:[]LabelSelectorRequirement{LabelSelectorRequirement{Key:app,Operator:Like,Values:[x],},LabelSelectorRequirement{Key:tier,Operator:In,Values:[],},LabelSelectorRequirement{Key:env,Operator:Exists,Values:[prod],},},}: invalid label selector",
            ]
        );
    }

    #[test]
    fn selector_expressions_match_labels() {
        let matching = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["nginx", "web"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
        ]});
        assert!(errors::<Deployment>(set(seed(), "/spec/selector", matching)).is_empty());
        let excluding =
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["nginx"]}]});
        let errs = errors::<Deployment>(set(seed(), "/spec/selector", excluding));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("spec.template.metadata.labels: Invalid value"),
            "{errs:?}"
        );
    }

    #[test]
    fn rolling_update_rules() {
        let strategy = |s: Value| errors::<Deployment>(set(seed(), "/spec/strategy", s));
        assert_eq!(
            strategy(json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}})),
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0%: may not be 0 when `maxSurge` is 0"
            ]
        );
        assert_eq!(
            strategy(
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%", "maxSurge": "ten"}})
            ),
            [
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: ten: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 150%: must not be greater than 100%",
            ]
        );
        assert_eq!(
            strategy(json!({"rollingUpdate": {"maxSurge": -1}})),
            [
                "spec.strategy.rollingUpdate.maxSurge: Invalid value: -1: must be greater than or equal to 0"
            ]
        );
        assert!(strategy(json!({"rollingUpdate": {"maxSurge": 0}})).is_empty());
        assert!(strategy(json!({"type": "Recreate"})).is_empty());
        assert_eq!(
            strategy(json!({"type": "Recreate", "rollingUpdate": {}})),
            [
                "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
            ]
        );
        assert_eq!(
            strategy(json!({"type": "BlueGreen"})),
            [
                r#"spec.strategy.type: Unsupported value: "BlueGreen": supported values: "Recreate", "RollingUpdate""#
            ]
        );
    }

    #[test]
    fn deployment_counts_and_deadlines() {
        let value = set(seed(), "/spec/minReadySeconds", json!(20));
        let value = set(value, "/spec/progressDeadlineSeconds", json!(10));
        let value = set(value, "/spec/revisionHistoryLimit", json!(-1));
        assert_eq!(
            errors::<Deployment>(value),
            [
                "spec.revisionHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
                "spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds",
            ]
        );
        let errs = errors::<Deployment>(set(seed(), "/spec/minReadySeconds", json!(600)));
        assert_eq!(
            errs,
            [
                "spec.progressDeadlineSeconds: Invalid value: 600: must be greater than minReadySeconds"
            ]
        );
    }

    #[test]
    fn workload_templates_restart_always() {
        let value = set(seed(), "/spec/template/spec/restartPolicy", json!("Never"));
        let value = set(
            value,
            "/spec/template/spec/activeDeadlineSeconds",
            json!(10),
        );
        let value = set(value, "/spec/template/metadata/labels/tier", json!("-bad"));
        assert_eq!(
            errors::<Deployment>(value),
            [
                r#"spec.template.labels: Invalid value: "-bad": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#,
                r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#,
                "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported",
            ]
        );
    }

    #[test]
    fn replica_set_rules() {
        let rs = json!({
            "metadata": {"name": "web-5d8f"},
            "spec": {"replicas": -2, "minReadySeconds": -1, "selector": {"matchLabels": {"app": "web"}}},
        });
        assert_eq!(
            errors::<ReplicaSet>(rs),
            [
                "spec.replicas: Invalid value: -2: must be greater than or equal to 0",
                "spec.minReadySeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.template.metadata.labels: Invalid value: map[string]string(nil): `selector` does not match template `labels`",
                "spec.template.spec.containers: Required value",
            ]
        );
        let mut valid = seed();
        valid["spec"]["replicas"] = json!(0);
        assert!(errors::<ReplicaSet>(valid).is_empty());
    }

    #[test]
    fn pod_container_rules() {
        let errs = pod(json!({
            "initContainers": [{"name": "app", "image": "busybox", "livenessProbe": {"exec": {"command": ["true"]}}}],
            "containers": [{
                "name": "app",
                "image": " nginx",
                "ports": [
                    {"containerPort": 80, "name": "http"},
                    {"containerPort": 70000, "name": "http", "protocol": "ICMP"},
                    {"containerPort": 0, "name": "Web_Port"},
                ],
                "env": [{"name": "A=B"}, {"name": ""}, {"name": "1.relaxed-name"}],
            }],
            "restartPolicy": "Sometimes",
        }));
        assert_eq!(
            errs,
            [
                r#"spec.containers[0].image: Invalid value: " nginx": must not have leading or trailing whitespace"#,
                r#"spec.containers[0].ports[1].name: Duplicate value: "http""#,
                "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
                r#"spec.containers[0].ports[2].name: Invalid value: "Web_Port": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                "spec.containers[0].ports[2].containerPort: Required value",
                r#"spec.containers[0].env[0].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
                "spec.containers[0].env[1].name: Required value",
                r#"spec.initContainers[0].name: Duplicate value: "app""#,
                "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
                r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#,
            ]
        );
        assert_eq!(pod(json!({})), ["spec.containers: Required value"]);
        let sidecar = json!({
            "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always", "readinessProbe": {"tcpSocket": {"port": 9901}}}],
            "containers": [{"name": "app", "image": "nginx", "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}],
        });
        assert_eq!(
            pod(sidecar),
            [
                r#"spec.containers[0].env[0].valueFrom: Invalid value: "": may not be specified when `value` is not empty"#
            ]
        );
    }

    #[test]
    fn pod_probe_and_hook_rules() {
        let errs = pod(json!({
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "a",
                "image": "x",
                "lifecycle": {"preStop": {"sleep": {"seconds": 60}}},
                "livenessProbe": {"successThreshold": 3},
                "readinessProbe": {
                    "httpGet": {"port": "metrics-port-too-long", "scheme": "FTP"},
                    "tcpSocket": {"port": 8080},
                    "terminationGracePeriodSeconds": 5,
                },
            }],
        }));
        assert_eq!(
            errs,
            [
                "spec.containers[0].lifecycle.preStop.sleep: Invalid value: 60: must be non-negative and less than terminationGracePeriodSeconds (30)",
                "spec.containers[0].livenessProbe: Required value: must specify a handler type",
                "spec.containers[0].livenessProbe.successThreshold: Invalid value: 3: must be 1",
                r#"spec.containers[0].readinessProbe.httpGet.port: Invalid value: "metrics-port-too-long": must be no more than 15 characters"#,
                r#"spec.containers[0].readinessProbe.httpGet.scheme: Unsupported value: "FTP": supported values: "HTTP", "HTTPS""#,
                "spec.containers[0].readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type",
                "spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: 5: must not be set for readinessProbes",
            ]
        );
        let errs = pod(
            json!({"terminationGracePeriodSeconds": -1, "containers": [{"name": "a", "image": "x"}]}),
        );
        assert_eq!(
            errs,
            [
                "spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0"
            ]
        );
    }

    #[test]
    fn pod_resource_rules() {
        let errs = pod(
            json!({"containers": [{"name": "a", "image": "x", "resources": {
                "limits": {"cpu": "500m", "memory": "1Gi", "example.com/gpu": "2", "pods": "-1"},
                "requests": {"cpu": "1", "memory": "1024Mi", "example.com/gpu": "1", "ephemeral-storage": "lots"},
            }}]}),
        );
        assert_eq!(
            errs,
            [
                r#"spec.containers[0].resources.limits[pods]: Invalid value: "-1": must be greater than or equal to 0"#,
                r#"spec.containers[0].resources.requests[ephemeral-storage]: Invalid value: "lots": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#,
                r#"spec.containers[0].resources.requests: Invalid value: "1": must be less than or equal to cpu limit of 500m"#,
                r#"spec.containers[0].resources.requests: Invalid value: "1": must be equal to example.com/gpu limit of 2"#,
            ]
        );
    }

    #[test]
    fn service_rules() {
        assert!(
            service(
                json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]})
            )
            .is_empty()
        );
        assert!(service(json!({"clusterIP": "None", "selector": {"app": "web"}})).is_empty());
        assert_eq!(service(json!({})), ["spec.ports: Required value"]);
        let errs = errors::<Service>(json!({"metadata": {"name": "1web"}, "spec": {
            "clusterIP": "10.0.0.300",
            "ports": [
                {"port": 80, "nodePort": 30080, "targetPort": "HTTP"},
                {"name": "b", "port": 0, "protocol": "ICMP", "targetPort": 70000},
                {"name": "b", "port": 80},
            ],
            "sessionAffinity": "Sticky",
            "externalTrafficPolicy": "Local",
        }}));
        for wanted in [
            "metadata.name: Invalid value: \"1web\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
            r#"spec.clusterIPs[0]: Invalid value: "10.0.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
            "spec.ports[0].name: Required value",
            r#"spec.ports[0].targetPort: Invalid value: "HTTP": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
            r#"spec.ports[0].targetPort: Invalid value: "HTTP": must contain at least one letter (a-z)"#,
            "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            r#"spec.ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
            "spec.ports[1].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            r#"spec.ports[2].name: Duplicate value: "b""#,
            r#"spec.ports[2]: Duplicate value: core.ServicePort{Name:"", Protocol:"TCP", AppProtocol:(*string)(nil), Port:80, TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}"#,
            r#"spec.sessionAffinity: Unsupported value: "Sticky": supported values: "ClientIP", "None""#,
        ] {
            assert_has(&errs, wanted);
        }
        assert_eq!(errs.len(), 12, "{errs:#?}");
    }

    #[test]
    fn service_types_and_cluster_ips() {
        let ports = json!([{"port": 80}]);
        assert!(
            service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}))
                .is_empty()
        );
        assert!(
            service(json!({"clusterIPs": ["10.96.0.10", "fd00::10"], "ports": ports})).is_empty()
        );
        assert_eq!(
            service(json!({"type": "NodePort", "clusterIP": "None", "ports": ports})),
            [
                r#"spec.clusterIPs[0]: Invalid value: "None": may not be set to 'None' for NodePort services"#
            ]
        );
        assert_eq!(
            service(
                json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "10.0.0.2"], "ports": ports})
            ),
            [
                r#"spec.clusterIPs: Invalid value: []string{"10.0.0.1", "10.0.0.2"}: may specify no more than one IP for each IP family"#
            ]
        );
        assert_eq!(
            service(json!({"clusterIPs": ["None", "10.0.0.1"], "ports": ports})),
            [
                r#"spec.clusterIPs: Invalid value: []string{"None", "10.0.0.1"}: 'None' must be the first and only value"#
            ]
        );
        assert!(
            service(json!({"type": "ExternalName", "externalName": "db.example.com."})).is_empty()
        );
        assert_eq!(
            service(json!({"type": "ExternalName", "clusterIP": "10.0.0.1"})),
            [
                "spec.clusterIPs: Forbidden: may not be set for ExternalName services",
                "spec.externalName: Required value"
            ]
        );
        assert_eq!(
            service(
                json!({"type": "Balanced", "ports": ports, "internalTrafficPolicy": "Nearest"})
            ),
            [
                r#"spec.type: Unsupported value: "Balanced": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort""#,
                r#"spec.internalTrafficPolicy: Unsupported value: "Nearest": supported values: "Cluster", "Local""#,
            ]
        );
        assert_eq!(
            service(
                json!({"ports": ports, "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}})
            ),
            [
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400"
            ]
        );
    }

    #[test]
    fn ingress_rules() {
        let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
        let valid = json!({"metadata": {"name": "web"}, "spec": {
            "ingressClassName": "orca",
            "tls": [{"hosts": ["*.example.com"], "secretName": "web-tls"}],
            "rules": [{"host": "*.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend},
                {"pathType": "ImplementationSpecific", "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
            ]}}],
        }});
        assert!(errors::<Ingress>(valid).is_empty());
        assert_eq!(
            errors::<Ingress>(json!({"metadata": {"name": "web"}})),
            [
                "spec: Invalid value: []networking.IngressRule(nil): either `defaultBackend` or `rules` must be specified"
            ]
        );
        let errs = errors::<Ingress>(json!({"metadata": {"name": "web"}, "spec": {"rules": [
            {"host": "10.0.0.1", "http": {"paths": [
                {"path": "api", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"name": "http", "number": 80}}}},
                {"path": "/a//b/..", "pathType": "Exact", "backend": {"service": {"name": "api"}}},
            ]}},
            {"host": "*.*.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Regex", "backend": {}},
                {"path": "/", "pathType": "", "backend": {}},
            ]}},
            {"host": "Example.com", "http": {"paths": []}},
        ]}}));
        assert_eq!(
            errs,
            [
                r#"spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address"#,
                r#"spec.rules[0].http.paths[0].path: Invalid value: "api": must be an absolute path"#,
                r#"spec.rules[0].http.paths[0].backend: Invalid value: "": cannot set both port name & port number"#,
                r#"spec.rules[0].http.paths[1].path: Invalid value: "/a//b/..": must not contain '//'"#,
                r#"spec.rules[0].http.paths[1].path: Invalid value: "/a//b/..": cannot end with '/..'"#,
                "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
                r#"spec.rules[1].host: Invalid value: "*.*.example.com": a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
                r#"spec.rules[1].http.paths[0].pathType: Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific", "Prefix""#,
                r#"spec.rules[1].http.paths[0].backend: Invalid value: "": resource or service backend is required"#,
                "spec.rules[1].http.paths[1].pathType: Required value: pathType must be specified",
                &format!(r#"spec.rules[2].host: Invalid value: "Example.com": {SUBDOMAIN_MSG}"#),
                "spec.rules[2].http.paths: Required value",
            ]
        );
        let both = json!({"metadata": {"name": "web"}, "spec": {"defaultBackend": {
            "service": {"name": "web", "port": {"number": 80}},
            "resource": {"kind": "Bucket", "name": "static"},
        }}});
        assert_eq!(
            errors::<Ingress>(both),
            [
                r#"spec.defaultBackend: Invalid value: "": cannot set both resource and service backends"#
            ]
        );
    }

    #[test]
    fn endpoint_slice_rules() {
        let slice = |address_type: &str, addresses: Value| {
            errors::<EndpointSlice>(json!({
                "metadata": {"name": "web-abc12"},
                "addressType": address_type,
                "endpoints": [{"addresses": addresses, "nodeName": "node-1"}],
                "ports": [{"name": "http", "port": 8080}],
            }))
        };
        assert!(slice("IPv4", json!(["10.244.1.5"])).is_empty());
        assert!(slice("IPv6", json!(["fd00:10:244::5"])).is_empty());
        assert!(slice("FQDN", json!(["web.example.com."])).is_empty());
        assert_eq!(
            slice(
                "IPv4",
                json!(["fd00::1", "127.0.0.1", "300.1.1.1", "0.0.0.0"])
            ),
            [
                r#"endpoints[0].addresses[0]: Invalid value: "fd00::1": must be a valid IPv4 address"#,
                r#"endpoints[0].addresses[1]: Invalid value: "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#,
                r#"endpoints[0].addresses[2]: Invalid value: "300.1.1.1": must be a valid IPv4 address"#,
                r#"endpoints[0].addresses[3]: Invalid value: "0.0.0.0": may not be unspecified (0.0.0.0)"#,
            ]
        );
        assert_eq!(
            slice("IPv6", json!(["fe80::1", "::ffff:10.0.0.1"])),
            [
                r#"endpoints[0].addresses[0]: Invalid value: "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#,
                r#"endpoints[0].addresses[1]: Invalid value: "::ffff:10.0.0.1": must be a valid IPv6 address"#,
            ]
        );
        assert_eq!(
            slice("FQDN", json!(["web"])),
            [
                r#"endpoints[0].addresses[0]: Invalid value: "web": should be a domain with at least two segments separated by dots"#
            ]
        );
        assert_eq!(
            slice("IPv4", json!([])),
            ["endpoints[0].addresses: Required value: must contain at least 1 address"]
        );
        let many: Vec<_> = (0..101).map(|i| format!("10.244.0.{}", i + 1)).collect();
        assert_eq!(
            slice("IPv4", json!(many)),
            ["endpoints[0].addresses: Invalid value: 101: must have at most 100 items"]
        );
        assert_eq!(
            slice("IPX", json!([])),
            [
                r#"addressType: Unsupported value: "IPX": supported values: "FQDN", "IPv4", "IPv6""#,
                "endpoints[0].addresses: Required value: must contain at least 1 address",
            ]
        );
        let ports = errors::<EndpointSlice>(json!({
            "metadata": {"name": "web-abc12"},
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [{"port": 80}, {"port": 0, "protocol": "ICMP"}],
        }));
        assert_eq!(
            ports,
            [
                r#"ports[1].name: Duplicate value: """#,
                r#"ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
                "ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            ]
        );
    }

    #[test]
    fn node_rules() {
        let node =
            |spec: Value| errors::<Node>(json!({"metadata": {"name": "node-1"}, "spec": spec}));
        assert!(node(json!({"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]})).is_empty());
        assert_eq!(
            node(
                json!({"podCIDR": "10.244.1.0/33", "podCIDRs": ["10.244.1.0/24", "10.244.2.0/24"]})
            ),
            [
                r#"spec.podCIDR: Invalid value: "10.244.1.0/33": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#,
                r#"spec.podCIDRs: Invalid value: []string{"10.244.1.0/24", "10.244.2.0/24"}: may specify no more than one CIDR for each IP family"#,
            ]
        );
        assert_eq!(
            node(json!({"podCIDRs": ["10.244.1.0"]})),
            [
                r#"spec.podCIDRs[0]: Invalid value: "10.244.1.0": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"#
            ]
        );
        // The API server drops a cluster-scoped object's namespace rather than refusing it.
        let errs =
            errors::<Node>(json!({"metadata": {"name": "node-1", "namespace": "Not_A_Label"}}));
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        let namespace = |name: &str| errors::<Namespace>(json!({"metadata": {"name": name}}));
        assert!(namespace("kube-node-lease").is_empty());
        assert_eq!(
            namespace("kube.system"),
            [r#"metadata.name: Invalid value: "kube.system": must not contain dots"#]
        );
        assert_eq!(
            namespace("Default"),
            [
                r#"metadata.name: Invalid value: "Default": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
            ]
        );
        let long = "a".repeat(64);
        assert_eq!(
            namespace(&long),
            [format!(
                "metadata.name: Invalid value: {long:?}: must be no more than 63 characters"
            )]
        );
    }

    #[test]
    fn secret_rules() {
        let secret = |rest: Value| {
            let mut value = json!({"metadata": {"name": "creds"}});
            value
                .as_object_mut()
                .unwrap()
                .extend(rest.as_object().unwrap().clone());
            errors::<Secret>(value)
        };
        assert!(secret(json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "Zm9v"}, "stringData": {"tls.key": "k"}})).is_empty());
        assert_eq!(
            secret(
                json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "Zm9v"}, "stringData": {"bad key": "x", "..": "y"}})
            ),
            [
                r#"data[..]: Invalid value: "..": must not be '..'"#,
                r#"data[bad key]: Invalid value: "bad key": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"#,
                "data[tls.key]: Required value",
            ]
        );
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        assert_eq!(
            secret(json!({"stringData": {"big": big}})),
            ["data: Invalid value: 1048577: must have at most 1048576 bytes"]
        );
    }

    #[test]
    fn config_map_keys_are_unique_across_data_and_binary_data() {
        let errs = errors::<ConfigMap>(json!({
            "metadata": {"name": "settings"},
            "data": {"a": "1", "..x": "2", "app.conf": "x=1"},
            "binaryData": {"a": "AA=="},
        }));
        assert_eq!(
            errs,
            [
                r#"data[..x]: Invalid value: "..x": must not start with '..'"#,
                r#"data[a]: Invalid value: "a": duplicate of key present in binaryData"#,
                r#"binaryData[a]: Invalid value: "a": duplicate of key present in data"#,
            ]
        );
    }

    #[test]
    fn lease_rules() {
        let lease = |spec: Value| {
            errors::<Lease>(
                json!({"metadata": {"name": "node-1", "namespace": "kube-node-lease"}, "spec": spec}),
            )
        };
        assert!(
            lease(json!({"holderIdentity": "any holder, at all!", "leaseDurationSeconds": 40}))
                .is_empty()
        );
        assert_eq!(
            lease(json!({"leaseDurationSeconds": 0, "leaseTransitions": -1})),
            [
                "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
                "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
            ]
        );
    }

    #[test]
    fn metadata_labels_annotations_and_namespace() {
        let long = "x".repeat(64);
        let errs = errors::<ConfigMap>(json!({"metadata": {
            "name": "c",
            "namespace": "Bad_NS",
            "labels": {"example.com/app": "web", "-bad": "ok", "app": long, "Bad_Prefix/app": "v"},
            "annotations": {"Example.COM/Key": "v", "a/b/c": "v"},
            "finalizers": ["example.com/cleanup"],
        }}));
        let name_part = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
        assert_eq!(
            errs,
            [
                r#"metadata.namespace: Invalid value: "Bad_NS": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#.to_string(),
                format!(r#"metadata.labels: Invalid value: "-bad": name part {name_part}"#),
                format!(r#"metadata.labels: Invalid value: "Bad_Prefix/app": prefix part {SUBDOMAIN_MSG}"#),
                format!("metadata.labels: Invalid value: {long:?}: must be no more than 63 characters"),
                format!(
                    r#"metadata.annotations: Invalid value: "a/b/c": a valid label key {name_part} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#
                ),
            ]
        );
    }

    #[test]
    fn format_checks() {
        assert_eq!(
            regex_error("bad", "x+", &["x", "xx"]),
            "bad (e.g. 'x',  or 'xx', regex used for validation is 'x+')"
        );
        assert_eq!(dns1123_label("a.b"), ["must not contain dots"]);
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert!(dns1035_label("web-1").is_empty() && !dns1035_label("1web").is_empty());
        assert_eq!(
            port_name("-a--b-"),
            [
                "must not contain consecutive hyphens",
                "must not begin or end with a hyphen"
            ]
        );
        assert_eq!(
            port_name("8080"),
            ["must contain at least one letter (a-z)"]
        );
        assert!(qualified_name("kubernetes.io/hostname").is_empty());
        assert_eq!(qualified_name("/x"), ["prefix part must be non-empty"]);

        let q = |s: &str| parse_quantity(s);
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1.5"), q("1500m"));
        assert_eq!(q("2e3"), q("2k"));
        assert_eq!(q(".5"), Some(0.5));
        assert_eq!(q("-1"), Some(-1.0));
        assert!(q("1Ki") > q("1k"));
        for bad in ["", ".", "abc", "1.2.3", "1K", "5e", "1Mb"] {
            assert_eq!(q(bad), None, "{bad}");
        }
        assert!(parse_cidr("10.0.0.0/8").is_some() && parse_cidr("fd00::/129").is_none());
    }
}
