//! The kubelet's server, as kubectl reaches a kubelet: a container's logs
//! (`GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//! `previous`, `tailLines`, `sinceSeconds`) read from its CRI log files,
//! and a command run in it (`POST /exec/{namespace}/{pod}/{container}` with
//! one `command` parameter per word; the output in the body, the exit code
//! in `X-Exit-Code`). Plain HTTP on the node's address, which is loopback
//! unless the configuration says otherwise.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

use orca_core::watch::ObjectKey;

use crate::agent::{Disk, Kubelet};
use crate::runtime;
use crate::sandbox::PodDir;

type Body = BoxBody<Bytes, Infallible>;

/// How long an exec'd command may run.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds the server's address, so a port in use stops the kubelet at start.
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("listening on {addr}: {e}")))?;
    tracing::info!(%addr, "kubelet server listening");
    Ok(listener)
}

/// Serves on `listener` until `stopped` turns true.
pub(crate) async fn serve(
    kubelet: Arc<Kubelet>,
    listener: tokio::net::TcpListener,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let kubelet = Arc::clone(&kubelet);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let kubelet = Arc::clone(&kubelet);
                        async move { Ok::<_, Infallible>(handle(&kubelet, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut body = message.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a valid response")
}

/// `%XX` and `+` decoded, as a query string encodes them.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(request: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

async fn handle(kubelet: &Kubelet, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let params = query(&request);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let flag = |name: &str| matches!(param(name), Some("true" | "1" | ""));
    let (action, namespace, pod, container) = match parts.as_slice() {
        [action, namespace, pod, container] => (*action, *namespace, *pod, *container),
        _ => return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    let Some(found) = kubelet.pods.get(&ObjectKey::new(Some(namespace), pod)) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on node {}", kubelet.node),
        );
    };
    let uid = found.metadata.uid.clone().unwrap_or_default();
    let dir = PodDir::new(&kubelet.config.state_dir, &uid);
    let attempts = dir.attempts(container);
    let Some(&latest) = attempts.last() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {namespace}/{pod} has not started"),
        );
    };
    match (action, request.method().as_str()) {
        ("containerLogs", "GET") => {
            let attempt = if flag("previous") {
                match latest.checked_sub(1) {
                    Some(previous) => previous,
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "previous terminated container {container:?} in pod {namespace}/{pod} not found"
                            ),
                        );
                    }
                }
            } else {
                latest
            };
            let options = LogOptions {
                follow: flag("follow") && attempt == latest,
                tail: param("tailLines").and_then(|v| v.parse().ok()),
                since: param("sinceSeconds")
                    .and_then(|v| v.parse::<i64>().ok())
                    .map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s)),
            };
            let log = kubelet.log_path(&found, container, attempt);
            let running_dir = dir.attempt(container, attempt);
            logs(log, running_dir, options).await
        }
        ("exec", "POST") => {
            let command: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect();
            if command.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "exec: give the command as command=WORD parameters",
                );
            }
            let (_, Disk::Running(_, running)) = Disk::read(&dir, container) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("container {container:?} in pod {namespace}/{pod} is not running"),
                );
            };
            match kubelet
                .runtime
                .exec(&running.id, &command, EXEC_TIMEOUT)
                .await
            {
                Ok((code, output)) => Response::builder()
                    .header("x-exit-code", code.to_string())
                    .body(Full::new(Bytes::from(output)).boxed())
                    .expect("a valid response"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("exec: {e}")),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {} {path}", request.method()),
        ),
    }
}

struct LogOptions {
    follow: bool,
    tail: Option<usize>,
    since: Option<jiff::Timestamp>,
}

/// The message of a CRI log line (`<time> <stream> <P|F> <message>`), with
/// its newline unless it is a partial one, and whether `since` lets it by.
fn message(line: &str, since: Option<jiff::Timestamp>) -> Option<String> {
    let mut fields = line.splitn(4, ' ');
    let time = fields.next()?;
    let _stream = fields.next()?;
    let tag = fields.next()?;
    let text = fields.next().unwrap_or_default();
    if let Some(since) = since
        && time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
    {
        return None;
    }
    Some(if tag == "P" {
        text.to_string()
    } else {
        format!("{text}\n")
    })
}

/// The rotated files of `log` (oldest first), then `log` itself.
pub(crate) fn log_files(log: &Path) -> Vec<PathBuf> {
    let name = log
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let prefix = format!("{name}.");
    let dir = log.parent().unwrap_or(Path::new("."));
    let mut rotated: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|n| dir.join(n)).collect();
    all.push(log.to_path_buf());
    all
}

async fn logs(log: PathBuf, attempt: PathBuf, options: LogOptions) -> Response<Body> {
    let mut lines: Vec<String> = Vec::new();
    // Where following goes on: the end of the live file's last whole line
    // as read here, not its size a moment later (a line written between
    // the two would be skipped).
    let mut read_to = 0;
    for file in log_files(&log) {
        let bytes = tokio::fs::read(&file).await.unwrap_or_default();
        let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if file == log {
            read_to = whole as u64;
        }
        let text = String::from_utf8_lossy(&bytes[..whole]);
        lines.extend(text.lines().filter_map(|l| message(l, options.since)));
    }
    if let Some(tail) = options.tail {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let head = lines.concat();
    if !options.follow {
        return Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(head)).boxed())
            .expect("a valid response");
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        if tx.send(Ok(Frame::data(Bytes::from(head)))).await.is_err() {
            return;
        }
        follow(&log, &attempt, read_to, &tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

/// Sends what is appended to `log` from `offset` on, until the container
/// (attempt directory `attempt`) has ended and all it wrote is sent, or
/// its pod was removed (the directory is gone, its exit record with it), or
/// the client has gone. A rotation starts the new file from its start.
async fn follow(
    log: &Path,
    attempt: &Path,
    mut offset: u64,
    tx: &mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    let mut pending = String::new();
    loop {
        let ended = runtime::exit_record(attempt).is_some() || !attempt.exists();
        let size = tokio::fs::metadata(log).await.map_or(0, |m| m.len());
        if size < offset {
            offset = 0;
        }
        if size > offset
            && let Ok(mut file) = tokio::fs::File::open(log).await
            && file.seek(io::SeekFrom::Start(offset)).await.is_ok()
        {
            let mut chunk = Vec::new();
            if file.read_to_end(&mut chunk).await.is_ok() {
                offset += chunk.len() as u64;
                pending.push_str(&String::from_utf8_lossy(&chunk));
                let complete = pending.rfind('\n').map_or(0, |i| i + 1);
                let out: String = pending[..complete]
                    .lines()
                    .filter_map(|l| message(l, None))
                    .collect();
                pending.drain(..complete);
                if !out.is_empty() && tx.send(Ok(Frame::data(Bytes::from(out)))).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if ended || tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
