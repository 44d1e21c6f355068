//! The distribution API: where an image is pulled from (mirrors first, then
//! the registry), token and basic authentication, manifests and blobs.

use std::collections::BTreeMap;

use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{LOCATION, WWW_AUTHENTICATE};
use serde::Deserialize;

use super::auth::{Challenge, Credential, credential_for, parse_challenge};
use super::http::{Client, Url, read_body};
use orca_core::image::{DOCKER_HUB, Reference, check_digest};

/// Per-registry settings from the node config (the YAML `registries:` map:
/// `docker.io: {mirrors: ["http://127.0.0.1:5000"]}`,
/// `127.0.0.1:5000: {insecure: true}`).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// URLs tried in order before the registry itself; the scheme says
    /// whether to use TLS.
    pub mirrors: Vec<String>,
    /// Speak plain HTTP to the registry itself.
    pub insecure: bool,
}

/// Where Docker Hub's API is, as opposed to its name in references.
const DOCKER_HUB_API: &str = "https://registry-1.docker.io";

/// The manifest types understood, most specific last.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Most bytes of a manifest, an error body or a token answer read.
const SMALL_BODY: usize = 4 << 20;

/// How many redirects a blob download follows (to the registry's storage).
const MAX_REDIRECTS: usize = 5;

/// Why a request to a registry failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    /// The registry could not be reached, or the connection broke.
    #[error("{0}")]
    Transport(String),
    /// The registry answered with an error; `message` is from its JSON body.
    #[error("{message} ({status})")]
    Registry {
        /// The answer's status.
        status: StatusCode,
        /// The `message`s of the `errors` in the body, or the body itself.
        message: String,
    },
    /// Content does not have the digest it was asked for by.
    #[error("{what} has digest {actual}, not the expected {expected}")]
    Digest {
        /// What was fetched.
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        actual: String,
    },
    /// An answer this client does not understand.
    #[error("{0}")]
    Protocol(String),
}

/// The URLs to pull from for `reference`, in the order to try them.
pub(super) fn sources(
    reference: &Reference,
    registries: &BTreeMap<String, RegistryConfig>,
) -> Result<Vec<Url>, String> {
    let config = registries
        .get(&reference.registry)
        .cloned()
        .unwrap_or_default();
    let mut urls = config
        .mirrors
        .iter()
        .map(|mirror| Url::parse(mirror))
        .collect::<Result<Vec<_>, _>>()?;
    let own = if reference.registry == DOCKER_HUB {
        DOCKER_HUB_API.to_string()
    } else if config.insecure {
        format!("http://{}", reference.registry)
    } else {
        format!("https://{}", reference.registry)
    };
    urls.push(Url::parse(&own)?);
    Ok(urls)
}

/// A content descriptor: what a manifest says about a config, layer or
/// platform manifest.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Descriptor {
    /// The content's media type.
    #[serde(rename = "mediaType", default)]
    media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// For manifests in an index: the platform it is for.
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

/// An image manifest, resolved to this host's platform.
#[derive(Debug, Clone)]
pub(super) struct Manifest {
    /// The digest of what the reference names (an index for multi-platform
    /// images): the repo digest.
    pub digest: String,
    /// The image config.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A manifest or an index, as fetched.
#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The sha256 digest of `bytes`, `sha256:<hex>`.
pub(super) fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The architecture registries call this host's.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The manifest of an index meant for linux on `architecture`.
fn pick_platform<'a>(
    manifests: &'a [Descriptor],
    architecture: &str,
) -> Result<&'a Descriptor, String> {
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
        })
        .ok_or_else(|| {
            let offered: Vec<String> = manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            format!(
                "the image has no variant for linux/{architecture} (it has: {})",
                offered.join(", ")
            )
        })
}

/// Requests to one repository on one registry or mirror; remembers the
/// authorization it earned.
pub(super) struct Session<'a> {
    client: &'a Client,
    base: Url,
    repository: String,
    credentials: &'a [Credential],
    authorization: Option<String>,
}

