//! Image references as Docker normalises them, the pull policy they imply,
//! and allow-lists of references: the node's (the kubelet's `images.allow`)
//! and the cluster's (checked as pods and pod templates are written).

use std::fmt;

/// The registry an image without one comes from.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference: `docker.io/library/nginx:1.7.9`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host, with its port when it has one (`127.0.0.1:5000`).
    pub registry: String,
    /// The repository within the registry (`library/nginx`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:…`), when pinned by digest.
    pub digest: Option<String>,
}

impl Reference {
    /// `registry/repository`, the name a repo digest is written with.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry is asked for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Parses `image` as Docker does: `nginx` is `docker.io/library/nginx:latest`,
/// `user/app` is `docker.io/user/app:latest`, a first component holding `.`
/// or `:` (or `localhost`) is a registry host.
pub fn normalize(image: &str) -> Result<Reference, String> {
    let invalid = |why: &str| Err(format!("invalid image name {image:?}: {why}"));
    if image.is_empty() {
        return invalid("it is empty");
    }
    if image.trim() != image || image.chars().any(char::is_whitespace) {
        return invalid("it contains white space");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => {
            if let Err(why) = check_digest(digest) {
                return invalid(&why);
            }
            (rest, Some(digest.to_string()))
        }
        None => (image, None),
    };
    // A tag follows the last `:` after the last `/`; an earlier `:` is a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && !tag.starts_with(['.', '-']);
        if !valid {
            return invalid(&format!("{tag:?} is not a valid tag"));
        }
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    if registry.is_empty()
        || !registry
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return invalid(&format!("{registry:?} is not a valid registry host"));
    }
    for component in repository.split('/') {
        let valid = !component.is_empty()
            && component.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return invalid(&format!(
                "{component:?} is not a valid repository name component \
                 (lower-case letters, digits and separators . _ -)"
            ));
        }
    }
    let tag = match (tag, &digest) {
        (Some(tag), _) => Some(tag.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_string()),
    };
    Ok(Reference {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Checks a `sha256:<64 lower-case hex>` digest; the only algorithm
/// registries use, and the hex becomes a file name, so nothing else passes.
pub fn check_digest(digest: &str) -> Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} is not a sha256 digest"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} does not have 64 lower-case hex digits"
        ));
    }
    Ok(hex)
}

/// When to pull (a container's `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference with the registry every time.
    Always,
    /// Pull only when the image is not on the node.
    IfNotPresent,
    /// Never pull; fail when the image is not on the node.
    Never,
}

impl PullPolicy {
    /// The policy a container gets: the one it names, else Kubernetes'
    /// default of `Always` for `:latest` or untagged images and
    /// `IfNotPresent` for any other tag or a digest.
    pub fn of(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("IfNotPresent") => Self::IfNotPresent,
            Some("Never") => Self::Never,
            _ => match normalize(image) {
                Ok(reference)
                    if reference.digest.is_none() && reference.tag.as_deref() == Some("latest") =>
                {
                    Self::Always
                }
                Ok(_) => Self::IfNotPresent,
                // The pull will report the bad name; the policy does not matter.
                Err(_) => Self::Always,
            },
        }
    }
}

/// Whether the normalised `image` matches a rule of the allow-list: a rule is
/// the exact reference, or a prefix ending in `*` (`127.0.0.1:5000/*`). An
/// empty list allows every image. `rules` says whose list it is in the
/// refusal (`on this node (images.allow)`).
pub fn allowed(allow: &[String], image: &str, rules: &str) -> Result<(), String> {
    if allow.is_empty() {
        return Ok(());
    }
    let matches = |rule: &String| match rule.strip_suffix('*') {
        Some(prefix) => image.starts_with(prefix),
        None => image == rule,
    };
    if allow.iter().any(matches) {
        return Ok(());
    }
    Err(format!(
        "image {image:?} is not allowed {rules}: no rule matches it (the rules: {})",
        allow.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(image: &str) -> String {
        normalize(image).expect(image).to_string()
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_names_are_completed() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.7.9"), "docker.io/library/nginx:1.7.9");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("docker.io/library/nginx:1"),
            "docker.io/library/nginx:1"
        );
    }

    #[test]
    fn registry_hosts_are_kept() {
        assert_eq!(norm("127.0.0.1:5000/bb:1"), "127.0.0.1:5000/bb:1");
        assert_eq!(norm("localhost/bb"), "localhost/bb:latest");
        assert_eq!(norm("quay.io/a/b/c:v2"), "quay.io/a/b/c:v2");
        let reference = normalize("127.0.0.1:5000/bb").expect("parses");
        assert_eq!(reference.registry, "127.0.0.1:5000");
        assert_eq!(reference.repository, "bb");
        assert_eq!(reference.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn digests() {
        let reference = normalize(&format!("nginx@{DIGEST}")).expect("parses");
        assert_eq!(reference.tag, None);
        assert_eq!(reference.digest.as_deref(), Some(DIGEST));
        assert_eq!(reference.manifest_reference(), DIGEST);
        assert_eq!(
            reference.to_string(),
            format!("docker.io/library/nginx@{DIGEST}")
        );
        assert_eq!(
            norm(&format!("127.0.0.1:5000/bb:1@{DIGEST}")),
            format!("127.0.0.1:5000/bb:1@{DIGEST}")
        );
        assert!(normalize("nginx@sha256:abc").is_err());
        assert!(normalize("nginx@md5:0123").is_err());
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "nginx:1 2",
            "/x",
            "x/",
        ] {
            let err = normalize(bad).expect_err(bad);
            assert!(err.starts_with("invalid image name"), "{err}");
        }
    }

    #[test]
    fn default_pull_policy() {
        assert_eq!(PullPolicy::of(None, "nginx"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "nginx:latest"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::of(None, "nginx:1.7.9"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::of(None, &format!("nginx@{DIGEST}")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(PullPolicy::of(Some("Never"), "nginx"), PullPolicy::Never);
        assert_eq!(
            PullPolicy::of(Some("Always"), "nginx:1"),
            PullPolicy::Always
        );
    }

    #[test]
    fn allow_list() {
        let allow = vec![
            "127.0.0.1:5000/*".to_string(),
            "docker.io/library/nginx:1.7.9".to_string(),
        ];
        let rules = "on this node (images.allow)";
        assert!(allowed(&allow, "127.0.0.1:5000/bb:1", rules).is_ok());
        assert!(allowed(&allow, "docker.io/library/nginx:1.7.9", rules).is_ok());
        let err = allowed(&allow, "docker.io/library/nginx:latest", rules).expect_err("refused");
        assert!(
            err.contains("not allowed on this node (images.allow)"),
            "{err}"
        );
        assert!(
            err.contains("127.0.0.1:5000/*, docker.io/library/nginx:1.7.9"),
            "{err}"
        );
        assert!(allowed(&[], "anything/at:all", rules).is_ok());
    }
}
