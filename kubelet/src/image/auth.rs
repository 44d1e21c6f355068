//! Registry credentials (from `imagePullSecrets`) and the `WWW-Authenticate`
//! challenges they answer.

use std::collections::BTreeMap;

use serde::Deserialize;

use orca_core::image::DOCKER_HUB;

/// Credentials for one registry host (from an `imagePullSecret`'s
/// `.dockerconfigjson`).
#[derive(Clone)]
pub struct Credential {
    /// The registry host they are for (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

// The password never reaches a log line through a debug print.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The `Authorization: Basic` value.
    pub(super) fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64_encode(format!("{}:{}", self.username, self.password).as_bytes())
        )
    }
}

/// The registry host a docker config key names: keys may be URLs
/// (`https://index.docker.io/v1/`), and Docker Hub has several names.
fn registry_host(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        host => host.to_string(),
    }
}

/// The credentials in a `.dockerconfigjson`:
/// `{"auths": {"host": {"username", "password"} or {"auth": base64("user:pass")}}}`.
pub fn credentials_from_docker_config(json: &[u8]) -> Result<Vec<Credential>, String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
        #[serde(default)]
        auth: Option<String>,
    }
    let config: Config = serde_json::from_slice(json)
        .map_err(|err| format!("docker config is not valid JSON: {err}"))?;
    let mut credentials = Vec::new();
    for (key, entry) in config.auths {
        let (username, password) = match (entry.username, entry.password, entry.auth) {
            (Some(username), Some(password), _) if !username.is_empty() => (username, password),
            (_, _, Some(auth)) if !auth.is_empty() => {
                let decoded = base64_decode(&auth)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| format!("docker config: auths.{key}.auth is not base64"))?;
                let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                    format!("docker config: auths.{key}.auth is not base64 of user:password")
                })?;
                (user.to_string(), pass.to_string())
            }
            _ => {
                return Err(format!(
                    "docker config: auths.{key} has neither username and password nor auth"
                ));
            }
        };
        credentials.push(Credential {
            registry: registry_host(&key),
            username,
            password,
        });
    }
    Ok(credentials)
}

/// The credential for `host`, if any (`registry-1.docker.io` is `docker.io`).
pub(super) fn credential_for<'a>(
    credentials: &'a [Credential],
    host: &str,
) -> Option<&'a Credential> {
    let host = registry_host(host);
    credentials
        .iter()
        .find(|c| registry_host(&c.registry) == host)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    /// `Basic realm=…`: send the credentials.
    Basic,
    /// `Bearer realm=…,service=…,scope=…`: get a token from the realm.
    Bearer {
        /// The token server's URL.
        realm: String,
        /// The `service` parameter, when given.
        service: Option<String>,
        /// The `scope` parameter, when given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value; `None` for schemes nobody uses with
/// registries.
pub(super) fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut values = BTreeMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, a)| (v, a)),
        };
        values.insert(key.trim().to_ascii_lowercase(), value.to_string());
        rest = after.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: values.remove("realm")?,
        service: values.remove("service"),
        scope: values.remove("scope"),
    })
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(super) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, padded or not; `None` when it is not base64.
pub(super) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut n = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        n = n << 6 | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "user:pa:ss",
        ] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(base64_decode(&encoded).as_deref(), Some(text.as_bytes()));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Zm*8"), None);
    }

    #[test]
    fn docker_config() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"username": "me", "password": "secret"}
        }}"#;
        let credentials = credentials_from_docker_config(json).expect("parses");
        assert_eq!(credentials.len(), 2);
        let hub = credential_for(&credentials, "docker.io").expect("docker hub");
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pass")
        );
        assert_eq!(
            credential_for(&credentials, "registry-1.docker.io").map(|c| c.username.as_str()),
            Some("user")
        );
        let local = credential_for(&credentials, "127.0.0.1:5000").expect("local");
        assert_eq!(
            local.basic(),
            format!("Basic {}", base64_encode(b"me:secret"))
        );
        assert!(credential_for(&credentials, "quay.io").is_none());
        assert!(!format!("{local:?}").contains("secret"));

        let err = credentials_from_docker_config(br#"{"auths": {"x": {}}}"#).expect_err("empty");
        assert!(err.contains("auths.x"), "{err}");
        let err = credentials_from_docker_config(b"nope").expect_err("not json");
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm=http://127.0.0.1/t"#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1/t".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