impl<'a> Session<'a> {
    /// A session for `repository` at `base`.
    pub fn new(
        client: &'a Client,
        base: Url,
        repository: &str,
        credentials: &'a [Credential],
    ) -> Self {
        Self {
            client,
            base,
            repository: repository.to_string(),
            credentials,
            authorization: None,
        }
    }

    /// The manifest `reference` (a tag or digest) names, resolved through an
    /// index to this host's platform.
    pub async fn manifest(&mut self, reference: &str) -> Result<Manifest, FetchError> {
        let top = self.fetch_manifest(reference).await?;
        let digest = top.0.clone();
        let raw = top.1;
        let raw = match &raw.manifests {
            Some(manifests) => {
                let chosen =
                    pick_platform(manifests, host_architecture()).map_err(FetchError::Protocol)?;
                self.fetch_manifest(&chosen.digest).await?.1
            }
            None => raw,
        };
        if raw.schema_version == 1
            || raw
                .media_type
                .starts_with("application/vnd.docker.distribution.manifest.v1")
        {
            return Err(FetchError::Protocol(
                "the registry only offers a Docker schema 1 manifest, which is not supported"
                    .to_string(),
            ));
        }
        let config = raw.config.ok_or_else(|| {
            FetchError::Protocol(format!("manifest {digest} names no image config"))
        })?;
        for descriptor in std::iter::once(&config).chain(&raw.layers) {
            check_digest(&descriptor.digest).map_err(FetchError::Protocol)?;
        }
        // Registries also hold artifacts (Helm charts, signatures) whose
        // "layers" are no file systems.
        if !matches!(
            config.media_type.as_str(),
            "" | "application/vnd.oci.image.config.v1+json"
                | "application/vnd.docker.container.image.v1+json"
        ) {
            return Err(FetchError::Protocol(format!(
                "not a container image: its config has media type {}",
                config.media_type
            )));
        }
        if let Some(layer) = raw.layers.iter().find(|l| {
            !(l.media_type.is_empty()
                || l.media_type.contains(".layer.v1.tar")
                || l.media_type.contains(".rootfs.diff.tar"))
        }) {
            return Err(FetchError::Protocol(format!(
                "layer {} has media type {}, which is not a layer this node can unpack",
                layer.digest, layer.media_type
            )));
        }
        Ok(Manifest {
            digest,
            config,
            layers: raw.layers,
        })
    }

