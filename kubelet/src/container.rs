//! What a container runs: its command line (the image's Entrypoint and Cmd
//! overridden by the pod's `command` and `args`), its environment (the
//! image's, then the pod's, with `valueFrom` references and `$(VAR)`
//! expansion as the kubelet does), its working directory and its user.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, EnvVar};
use orca_core::api::{ConfigMap, Pod, Secret};

use crate::image::ImageConfig;

/// A ConfigMap or Secret the caller fetched for the pod's namespace.
pub trait Lookup {
    /// The ConfigMap `name`, if it exists.
    fn config_map(&self, name: &str) -> Option<ConfigMap>;
    /// The Secret `name`, if it exists.
    fn secret(&self, name: &str) -> Option<Secret>;
}

/// The command line: Kubernetes' rules for `command` and `args` over the
/// image's Entrypoint and Cmd.
pub fn command_line(
    container: &Container,
    image: &ImageConfig,
    env: &[(String, String)],
) -> Vec<String> {
    let expand_all = |words: &[String]| words.iter().map(|w| expand(w, env)).collect::<Vec<_>>();
    match (&container.command, &container.args) {
        (Some(command), args) => {
            let mut line = expand_all(command);
            line.extend(expand_all(args.as_deref().unwrap_or_default()));
            line
        }
        (None, Some(args)) => {
            let mut line = image.entrypoint.clone();
            line.extend(expand_all(args));
            line
        }
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// Expands `$(NAME)` from `env`; `$$` escapes a `$`, and unknown references
/// stay as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = rest.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some((_, value)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A field of the pod, as `fieldRef` names it.
fn field(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let indexed = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec?.node_name.clone(),
        "spec.serviceAccountName" => spec?.service_account_name.clone(),
        "status.podIP" => status?.pod_ip.clone(),
        "status.hostIP" => Some(host_ip.to_string()),
        _ if path.starts_with("metadata.labels['") => {
            indexed(meta.labels.as_ref(), "metadata.labels['")
        }
        _ if path.starts_with("metadata.annotations['") => {
            indexed(meta.annotations.as_ref(), "metadata.annotations['")
        }
        _ => None,
    }
}

/// The container's environment, in order: the image's, `envFrom`, `env`
/// (later entries win, `$(VAR)` expanded against the earlier ones).
/// A missing ConfigMap, Secret or key that is not `optional` is an error
/// (`CreateContainerConfigError`).
pub fn environment(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    host_ip: &str,
    lookup: &dyn Lookup,
) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = image
        .env
        .iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    // As containerd does: a PATH when the image sets none, so a command
    // named without a path is found.
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
    };
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            match lookup.config_map(&r.name) {
                Some(map) => {
                    for (k, v) in map.data.into_iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        }
        if let Some(r) = &source.secret_ref {
            match lookup.secret(&r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.into_iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = value_of(pod, var, host_ip, lookup, &env)? {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

fn value_of(
    pod: &Pod,
    var: &EnvVar,
    host_ip: &str,
    lookup: &dyn Lookup,
    env: &[(String, String)],
) -> Result<Option<String>, String> {
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or_default(), env)));
    };
    if let Some(r) = &from.field_ref {
        return field(pod, &r.field_path, host_ip)
            .map(Some)
            .ok_or_else(|| format!("env {}: unsupported fieldPath {:?}", var.name, r.field_path));
    }
    if let Some(r) = &from.config_map_key_ref {
        let value = lookup
            .config_map(&r.name)
            .and_then(|m| m.data?.get(&r.key).cloned());
        return match value {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!(
                "couldn't find key {} in ConfigMap {}",
                r.key, r.name
            )),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let value = lookup.secret(&r.name).and_then(|s| {
            s.data?
                .get(&r.key)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        });
        return match value {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!("couldn't find key {} in Secret {}", r.key, r.name)),
        };
    }
    Err(format!("env {}: unsupported valueFrom", var.name))
}

/// The uid and gid a container runs as: the pod's or container's
/// `runAsUser`/`runAsGroup`, else the image's `User` (numeric, or a name
/// looked up in the image's `/etc/passwd` and `/etc/group`).
pub fn user(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    rootfs: &Path,
) -> Result<(u32, u32), String> {
    let context = container.security_context.as_ref();
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let run_as_user = context
        .and_then(|c| c.run_as_user)
        .or(pod_context.and_then(|c| c.run_as_user));
    let run_as_group = context
        .and_then(|c| c.run_as_group)
        .or(pod_context.and_then(|c| c.run_as_group));
    let (image_user, image_group) = image.user.split_once(':').unwrap_or((&image.user, ""));
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| {
                let id = fields.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
                let gid = fields.get(3).and_then(|v| v.parse().ok()).unwrap_or(id);
                (id, gid)
            })
        })
    };
    let (mut uid, mut gid) = (0, 0);
    if !image_user.is_empty() {
        (uid, gid) = match image_user.parse::<u32>() {
            Ok(id) => (id, id),
            Err(_) => lookup("etc/passwd", image_user).ok_or_else(|| {
                format!("unable to find user {image_user}: no matching entries in passwd file")
            })?,
        };
    }
    if !image_group.is_empty() {
        gid = match image_group.parse::<u32>() {
            Ok(id) => id,
            Err(_) => {
                lookup("etc/group", image_group)
                    .ok_or_else(|| format!("unable to find group {image_group}"))?
                    .0
            }
        };
    }
    if let Some(u) = run_as_user {
        uid = u as u32;
    }
    if let Some(g) = run_as_group {
        gid = g as u32;
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn command_and_args_override_entrypoint_and_cmd_as_kubernetes_says() {
        let image = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["--default".into()],
            ..ImageConfig::default()
        };
        let mut c = Container::default();
        assert_eq!(command_line(&c, &image, &[]), ["/entry", "--default"]);
        c.args = Some(vec!["-x".into(), "$(GREETING)".into()]);
        let e = env(&[("GREETING", "hi")]);
        assert_eq!(command_line(&c, &image, &e), ["/entry", "-x", "hi"]);
        c.command = Some(vec!["/bin/sh".into()]);
        c.args = None;
        assert_eq!(command_line(&c, &image, &e), ["/bin/sh"]);
    }

    #[test]
    fn expansion_handles_escapes_and_unknown_names() {
        let e = env(&[("A", "1")]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &e), "1-$(B)-$(A)-$");
    }
}
