//! The cluster's image policy, checked in the store's write path: a Pod, or
//! a workload's pod template, naming an image no rule of the policy allows
//! is refused as it is written, whoever writes it, with the field and the
//! rules in the error, as an admission policy refuses it in Kubernetes.
//! Each node's kubelet keeps its own list too (`images.allow`), checked
//! before it pulls. The policy lives at [`IMAGES_KEY`], written by `orca
//! master --image-allow`; without it every image is allowed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::image::{allowed, normalize};
use crate::validation::FieldError;

/// Where the cluster's image policy is kept.
pub const IMAGES_KEY: &str = "/registry/clusterconfig/images";

/// The images a cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePolicy {
    /// Patterns of normalised references (`docker.io/library/*`); empty
    /// allows every image.
    pub allow: Vec<String>,
}

/// The images `obj` of kind `plural` names, with the field of each: a
/// Pod's, or the pod template's of a workload.
pub(crate) fn images(plural: &str, obj: &Value) -> Vec<(String, String)> {
    let (spec, base) = match plural {
        "pods" => (obj.get("spec"), "spec"),
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" => {
            (obj.pointer("/spec/template/spec"), "spec.template.spec")
        }
        _ => return Vec::new(),
    };
    let mut found = Vec::new();
    for list in ["initContainers", "containers"] {
        let containers = spec.and_then(|s| s.get(list)).and_then(Value::as_array);
        for (i, container) in containers.into_iter().flatten().enumerate() {
            if let Some(image) = container.get("image").and_then(Value::as_str) {
                found.push((format!("{base}.{list}[{i}].image"), image.to_string()));
            }
        }
    }
    found
}

/// Whether `images` names one that `before` did not: only a new image is
/// checked, so a policy made stricter never blocks a change to a running
/// workload that keeps its images (a scale, a label, a bind).
pub(crate) fn any_new(images: &[(String, String)], before: &[(String, String)]) -> bool {
    images
        .iter()
        .any(|(_, image)| !before.iter().any(|(_, b)| b == image))
}

/// An error for each new image of `images` the policy refuses.
pub(crate) fn refused(
    policy: &ImagePolicy,
    images: &[(String, String)],
    before: &[(String, String)],
) -> Vec<FieldError> {
    images
        .iter()
        .filter(|(_, image)| !before.iter().any(|(_, b)| b == image))
        .filter_map(|(field, image)| {
            // A name that does not parse is the kubelet's to report.
            let name = normalize(image).ok()?.to_string();
            allowed(
                &policy.allow,
                &name,
                "in this cluster (orca master --image-allow)",
            )
            .err()
            .map(|why| FieldError::forbidden(field.clone(), why))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_template_s_new_images_are_checked_against_the_policy() {
        let policy = ImagePolicy {
            allow: vec!["docker.io/library/*".into()],
        };
        let deployment = json!({"spec": {"template": {"spec": {
            "initContainers": [{"name": "i", "image": "busybox"}],
            "containers": [{"name": "a", "image": "nginx:1.7.9"}, {"name": "b", "image": "evil.io/x:1"}],
        }}}});
        let found = images("deployments", &deployment);
        assert_eq!(found.len(), 3);
        let errors = refused(&policy, &found, &[]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = format!("{:?}", errors[0]);
        assert!(
            text.contains("spec.template.spec.containers[1].image"),
            "{text}"
        );
        assert!(text.contains("evil.io/x:1"), "{text}");
        assert!(text.contains("docker.io/library/*"), "{text}");
        // An image the object had already is not checked again.
        assert!(!any_new(&found, &found));
        assert!(refused(&policy, &found, &found).is_empty());
        // Other kinds name no images; an empty policy allows all.
        assert!(images("services", &deployment).is_empty());
        assert!(refused(&ImagePolicy::default(), &found, &[]).is_empty());
    }
}