    /// A manifest and its digest, checked against `reference` when that is a
    /// digest.
    async fn fetch_manifest(
        &mut self,
        reference: &str,
    ) -> Result<(String, RawManifest), FetchError> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let response = self.get(&path, Some(MANIFEST_TYPES)).await?;
        let bytes = read_body(response, SMALL_BODY)
            .await
            .map_err(FetchError::Transport)?;
        let digest = digest_of(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(FetchError::Digest {
                what: format!("manifest {reference}"),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let raw = serde_json::from_slice(&bytes).map_err(|err| {
            FetchError::Protocol(format!("manifest {reference} is not valid JSON: {err}"))
        })?;
        Ok((digest, raw))
    }

    /// The body of blob `digest`, for the caller to stream and verify.
    pub async fn blob(&mut self, digest: &str) -> Result<Incoming, FetchError> {
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        Ok(self.get(&path, None).await?.into_body())
    }

    /// GETs `path` of the registry: authenticates on a 401 and follows
    /// redirects; any answer but a success is an error.
    async fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<hyper::Response<Incoming>, FetchError> {
        let mut url = self.base.join(path).map_err(FetchError::Protocol)?;
        let mut authenticated = false;
        for _ in 0..=MAX_REDIRECTS {
            let own = url.authority == self.base.authority && url.tls == self.base.tls;
            let mut headers = Vec::new();
            if let Some(accept) = accept {
                headers.push(("accept", accept));
            }
            // Credentials go to the registry only, never to the storage it
            // redirects blob downloads to (those URLs carry a signature).
            if let (true, Some(authorization)) = (own, &self.authorization) {
                headers.push(("authorization", authorization.as_str()));
            }
            let response = self
                .client
                .get(&url, &headers)
                .await
                .map_err(FetchError::Transport)?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && own && !authenticated {
                authenticated = true;
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let answered = match challenge {
                    Some(challenge) => self.authenticate(challenge).await?,
                    None => false,
                };
                if answered {
                    continue;
                }
                return Err(registry_error(response).await);
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        FetchError::Protocol(format!("{status} without a Location header"))
                    })?;
                url = url.join(location).map_err(FetchError::Protocol)?;
                continue;
            }
            if !status.is_success() {
                return Err(registry_error(response).await);
            }
            return Ok(response);
        }
        Err(FetchError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirects for {path}"
        )))
    }

    /// Earns an authorization for `challenge`; `false` when there is nothing
    /// to answer it with (a Basic challenge and no credentials).
    async fn authenticate(&mut self, challenge: Challenge) -> Result<bool, FetchError> {
        let credential = credential_for(self.credentials, &self.base.authority);
        match challenge {
            Challenge::Basic => {
                self.authorization = credential.map(Credential::basic);
                Ok(self.authorization.is_some())
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut query = vec![("scope", scope)];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                let query: Vec<String> = query
                    .iter()
                    .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                    .collect();
                let separator = if realm.contains('?') { '&' } else { '?' };
                let url = Url::parse(&format!("{realm}{separator}{}", query.join("&")))
                    .map_err(|err| FetchError::Protocol(format!("token realm: {err}")))?;
                let basic = credential.map(Credential::basic);
                let headers: Vec<(&str, &str)> = basic
                    .iter()
                    .map(|b| ("authorization", b.as_str()))
                    .collect();
                let response = self
                    .client
                    .get(&url, &headers)
                    .await
                    .map_err(FetchError::Transport)?;
                if !response.status().is_success() {
                    return Err(match registry_error(response).await {
                        FetchError::Registry { status, message } => FetchError::Registry {
                            status,
                            message: format!("token server {realm}: {message}"),
                        },
                        other => other,
                    });
                }
                let body = read_body(response, SMALL_BODY)
                    .await
                    .map_err(FetchError::Transport)?;
                #[derive(Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let token: Token = serde_json::from_slice(&body).map_err(|err| {
                    FetchError::Protocol(format!("token server {realm}: answer is not JSON: {err}"))
                })?;
                let token = token.token.or(token.access_token).ok_or_else(|| {
                    FetchError::Protocol(format!("token server {realm} gave no token"))
                })?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(true)
            }
        }
    }
}

