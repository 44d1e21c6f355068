//! `orca logs POD` and `orca exec POD -- CMD`: asked of the kubelet of the
//! pod's node, found through the Node object (its InternalIP and kubelet
//! port), as kubectl reaches a kubelet.

use std::io::Write;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use orca_core::api::{Node, Pod};
use orca_core::store::{DEFAULT_NAMESPACE, Store};

/// Arguments of `orca logs`.
#[derive(clap::Args)]
pub struct Args {
    /// The pod.
    pub pod: String,
    /// The container; required when the pod has more than one.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Keep printing what the container writes until it ends.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous attempt's logs (before its last restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Only lines newer than this (`10s`, `5m`, `1h`).
    #[arg(long)]
    pub since: Option<orca_core::config::Duration>,
}

/// Arguments of `orca exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// The pod.
    pub pod: String,
    /// The container; by default the pod's first.
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// The namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The pod, the container named (or the only one) and the kubelet's
/// address.
async fn locate(
    store: &Store,
    namespace: &str,
    name: &str,
    container: Option<&str>,
    first_by_default: bool,
) -> anyhow::Result<(String, String)> {
    let pod = store
        .api::<Pod>(namespace)
        .get_opt(name)
        .await?
        .with_context(|| format!("pods \"{name}\" not found in namespace {namespace}"))?;
    let spec = pod.spec.unwrap_or_default();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let container = match container {
        Some(c) => {
            let known = spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
                .any(|k| k.name == c);
            if !known {
                bail!(
                    "container {c} is not valid for pod {name}: choose one of [{}]",
                    names.join(" ")
                );
            }
            c.to_string()
        }
        None if names.len() == 1 || (first_by_default && !names.is_empty()) => names[0].to_string(),
        None => bail!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            names.join(" ")
        ),
    };
    let node_name = spec
        .node_name
        .with_context(|| format!("pod {namespace}/{name} is not scheduled to a node yet"))?;
    let node = store.cluster_api::<Node>().get(&node_name).await?;
    let status = node.status.unwrap_or_default();
    let address = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .with_context(|| format!("node {node_name} reports no InternalIP"))?;
    let port = status
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .with_context(|| format!("node {node_name} runs no kubelet server"))?;
    let host = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    Ok((container, host))
}

/// `%`-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one request to the kubelet at `host` and copies the body to
/// stdout as it arrives; the exit-code header, if any.
async fn request(host: &str, method: &str, path: &str) -> anyhow::Result<Option<i32>> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot reach the kubelet at {host}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("kubelet connection")?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let response = sender
        .send_request(request)
        .await
        .context("kubelet request")?;
    let status = response.status();
    let code = response
        .headers()
        .get("x-exit-code")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("{}", String::from_utf8_lossy(&text).trim());
    }
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.context("reading from the kubelet")?.into_data() {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(code)
}

/// Runs `orca logs`.
pub async fn logs(args: Args, store: Store) -> anyhow::Result<bool> {
    let namespace = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let (container, host) = locate(
        &store,
        namespace,
        &args.pod,
        args.container.as_deref(),
        false,
    )
    .await?;
    let mut query = vec![];
    if args.follow {
        query.push("follow=true".to_string());
    }
    if args.previous {
        query.push("previous=true".to_string());
    }
    if let Some(n) = args.tail {
        query.push(format!("tailLines={n}"));
    }
    if let Some(since) = args.since {
        query.push(format!("sinceSeconds={}", since.0.as_secs().max(1)));
    }
    let path = format!(
        "/containerLogs/{namespace}/{}/{container}?{}",
        args.pod,
        query.join("&")
    );
    request(&host, "GET", &path).await?;
    Ok(true)
}

/// Runs `orca exec`; exits with the command's exit code.
pub async fn exec(args: ExecArgs, store: Store) -> anyhow::Result<bool> {
    let namespace = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let (container, host) = locate(
        &store,
        namespace,
        &args.pod,
        args.container.as_deref(),
        true,
    )
    .await?;
    let query: Vec<String> = args
        .command
        .iter()
        .map(|word| format!("command={}", encode(word)))
        .collect();
    let path = format!(
        "/exec/{namespace}/{}/{container}?{}",
        args.pod,
        query.join("&")
    );
    match request(&host, "POST", &path).await? {
        Some(0) | None => Ok(true),
        Some(code) => std::process::exit(code),
    }
}