/// The error a registry answered with: the `message`s of its JSON
/// `errors`, or else the start of the body.
async fn registry_error(response: hyper::Response<Incoming>) -> FetchError {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<Error>,
    }
    #[derive(Deserialize)]
    struct Error {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = response.status();
    let body = read_body(response, SMALL_BODY).await.unwrap_or_default();
    let message = match serde_json::from_slice::<Errors>(&body) {
        Ok(errors) if !errors.errors.is_empty() => errors
            .errors
            .iter()
            .map(|e| {
                if e.message.is_empty() {
                    e.code.to_lowercase().replace('_', " ")
                } else {
                    e.message.clone()
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_lowercase()
            } else {
                text.to_string()
            }
        }
    };
    FetchError::Registry { status, message }
}

/// Percent-encodes a query value.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use orca_core::image::normalize;

    #[test]
    fn mirrors_come_first() {
        let registries = BTreeMap::from([
            (
                "docker.io".to_string(),
                RegistryConfig {
                    mirrors: vec!["http://127.0.0.1:5000".into()],
                    insecure: false,
                },
            ),
            (
                "127.0.0.1:5001".to_string(),
                RegistryConfig {
                    mirrors: vec![],
                    insecure: true,
                },
            ),
        ]);
        let origins = |image: &str| -> Vec<String> {
            sources(&normalize(image).expect("parses"), &registries)
                .expect("valid")
                .iter()
                .map(Url::origin)
                .collect()
        };
        assert_eq!(
            origins("nginx"),
            ["http://127.0.0.1:5000", "https://registry-1.docker.io"]
        );
        assert_eq!(origins("127.0.0.1:5001/bb"), ["http://127.0.0.1:5001"]);
        assert_eq!(origins("quay.io/a/b"), ["https://quay.io"]);
    }

    #[test]
    fn index_picks_the_platform() {
        let index: RawManifest = serde_json::from_str(
            r#"{"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:aa",
                 "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:bb",
                 "platform": {"os": "linux", "architecture": "amd64"}}
            ]}"#,
        )
        .expect("parses");
        let manifests = index.manifests.expect("an index");
        assert_eq!(
            pick_platform(&manifests, "amd64").expect("found").digest,
            "sha256:bb"
        );
        let err = pick_platform(&manifests, "s390x").expect_err("absent");
        assert!(err.contains("linux/arm64, linux/amd64"), "{err}");
    }

    #[test]
    fn digests_and_encoding() {
        assert_eq!(
            digest_of(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            percent_encode("repository:library/nginx:pull"),
            "repository%3Alibrary%2Fnginx%3Apull"
        );
    }

    /// A registry that wants a token (from its realm, for basic
    /// credentials) and serves blobs through a redirect, as Docker Hub does.
    async fn fake_registry(config: Vec<u8>, manifest: Vec<u8>) -> String {
        use http_body_util::Full;
        use hyper::body::Bytes;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding");
        let addr = listener.local_addr().expect("address").to_string();
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (config, manifest, realm) = (config.clone(), manifest.clone(), realm.clone());
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<Incoming>| {
                        let header = |name| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        let authorization = header(hyper::header::AUTHORIZATION);
                        let path = request.uri().path().to_string();
                        let query = request.uri().query().unwrap_or_default().to_string();
                        let mut response = hyper::Response::builder();
                        let body: Vec<u8> = if path == "/token" {
                            assert_eq!(
                                authorization,
                                format!("Basic {}", crate::image::auth::base64_encode(b"me:pw"))
                            );
                            assert!(query.contains("scope=repository%3Aapp%3Apull"), "{query}");
                            assert!(query.contains("service=fake"), "{query}");
                            br#"{"access_token": "t0k"}"#.to_vec()
                        } else if path == "/storage/config" {
                            config.clone()
                        } else if authorization != "Bearer t0k" {
                            response = response.status(401).header(
                            WWW_AUTHENTICATE,
                            format!(r#"Bearer realm="{realm}",service="fake",scope="repository:app:pull""#),
                        );
                            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec()
                        } else if path == "/v2/app/manifests/1"
                            || path.starts_with("/v2/app/manifests/sha256:")
                        {
                            manifest.clone()
                        } else if path.starts_with("/v2/app/blobs/") {
                            response = response.status(307).header(LOCATION, "/storage/config");
                            Vec::new()
                        } else {
                            response = response.status(404);
                            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec()
                        };
                        std::future::ready(response.body(Full::new(Bytes::from(body))))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(crate::image::http::Io::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn token_auth_and_redirected_blobs() {
        let config = br#"{"config": {"Cmd": ["true"]}}"#.to_vec();
        let manifest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "{}"}},
                "layers": []}}"#,
            digest_of(&config)
        )
        .into_bytes();
        let addr = fake_registry(config.clone(), manifest.clone()).await;
        let client = Client::default();
        let base = Url::parse(&format!("http://{addr}")).expect("url");
        let credentials = [Credential {
            registry: addr.clone(),
            username: "me".into(),
            password: "pw".into(),
        }];

        let mut session = Session::new(&client, base.clone(), "app", &credentials);
        let resolved = session.manifest("1").await.expect("resolves");
        assert_eq!(resolved.digest, digest_of(&manifest));
        let blob = session.blob(&resolved.config.digest).await.expect("blob");
        let body = blob.collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], &config[..]);

        let err = session.manifest("2").await.expect_err("unknown");
        assert_eq!(err.to_string(), "manifest unknown (404 Not Found)");
        // A registry answering a digest with other content is caught.
        let asked = digest_of(b"something else");
        let err = session.manifest(&asked).await.expect_err("not that digest");
        assert!(
            matches!(&err, FetchError::Digest { expected, .. } if *expected == asked),
            "{err}"
        );
        assert!(err.to_string().contains(&digest_of(&manifest)), "{err}");
    }
}
