//! The ingress proxy as users run it (`orca ingress --config FILE`), against
//! real backends on loopback: routing, forwarding headers, limits and
//! smuggling defences, upstream failures and retries, reload, TLS by SNI,
//! WebSocket, HTTP/2 and h2c clients and upstreams in every pairing, the
//! access log; in cluster mode, routes and certificates from a real etcd.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// Beside this file's helpers, not in `tests/`, where cargo would build it
// as a test of its own.
#[path = "ingress/smuggling.rs"]
mod smuggling;

/// A backend: answers every request with its name, the path and the
/// forwarding headers it saw; `/status/N` answers N, `/slow` waits 3 s,
/// `/ws` upgrades and echoes, `/chunked` answers in chunks, `/early` answers
/// 413 without reading the body and closes, `/echo` returns
/// the request body. It counts the connections it accepted and those open
/// now.
struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, HashMap<String, String>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let first = lines.next()?.to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Some((first, headers));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn read_exact_from(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    Some(buf.drain(..n).collect())
}

impl Backend {
    fn start(name: &'static str) -> Self {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        Self::serve(name, listener)
    }

    fn serve(name: &'static str, listener: StdListener) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, r, log) = (stop.clone(), requests.clone(), seen.clone());
        let (a, o) = (accepted.clone(), open.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, r, log) = (s.clone(), r.clone(), log.clone());
                        a.fetch_add(1, Ordering::SeqCst);
                        o.fetch_add(1, Ordering::SeqCst);
                        let o = o.clone();
                        thread::spawn(move || {
                            Self::connection(name, stream, &s, &r, &log);
                            o.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            stop,
            requests,
            seen,
            accepted,
            open,
        }
    }

    fn connection(
        name: &str,
        mut stream: TcpStream,
        stop: &AtomicBool,
        requests: &AtomicUsize,
        seen: &Mutex<Vec<String>>,
    ) {
        stream.set_nonblocking(false).unwrap();
        let mut buf = Vec::new();
        while let Some((first, headers)) = read_head(&mut stream, &mut buf) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            requests.fetch_add(1, Ordering::Relaxed);
            let path = first.split(' ').nth(1).unwrap_or("/").to_string();
            if path == "/early" {
                // Refuses the body unread and closes at once: a reset,
                // with the body still coming.
                let _ = stream.write_all(
                    b"HTTP/1.1 413 X\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
                );
                return;
            }
            seen.lock().unwrap().push(format!(
                "{first} | host={}",
                headers.get("host").cloned().unwrap_or_default()
            ));
            let body = if headers
                .get("transfer-encoding")
                .is_some_and(|t| t == "chunked")
            {
                read_chunked(&mut stream, &mut buf).unwrap_or_default()
            } else {
                match headers.get("content-length").and_then(|v| v.parse().ok()) {
                    Some(n) => read_exact_from(&mut stream, &mut buf, n).unwrap_or_default(),
                    None => Vec::new(),
                }
            };
            // A HEAD answer has the length of the body it leaves out.
            let head_only = first.starts_with("HEAD ");
            let reply = |stream: &mut TcpStream, status: u16, body: &[u8]| {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).is_ok()
                    && (head_only || stream.write_all(body).is_ok())
            };
            let ok = if let Some(code) = path.strip_prefix("/status/") {
                reply(&mut stream, code.parse().unwrap_or(500), b"status")
            } else if path == "/slow" {
                thread::sleep(Duration::from_secs(3));
                reply(&mut stream, 200, b"slow")
            } else if path == "/echo" {
                reply(&mut stream, 200, &body)
            } else if path == "/stall" {
                // Half the body, then nothing until the proxy gives up.
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello");
                let _ = stream.read(&mut [0u8; 1]);
                false
            } else if path == "/chunked" {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                    .is_ok()
            } else if path == "/ws" {
                let _ = stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
                // Echo raw bytes until the client closes.
                let mut chunk = [0u8; 1024];
                if !buf.is_empty() {
                    let _ = stream.write_all(&buf);
                }
                while let Ok(n) = stream.read(&mut chunk) {
                    if n == 0 || stream.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                return;
            } else {
                let text = format!(
                    "{name} {path} xff={} xfp={} fwd={} rid={}",
                    headers.get("x-forwarded-for").cloned().unwrap_or_default(),
                    headers
                        .get("x-forwarded-proto")
                        .cloned()
                        .unwrap_or_default(),
                    headers.get("forwarded").cloned().unwrap_or_default(),
                    headers.get("x-request-id").map_or("none", |_| "set"),
                );
                let cookie = headers
                    .get("cookie")
                    .map(|c| format!(" cookie={c}"))
                    .unwrap_or_default();
                reply(&mut stream, 200, (text + &cookie).as_bytes())
            };
            if !ok
                || headers
                    .get("connection")
                    .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            {
                return;
            }
        }
    }

    fn kill(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP/2 backend speaking h2c with prior knowledge, as gRPC servers
/// do: answers `NAME METHOD PATH authority=.. xff=.. body=..`; `/stream`
/// answers "hello world" in two pieces without a length, then trailers;
/// `/status/N` answers N. It runs until the test process ends.
struct H2cBackend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

type TestBody = http_body_util::combinators::BoxBody<hyper::body::Bytes, std::convert::Infallible>;

impl H2cBackend {
    fn start(name: &'static str) -> Self {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((stream, _)) = listener.accept().await {
                    let counter = counter.clone();
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        Self::answer(name, req)
                    });
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                    );
                }
            });
        });
        Self { addr, requests }
    }

    async fn answer(
        name: &str,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<TestBody>, std::convert::Infallible> {
        use http_body_util::{BodyExt, Full, StreamBody};
        use hyper::body::{Bytes, Frame};
        let path = req.uri().path().to_string();
        if path == "/stall" {
            // Some data, then nothing until the proxy resets the stream.
            let data = futures::stream::iter([Ok(Frame::data(Bytes::from("hello")))]);
            let body = StreamBody::new(futures::StreamExt::chain(data, futures::stream::pending()));
            return Ok(hyper::Response::new(body.boxed()));
        }
        if path == "/stream" {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("x-checksum", "1".parse().unwrap());
            let frames = vec![
                Ok(Frame::data(Bytes::from("hello"))),
                Ok(Frame::data(Bytes::from(" world"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures::stream::iter(frames));
            return Ok(hyper::Response::new(body.boxed()));
        }
        let status = path
            .strip_prefix("/status/")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let head = format!(
            "{name} {} {path} authority={} xff={} fwd={} body=",
            req.method(),
            req.uri().authority().map_or("", |a| a.as_str()),
            header("x-forwarded-for"),
            header("forwarded"),
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let text = head + &String::from_utf8_lossy(&body);
        let mut response = hyper::Response::new(Full::new(Bytes::from(text)).boxed());
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        Ok(response)
    }
}

/// A running `orca ingress` (or `orca master`), killed on drop.
struct Proxy {
    child: Child,
    config: PathBuf,
    dir: tempfile::TempDir,
    http: SocketAddr,
    admin: SocketAddr,
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Proxy {
    /// Starts the proxy; `config` may use `{http}`, `{https}`, `{admin}`
    /// and `{dir}` placeholders.
    fn start(config: &str) -> Self {
        Self::launch(config, "ingress", &[])
    }

    /// Starts `orca COMMAND` with `extra` arguments on `config`, as `start`.
    fn launch(config: &str, command: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, https, admin) = (free_port(), free_port(), free_port());
        let text = config
            .replace("{http}", &http.to_string())
            .replace("{https}", &https.to_string())
            .replace("{admin}", &admin.to_string())
            .replace("{dir}", dir.path().to_str().unwrap());
        let path = dir.path().join("ingress.yaml");
        std::fs::write(&path, text).unwrap();
        Self::spawn(path, dir, http, admin, command, extra)
    }

    /// Starts `orca COMMAND` on an already written configuration.
    fn spawn(
        path: PathBuf,
        dir: tempfile::TempDir,
        http: u16,
        admin: u16,
        command: &str,
        extra: &[&str],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_orca"))
            .args([
                command,
                "--config",
                path.to_str().unwrap(),
                "--workers",
                "2",
            ])
            .args(extra)
            .env_remove("ORCA_ETCD")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let proxy = Self {
            child,
            config: path,
            dir,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(proxy.http).is_err() {
            assert!(
                Instant::now() < deadline,
                "the proxy did not start listening"
            );
            thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn https(&self) -> SocketAddr {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let port = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("address: 127.0.0.1:"))
            .nth(1)
            .unwrap();
        SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap()))
    }

    /// Rewrites the configuration file and sends SIGHUP.
    fn reload(&self, config: &str) {
        let http_port = self.http.port().to_string();
        let admin_port = self.admin.port().to_string();
        let text = config
            .replace("{http}", &http_port)
            .replace("{admin}", &admin_port);
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        signal(self.child.id(), "HUP");
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed response.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// Reads one response (content-length or chunked or until close).
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Response> {
    let (first, headers) = read_head(stream, buf)?;
    let status = first.split(' ').nth(1)?.parse().ok()?;
    let body = if let Some(n) = headers.get("content-length").and_then(|v| v.parse().ok()) {
        read_exact_from(stream, buf, n)?
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        read_chunked(stream, buf)?
    } else if status < 200 || status == 204 || status == 304 {
        Vec::new()
    } else {
        let mut rest = std::mem::take(buf);
        let _ = stream.read_to_end(&mut rest);
        rest
    };
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Reads a chunked body (without trailers), returning its data.
fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        let data = read_exact_from(stream, buf, size + 2)?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&data[..size]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Sends raw bytes on a new connection and reads one response.
fn raw(addr: SocketAddr, request: &str) -> Option<Response> {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new())
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
    .expect("a response")
}

fn base_config(api: &Backend, web: &Backend) -> String {
    format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - host: example.com
    path: /api
    upstream: api
  - host: "*.example.org"
    path: /
    upstream: web
  - path: /exact
    path_type: Exact
    upstream: web
  - path: /
    headers: [{{name: x-canary, value: "1"}}]
    upstream: api
upstreams:
  - name: api
    endpoints: ["{}"]
    request_timeout: 1s
  - name: web
    endpoints: ["{}"]
admin:
  address: 127.0.0.1:{{admin}}
"#,
        api.addr, web.addr
    )
}

#[test]
fn routes_by_host_path_and_header_with_forwarding_headers() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let proxy = Proxy::start(&base_config(&api, &web));

    let r = get(proxy.http, "example.com", "/api/users?id=1");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        "api /api/users?id=1 xff=127.0.0.1 xfp=http fwd=for=127.0.0.1;proto=http;host=example.com rid=set"
    );
    assert_eq!(
        get(proxy.http, "EXAMPLE.com:80", "/api")
            .body
            .split(' ')
            .next(),
        Some("api")
    );
    assert_eq!(
        get(proxy.http, "a.example.org", "/x")
            .body
            .split(' ')
            .next(),
        Some("web")
    );
    assert_eq!(
        get(proxy.http, "x", "/exact").body.split(' ').next(),
        Some("web")
    );
    assert_eq!(get(proxy.http, "x", "/exact/more").status, 404);
    assert_eq!(
        get(proxy.http, "example.com", "/apix").status,
        404,
        "prefixes match whole path elements"
    );
    let canary = raw(
        proxy.http,
        "GET /z HTTP/1.1\r\nHost: x\r\nX-Canary: 1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(canary.body.split(' ').next(), Some("api"));

    // The Host header reaches the backend as the client sent it.
    assert!(
        api.seen
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.ends_with("host=EXAMPLE.com:80"))
    );
    // An X-Forwarded-For from the client is extended, not replaced.
    let r = raw(proxy.http, "GET /api HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 203.0.113.9\r\nX-Request-Id: mine\r\n\r\n").unwrap();
    assert!(r.body.contains("xff=203.0.113.9, 127.0.0.1"), "{}", r.body);

    // Metrics count requests per route and status.
    let metrics = raw(proxy.admin, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .body;
    assert!(
        metrics.contains(r#"orca_ingress_requests_total{route="example.com/api",status="200"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"status="404""#), "{metrics}");
    let routes = served_routes(&proxy);
    assert_eq!(routes["count"], 4, "{routes}");
    assert_eq!(
        routes["routes"][3]["headers"],
        serde_json::json!([{"name": "x-canary", "value": "1"}]),
        "{routes}"
    );
    assert_eq!(
        routes["upstreams"][0],
        serde_json::json!({"name": "api", "endpoints": [api.addr.to_string()], "lb": "round_robin", "protocol": "http1"}),
        "{routes}"
    );
}

#[test]
fn keep_alive_pipelining_chunked_and_bodies() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let proxy = Proxy::start(&base_config(&api, &web));
    let mut s = connect(proxy.http);
    // Three pipelined requests in one write, answered in order on one connection.
    s.write_all(
        b"GET /api/1 HTTP/1.1\r\nHost: example.com\r\n\r\n\
          POST /api/../echo HTTP/1.1\r\nHost: x\r\nX-Canary: 1\r\nContent-Length: 5\r\n\r\nhello\
          GET /api/3 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let a = read_response(&mut s, &mut buf).unwrap();
    let b = read_response(&mut s, &mut buf).unwrap();
    let c = read_response(&mut s, &mut buf).unwrap();
    assert!(a.body.starts_with("api /api/1"), "{}", a.body);
    assert_eq!(b.status, 200);
    assert!(c.body.starts_with("api /api/3"), "{}", c.body);

    // A chunked request body and a chunked response pass through.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Canary: 1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").unwrap();
    let echoed = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(
        echoed.body, "abc",
        "the chunked body reached the backend whole"
    );
    s.write_all(b"GET /chunked HTTP/1.1\r\nHost: x\r\nX-Canary: 1\r\n\r\n")
        .unwrap();
    let chunked = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(chunked.body, "hello world");
    assert_eq!(
        chunked.headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );

    // HTTP/1.0 without keep-alive gets its answer and a close.
    let old = raw(proxy.http, "GET /api HTTP/1.0\r\nHost: example.com\r\n\r\n").unwrap();
    assert_eq!(old.status, 200);
    assert_eq!(
        old.headers.get("connection").map(String::as_str),
        Some("close")
    );
}

#[test]
fn malformed_and_smuggling_requests_are_refused_and_closed() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let proxy = Proxy::start(&base_config(&api, &web));
    let before = api.requests.load(Ordering::Relaxed) + web.requests.load(Ordering::Relaxed);
    let cases = [
        (
            "POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd",
            400,
        ),
        (
            "POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "POST /api HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            501,
        ),
        ("GET /api HTTP/1.1\r\n\r\n", 400),
        (
            "GET /api HTTP/1.1\r\nHost: example.com\r\nBad Header Name: x\r\n\r\n",
            400,
        ),
        ("NOT-HTTP\r\n\r\n", 400),
    ];
    for (request, status) in cases {
        let mut s = connect(proxy.http);
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).expect("an answer");
        assert_eq!(r.status, status, "{request:?}");
        assert_eq!(
            r.headers.get("connection").map(String::as_str),
            Some("close"),
            "{request:?}"
        );
        // And the connection is closed: nothing more is read.
        let mut rest = [0u8; 16];
        assert_eq!(s.read(&mut rest).unwrap_or(0), 0, "{request:?}");
    }
    let after = api.requests.load(Ordering::Relaxed) + web.requests.load(Ordering::Relaxed);
    assert_eq!(before, after, "no refused request reached a backend");

    // A malformed chunked body is refused too.
    let r = raw(
        proxy.http,
        "POST /api HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn limits_protect_the_proxy() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let config = base_config(&api, &web).replace(
        "admin:",
        "limits:\n  max_header_bytes: 2KiB\n  max_headers: 10\n  header_read_timeout: 1s\n  max_body_bytes: 1KiB\nadmin:",
    );
    let proxy = Proxy::start(&config);
    let big = format!(
        "GET /api HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    assert_eq!(raw(proxy.http, &big).unwrap().status, 431);
    let many: String = (0..12).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(
        raw(
            proxy.http,
            &format!("GET /api HTTP/1.1\r\nHost: example.com\r\n{many}\r\n")
        )
        .unwrap()
        .status,
        431
    );
    let body = raw(
        proxy.http,
        "POST /api HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5000\r\n\r\n",
    )
    .unwrap();
    assert_eq!(body.status, 413);

    // Slowloris: a head trickled in never completes; the proxy answers 408
    // and closes after the header timeout, whatever keep-alive allows.
    let mut s = connect(proxy.http);
    s.write_all(b"GET /api HTTP/1.1\r\nHost: exa").unwrap();
    let started = Instant::now();
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(r.status, 408);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn upstream_failures_choose_their_status() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /slow
    upstream: api
  - path: /dead
    upstream: dead
  - path: /
    upstream: both
upstreams:
  - name: api
    endpoints: ["{api}"]
    request_timeout: 1s
  - name: dead
    endpoints: ["{dead}"]
  - name: both
    endpoints: ["{dead}", "{web}"]
    outlier: {{consecutive_failures: 2, ejection: 60s}}
admin:
  address: 127.0.0.1:{{admin}}
"#,
        api = api.addr,
        web = web.addr,
    );
    let proxy = Proxy::start(&config);
    let started = Instant::now();
    let slow = get(proxy.http, "x", "/slow");
    assert_eq!(slow.status, 504, "a slow upstream times out");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "at the configured timeout, not the upstream's pace"
    );
    assert_eq!(
        get(proxy.http, "x", "/dead").status,
        502,
        "a refused connection is a bad gateway"
    );
    // A dead endpoint beside a live one: connect failures are retried on the
    // other endpoint, then the dead one is ejected.
    for _ in 0..20 {
        assert_eq!(get(proxy.http, "x", "/ok").status, 200);
    }
    let metrics = raw(proxy.admin, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .body;
    let failures: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("orca_ingress_upstream_failures_total{")
                && l.contains("upstream=\"both\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=3.0).contains(&failures),
        "ejected after a few failures, got {failures}"
    );
}

#[test]
fn a_backend_killed_mid_load_costs_few_requests_and_is_ejected() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: pair
upstreams:
  - name: pair
    endpoints: ["{}", "{}"]
    outlier: {{consecutive_failures: 3, ejection: 60s}}
admin:
  address: 127.0.0.1:{{admin}}
"#,
        a.addr, b.addr
    );
    let proxy = Proxy::start(&config);
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (ok, failed, stop, addr) = (ok.clone(), failed.clone(), stop.clone(), proxy.http);
            thread::spawn(move || {
                let mut s = connect(addr);
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").is_ok();
                    match read_response(&mut s, &mut buf).filter(|_| sent) {
                        Some(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        Some(_) => failed.fetch_add(1, Ordering::Relaxed),
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            s = connect(addr);
                            buf.clear();
                            0
                        }
                    };
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    a.kill();
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 100, "the load kept flowing: {ok} ok");
    // Only requests already in flight to the killed backend can fail.
    assert!(failed <= 8, "{failed} failed of {}", ok + failed);
    assert_eq!(
        get(proxy.http, "x", "/after").status,
        200,
        "the proxy is alive"
    );
}

#[test]
fn reload_swaps_routes_without_failing_a_request() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let config = base_config(&api, &web);
    let proxy = Proxy::start(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, bad, addr) = (stop.clone(), ok.clone(), bad.clone(), proxy.http);
            thread::spawn(move || {
                let mut s = connect(addr);
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(b"GET /api/x HTTP/1.1\r\nHost: example.com\r\n\r\n")
                        .unwrap();
                    match read_response(&mut s, &mut buf) {
                        Some(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => bad.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // The api route now goes to the web backend.
    proxy.reload(&config.replace(
        "    upstream: api\n  - host: \"*.example.org\"",
        "    upstream: web\n  - host: \"*.example.org\"",
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(proxy.http, "example.com", "/api")
        .body
        .starts_with("web")
    {
        assert!(Instant::now() < deadline, "the reload took effect");
        thread::sleep(Duration::from_millis(20));
    }
    // A broken file is refused; the running routes stay.
    proxy.reload("listeners: [}");
    thread::sleep(Duration::from_millis(300));
    assert!(
        get(proxy.http, "example.com", "/api")
            .body
            .starts_with("web")
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(
        bad.lock().unwrap().is_empty(),
        "failed during reload: {:?}",
        bad.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
}

#[test]
fn redirect_and_websocket() {
    let api = Backend::start("api");
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - host: secure.example.com
    redirect_https: true
  - path: /ws
    upstream: api
upstreams:
  - name: api
    endpoints: ["{}"]
"#,
        api.addr
    );
    let proxy = Proxy::start(&config);
    let r = get(proxy.http, "secure.example.com", "/login?next=/");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://secure.example.com/login?next=/")
    );

    let mut s = connect(proxy.http);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(
        r.headers.get("upgrade").map(String::as_str),
        Some("websocket")
    );
    for msg in [&b"ping"[..], b"frames pass through untouched"] {
        s.write_all(msg).unwrap();
        let echoed = read_exact_from(&mut s, &mut buf, msg.len()).unwrap();
        assert_eq!(echoed, msg);
    }
}

fn openssl_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed for TLS tests (apt-get install openssl)");
    assert!(status.success());
    (cert, key)
}

/// The certificate a TLS server presents for `sni`, as text from openssl.
fn presented_subject(addr: SocketAddr, sni: &str) -> String {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
            "-brief",
            "-ign_eof",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET /tls HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn tls_by_sni_and_certificate_rotation() {
    let api = Backend::start("api");
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = openssl_cert(dir.path(), "a.example.com");
    let (b_cert, b_key) = openssl_cert(dir.path(), "b.example.com");
    let https = free_port();
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
  - name: websecure
    address: 127.0.0.1:{https}
    tls:
      certificates:
        - cert: {}
          key: {}
        - cert: {}
          key: {}
routes:
  - path: /
    upstream: api
upstreams:
  - name: api
    endpoints: ["{}"]
"#,
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display(),
        api.addr
    );
    let proxy = Proxy::start(&config);
    let tls = proxy.https();
    // A client stalled halfway through its ClientHello (a record header
    // announcing 512 bytes, then 3 of them) holds up no other handshake,
    // nor do several handshakes at once hold up each other.
    let mut stalled = connect(tls);
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .unwrap();
    let together: Vec<_> = (0..8)
        .map(|_| thread::spawn(move || presented_subject(tls, "b.example.com")))
        .collect();
    for t in together {
        let b = t.join().unwrap();
        assert!(b.contains("api /tls xff=127.0.0.1 xfp=https"), "{b}");
    }
    // Still open, so the others did not wait for its 10 s handshake timeout.
    stalled
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let waiting = stalled.read(&mut [0; 1]).map_err(|e| e.kind());
    assert!(
        matches!(
            waiting,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the stalled handshake is still waiting: {waiting:?}"
    );
    let a = presented_subject(tls, "a.example.com");
    assert!(
        a.contains("CN = a.example.com") || a.contains("CN=a.example.com"),
        "{a}"
    );
    assert!(a.contains("api /tls xff=127.0.0.1 xfp=https"), "{a}");
    let b = presented_subject(tls, "b.example.com");
    assert!(
        b.contains("CN = b.example.com") || b.contains("CN=b.example.com"),
        "{b}"
    );
    assert!(b.contains("TLSv1.3"), "{b}");

    // Rotation: the certificate files change, a reload picks them up.
    assert_eq!(served_pem(tls, "a.example.com"), pem(&a_cert));
    let renewed = dir.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (c_cert, c_key) = openssl_cert(&renewed, "a.example.com");
    std::fs::copy(&c_cert, &a_cert).unwrap();
    std::fs::copy(&c_key, &a_key).unwrap();
    proxy.reload(&std::fs::read_to_string(&proxy.config).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_pem(tls, "a.example.com") != pem(&c_cert) {
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is served"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The PEM of the certificate a TLS server presents for `sni`.
fn served_pem(addr: SocketAddr, sni: &str) -> String {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text
        .find("-----END CERTIFICATE-----")
        .expect("a certificate")
        + "-----END CERTIFICATE-----".len();
    text[start..end].to_string()
}

/// Writes an object straight into etcd. Used for EndpointSlices only:
/// Kubernetes (and so `orca apply`) refuses loopback endpoint addresses,
/// while these tests may only run backends on loopback.
async fn put_raw(etcd: &orca_testkit::Etcd, key: &str, value: serde_json::Value) {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client.put(key, value.to_string(), None).await.unwrap();
}

/// Sets the endpoints of Service `web`: `backends`, each ready or not.
fn put_web_slice(etcd: &orca_testkit::Etcd, backends: &[(&Backend, bool)]) {
    runtime().block_on(put_raw(
        etcd,
        "/registry/endpointslices/default/web-abc",
        slice("web", backends),
    ));
}

fn slice(service: &str, backends: &[(&Backend, bool)]) -> serde_json::Value {
    let endpoints: Vec<_> = backends
        .iter()
        .map(|(b, ready)| serde_json::json!({"addresses": [b.addr.ip().to_string()], "conditions": {"ready": ready}}))
        .collect();
    let port = backends.first().map_or(0, |(b, _)| b.addr.port());
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn apply(etcd: &orca_testkit::Etcd, yaml: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(["apply", "-f", "-"])
        .env("ORCA_ETCD", etcd.endpoint())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until `check` holds for the answer to GET host/path.
fn eventually(
    proxy: &Proxy,
    host: &str,
    path: &str,
    what: &str,
    check: impl Fn(&Response) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(proxy.http, host, path);
        if check(&r) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {} {}",
            r.status,
            r.body
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Service `web` (port 80, named `http`) and the Ingress `web` of class
/// `orca` that sends `web.example.com` to it.
fn web_ingress() -> String {
    r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: 8080
---"#
        .to_string()
        + &ingress_of_class("web", "orca", "web.example.com")
}

/// The Ingress NAME of class CLASS, sending HOST to Service `web`.
fn ingress_of_class(name: &str, class: &str, host: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
spec:
  ingressClassName: {class}
  rules:
    - host: {host}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: web
                port:
                  number: 80
"#
    )
}

/// A cluster-mode configuration: a plain listener and the admin server.
const CLUSTER_CONFIG: &str = "listeners:\n  - name: web\n    address: 127.0.0.1:{http}\nadmin:\n  address: 127.0.0.1:{admin}\n";

#[test]
fn cluster_mode_follows_ingresses_services_and_endpoints() {
    let etcd = orca_testkit::Etcd::start();
    let (one, two) = (Backend::start("one"), Backend::start("two"));
    apply(
        &etcd,
        &(web_ingress() + "---" + &ingress_of_class("someone-elses", "nginx", "other.example.com")),
    );
    put_web_slice(&etcd, &[(&one, true)]);
    let proxy = Proxy::launch(CLUSTER_CONFIG, "ingress", &["--etcd", &etcd.endpoint()]);

    eventually(
        &proxy,
        "web.example.com",
        "/x",
        "routes from the Ingress",
        |r| r.body.starts_with("one /x"),
    );
    // The admin view shows the routes served, from the cluster.
    let routes = served_routes(&proxy);
    assert_eq!(routes["count"], 1, "{routes}");
    assert_eq!(routes["routes"][0]["host"], "web.example.com", "{routes}");
    assert_eq!(
        routes["routes"][0]["name"], "default/web/rules[0].paths[0]",
        "{routes}"
    );
    assert_eq!(routes["upstreams"][0]["name"], "default/web:80", "{routes}");
    assert_eq!(
        routes["upstreams"][0]["endpoints"],
        serde_json::json!([one.addr.to_string()]),
        "{routes}"
    );
    assert_eq!(
        get(proxy.http, "other.example.com", "/").status,
        404,
        "another class is not ours"
    );

    // A new endpoint set is served without a restart, on the same connection.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    put_web_slice(&etcd, &[(&two, true), (&one, false)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        s.write_all(b"GET /y HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
            .unwrap();
        let r =
            read_response(&mut s, &mut buf).expect("the open connection survives route changes");
        if r.body.starts_with("two /y") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new endpoint is served: {}",
            r.body
        );
        thread::sleep(Duration::from_millis(20));
    }

    // No ready endpoint: 503. The Ingress gone: 404.
    put_web_slice(&etcd, &[(&two, false)]);
    eventually(&proxy, "web.example.com", "/", "no ready endpoint", |r| {
        r.status == 503
    });
    let routes = served_routes(&proxy);
    assert_eq!(
        routes["upstreams"][0]["endpoints"],
        serde_json::json!([]),
        "{routes}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(["delete", "ingress", "web"])
        .env("ORCA_ETCD", etcd.endpoint())
        .output()
        .unwrap();
    assert!(out.status.success());
    eventually(&proxy, "web.example.com", "/", "the Ingress removed", |r| {
        r.status == 404
    });
    assert_eq!(served_routes(&proxy)["count"], 0);
}

/// The admin `/routes` view.
fn served_routes(proxy: &Proxy) -> serde_json::Value {
    let r = raw(proxy.admin, "GET /routes HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn grpc_over_h2_end_to_end() {
    // etcd is a real gRPC server (h2c): put, get and a streaming watch go
    // through the proxy with their trailers (grpc-status) intact.
    let etcd = orca_testkit::Etcd::start();
    let upstream = etcd.endpoint().trim_start_matches("http://").to_string();
    let config = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:{{http}}\nroutes:\n  - path: /\n    upstream: etcd\nupstreams:\n  - name: etcd\n    endpoints: [\"{upstream}\"]\n    protocol: h2c\n"
    );
    let proxy = Proxy::start(&config);
    let rt = runtime();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([format!("http://{}", proxy.http)], None)
            .await
            .unwrap();
        let mut watch = client
            .watch(
                "/grpc/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        client
            .put("/grpc/a", "through the proxy", None)
            .await
            .unwrap();
        let got = client.get("/grpc/a", None).await.unwrap();
        assert_eq!(got.kvs()[0].value_str().unwrap(), "through the proxy");
        let event = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let msg = watch.message().await.unwrap().unwrap();
                if let Some(e) = msg.events().first() {
                    return e.kv().unwrap().key_str().unwrap().to_string();
                }
            }
        })
        .await
        .expect("the watch stream delivers through the proxy");
        assert_eq!(event, "/grpc/a");
        // A gRPC error status travels in trailers and arrives as such.
        let err = client.lease_revoke(12345).await.unwrap_err();
        assert!(err.to_string().contains("lease not found"), "{err}");
    });
}

#[test]
fn h2_clients_reach_http1_upstreams() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let proxy = Proxy::start(&base_config(&api, &web));
    let rt = runtime();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("h2c with prior knowledge is accepted");
        tokio::spawn(conn);
        // Several streams on one connection, each routed on its own.
        for (host, path, backend) in [
            ("example.com", "/api/h2", "api"),
            ("a.example.org", "/w", "web"),
            ("example.com", "/api/again", "api"),
        ] {
            let req = hyper::Request::get(format!("http://{host}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(
                body.starts_with(&format!("{backend} {path} xff=127.0.0.1 xfp=http")),
                "{body}"
            );
            assert!(
                body.contains(&format!("fwd=for=127.0.0.1;proto=http;host={host} ")),
                "{body}"
            );
        }
        let req = hyper::Request::get("http://nowhere.test/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 404);

        // HTTP/2 may split cookies; HTTP/1.1 gets them as one field.
        let req = hyper::Request::get("http://a.example.org/c")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send.send_request(req).await.unwrap().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).ends_with(" cookie=a=1; b=2"),
            "{body:?}"
        );
        // A chunked answer reaches the client as its data alone.
        let req = hyper::Request::get("http://a.example.org/chunked")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello world");
        // No CONNECT, and no target but an absolute path.
        let req = hyper::Request::connect("a.example.org:443")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 400);
        // A HEAD answer has no body, and its connection is reused.
        let req = hyper::Request::head("http://a.example.org/h")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    });
    // A body of unknown length goes up chunked, a declared one as it is,
    // and large ones whole.
    let big = vec![b'y'; 300_000];
    for declared in [false, true] {
        let (status, echoed) = rt.block_on(h2_post(
            proxy.http,
            "a.example.org",
            &[b"abc", b"defg", &big],
            declared,
        ));
        assert_eq!(
            (status, echoed),
            (200, 7 + big.len()),
            "declared {declared}"
        );
    }
    // One request at a time: the streams above and the posts shared a
    // handful of upstream connections, returned to the pool after each.
    assert!(
        web.accepted.load(Ordering::SeqCst) <= 3,
        "web connections: {}",
        web.accepted.load(Ordering::SeqCst)
    );
}

#[test]
fn an_answer_before_the_whole_body_reaches_clients_of_either_version() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let proxy = Proxy::start(&base_config(&api, &web));
    // The upstream answers 413 unread and closes while the body is still
    // coming; more body than the sockets buffer.
    let big = vec![b'z'; 7 << 20];
    let early = hyper::Request::post("http://a.example.org/early");
    assert_eq!(
        runtime().block_on(h2_send(proxy.http, early, &[&big], true)),
        (413, 5)
    );
    let mut s = connect(proxy.http);
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: a.example.org\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    // The proxy stops reading the body and closes: the writer may fail.
    let sending = thread::spawn(move || {
        let _ = writer.write_all(&big);
    });
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!((r.status, r.body.as_str()), (413, "early"));
    let _ = s.shutdown(std::net::Shutdown::Both);
    sending.join().unwrap();
}

/// Waits (generously) until `what` holds, as the pool's expiry ticks.
fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_upstream_connections_are_reused_then_closed_after_the_idle_timeout() {
    let backend = Backend::start("b");
    let proxy = Proxy::start(&format!(
        r#"
upstreams:
  - name: b
    endpoints: ["{}"]
    idle_timeout: 3s
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: b
"#,
        backend.addr
    ));
    let open = || backend.open.load(Ordering::SeqCst);
    let accepted = || backend.accepted.load(Ordering::SeqCst);
    let rt = runtime();
    rt.block_on(async {
        let send = h2c(proxy.http).await;
        let round = |path: &'static str| {
            let requests = (0..20).map(|_| h2_ok(send.clone(), format!("http://a.test{path}")));
            futures::future::join_all(requests)
        };
        // Twenty concurrent streams need twenty HTTP/1.1 connections, and
        // the pool keeps them all for the next twenty: none is reopened.
        round("/slow").await;
        assert_eq!(accepted(), 20);
        round("/fast").await;
        assert_eq!(accepted(), 20, "the idle connections were reused");
        // The client stays connected; the idle upstream connections close.
        wait_until(
            "idle upstream connections closed after idle_timeout",
            || open() == 0,
        );
        round("/again").await;
        assert!(accepted() > 20, "expired connections are not reused");
    });
    wait_until("idle upstream connections closed again", || open() == 0);
    // HTTP/1.1 clients' upstream connections idle out alike.
    let before = accepted();
    assert_eq!(get(proxy.http, "a.test", "/h1").status, 200);
    assert_eq!(accepted(), before + 1);
    wait_until("an HTTP/1.1 client's upstream connection closed", || {
        open() == 0
    });
}

#[test]
fn tls_negotiates_h2_by_alpn() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path(), "h2.example.com");
    let https = free_port();
    let config = base_config(&api, &web).replace(
        "routes:",
        &format!(
            "  - name: websecure\n    address: 127.0.0.1:{https}\n    tls:\n      certificates:\n        - cert: {}\n          key: {}\nroutes:",
            cert.display(),
            key.display()
        ),
    );
    let proxy = Proxy::start(&config);
    let negotiated = |alpn: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{https}"),
                "-servername",
                "h2.example.com",
                "-alpn",
                alpn,
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("openssl s_client");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("ALPN protocol"))
            .map(str::to_string)
    };
    assert_eq!(
        negotiated("h2,http/1.1").as_deref(),
        Some("ALPN protocol: h2")
    );
    assert_eq!(
        negotiated("http/1.1").as_deref(),
        Some("ALPN protocol: http/1.1")
    );
    drop(proxy);
}

#[test]
fn active_health_checks_keep_traffic_off_dead_endpoints() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: pair
upstreams:
  - name: pair
    endpoints: ["{}", "{}"]
    retries: {{attempts: 0}}
    health_check: {{path: /healthz, interval: 100ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 1}}
admin:
  address: 127.0.0.1:{{admin}}
"#,
        a.addr, b.addr
    );
    let proxy = Proxy::start(&config);
    a.kill();
    // Let the checks find out; no request has been sent to `a` meanwhile.
    thread::sleep(Duration::from_millis(800));
    for _ in 0..20 {
        let r = get(proxy.http, "x", "/");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.starts_with("b "), "{}", r.body);
    }
    let metrics = raw(proxy.admin, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .body;
    assert!(
        !metrics.contains("orca_ingress_upstream_failures_total{"),
        "no request tried the dead endpoint: {metrics}"
    );
}

#[test]
fn shutdown_drains_requests_in_flight() {
    let slow = Backend::start("slow");
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: slow
upstreams:
  - name: slow
    endpoints: ["{}"]
    request_timeout: 10s
shutdown_grace: 8s
"#,
        slow.addr
    );
    let mut proxy = Proxy::start(&config);
    let addr = proxy.http;
    let in_flight = thread::spawn(move || get(addr, "x", "/slow"));
    thread::sleep(Duration::from_millis(300));
    signal(proxy.child.id(), "TERM");
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "the request in flight finished: {}", r.body);
    assert_eq!(
        r.headers.get("connection").map(String::as_str),
        Some("close")
    );
    let status = proxy.child.wait().unwrap();
    assert!(
        status.success(),
        "a drained shutdown exits cleanly: {status}"
    );
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn http1_clients_reach_h2c_upstreams() {
    let h2 = H2cBackend::start("h2");
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /retry
    upstream: with-dead
  - path: /
    upstream: h2
upstreams:
  - name: h2
    endpoints: ["{h2}"]
    protocol: h2c
  - name: with-dead
    endpoints: ["{dead}", "{h2}"]
    protocol: h2c
    outlier: {{consecutive_failures: 0}}
"#,
        h2 = h2.addr,
    );
    let proxy = Proxy::start(&config);
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    // A plain GET: the Host becomes the HTTP/2 authority, forwarding
    // headers are added.
    s.write_all(
        b"GET /hello?x=1 HTTP/1.1\r\nHost: app.example.com\r\nConnection: keep-alive\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        "h2 GET /hello authority=app.example.com xff=127.0.0.1 fwd=for=127.0.0.1;proto=http;host=app.example.com body="
    );
    assert_eq!(
        r.headers.get("content-length").map(String::as_str),
        Some(r.body.len().to_string().as_str())
    );
    // Bodies, sized and chunked, arrive without their HTTP/1.1 framing; the
    // connection is kept throughout.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert!(r.body.ends_with("body=hello"), "{}", r.body);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert!(r.body.ends_with("body=abcdefg"), "{}", r.body);
    // Expect: 100-continue is answered before the body is sent.
    s.write_all(
        b"PUT /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    )
    .unwrap();
    let interim = read_head(&mut s, &mut buf).unwrap();
    assert!(interim.0.starts_with("HTTP/1.1 100"), "{interim:?}");
    s.write_all(b"xyz").unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert!(r.body.starts_with("h2 PUT /echo"), "{}", r.body);
    assert!(r.body.ends_with("body=xyz"), "{}", r.body);
    // A response without a length is chunked, its trailers dropped: nothing
    // follows the final empty chunk, and the next response parses.
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert_eq!(r.body, "hello world");
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    assert_eq!(
        r.headers.get("transfer-encoding").map(String::as_str),
        Some("chunked")
    );
    assert!(!r.headers.contains_key("x-checksum"));
    s.write_all(b"GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 404);
    assert_eq!(
        h2.requests.load(Ordering::Relaxed),
        6,
        "one connection, six requests"
    );

    // HTTP/1.0 cannot take chunks: the end of the body is the close.
    let old = raw(proxy.http, "GET /stream HTTP/1.0\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(old.body, "hello world");
    assert_eq!(
        old.headers.get("connection").map(String::as_str),
        Some("close")
    );

    // Connect failures are retried on the other endpoint, as for HTTP/1.1
    // upstreams.
    for i in 0..6 {
        let r = get(proxy.http, "a", &format!("/retry/{i}"));
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// An h2c connection with prior knowledge, driven in the background.
async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends GET `url` on an h2c connection and reads the answer, which must
/// be a 200.
async fn h2_ok(
    mut send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    url: String,
) {
    use http_body_util::BodyExt;
    let req = hyper::Request::get(url)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

/// A runtime for a test's async clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn h2_get(addr: SocketAddr, host: &str, paths: &[&str]) -> Vec<(u16, String)> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let rt = runtime();
    rt.block_on(async {
        let mut send = h2c(addr).await;
        let mut out = Vec::new();
        for path in paths {
            let req = hyper::Request::get(format!("http://{host}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            out.push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        out
    })
}

fn metric(proxy: &Proxy, prefix: &str) -> f64 {
    raw(proxy.admin, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn both_http_versions_retry_alike() {
    let (live, a, b) = (
        Backend::start("live"),
        Backend::start("a"),
        Backend::start("b"),
    );
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /status
    upstream: pair
  - path: /
    upstream: with-dead
upstreams:
  - name: with-dead
    endpoints: ["{dead}", "{live}"]
    outlier: {{consecutive_failures: 0}}
  - name: pair
    endpoints: ["{a}", "{b}"]
    retries: {{attempts: 1, on_status: [503]}}
admin:
  address: 127.0.0.1:{{admin}}
"#,
        live = live.addr,
        a = a.addr,
        b = b.addr,
    );
    let proxy = Proxy::start(&config);

    // HTTP/2 clients: a dead endpoint beside a live one costs no request.
    let paths: Vec<String> = (0..10).map(|i| format!("/h2/{i}")).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    for (status, body) in h2_get(proxy.http, "x", &paths) {
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("live "), "{body}");
    }
    assert!(metric(&proxy, "orca_ingress_retries_total") >= 1.0);

    // A configured status is retried once on the other endpoint, then
    // passed on: HTTP/2 first, then HTTP/1.1 on a kept connection.
    let sent = |n| a.requests.load(Ordering::Relaxed) + b.requests.load(Ordering::Relaxed) - n;
    let (status, _) = h2_get(proxy.http, "x", &["/status/503"]).remove(0);
    assert_eq!(status, 503);
    assert_eq!(sent(0), 2, "tried on both endpoints");
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(b"GET /status/503 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 503);
    assert_eq!(sent(2), 2, "tried on both endpoints");
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
    assert_eq!(sent(4), 1, "a status not listed is not retried");
}

/// The access log's entries, once at least `n` are written (lines are
/// flushed about once a second).
fn access_log(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let entries: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
            .collect();
        if entries.len() >= n {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{n} access log lines, got {text:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn access_log_has_a_json_line_per_request_of_either_version() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let config =
        base_config(&api, &web).replace("admin:", "access_log: {path: {dir}/access.log}\nadmin:");
    let proxy = Proxy::start(&config);
    assert_eq!(get(proxy.http, "example.com", "/api/one?q=1").status, 200);
    assert_eq!(get(proxy.http, "nowhere.test", "/missing").status, 404);
    let h2 = h2_get(proxy.http, "example.com", &["/api/two"]);
    assert_eq!(h2[0].0, 200);

    let entries = access_log(&proxy.dir.path().join("access.log"), 3);
    let find = |target: &str| {
        entries
            .iter()
            .find(|e| e["target"] == target)
            .unwrap_or_else(|| panic!("no line for {target}: {entries:?}"))
    };
    for (target, body) in [("/api/one?q=1", None), ("/api/two", Some(&h2[0].1))] {
        let e = find(target);
        assert_eq!(e["method"], "GET", "{e}");
        assert_eq!(e["host"], "example.com", "{e}");
        assert_eq!(e["status"], 200, "{e}");
        assert_eq!(e["route"], "example.com/api", "{e}");
        assert_eq!(e["upstream"], "api", "{e}");
        assert_eq!(e["endpoint"], api.addr.to_string(), "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(e["duration"].as_f64().is_some_and(|d| d > 0.0), "{e}");
        if let Some(body) = body {
            assert_eq!(e["bytes"], body.len(), "{e}");
        }
    }
    let missing = find("/missing");
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["route"], "-", "{missing}");
    assert!(missing["upstream"].is_null(), "{missing}");
}

#[test]
fn max_connections_refuses_the_excess_and_recovers() {
    let (api, web) = (Backend::start("api"), Backend::start("web"));
    let config = base_config(&api, &web).replace("admin:", "limits:\n  max_connections: 2\nadmin:");
    let proxy = Proxy::start(&config);
    let request = b"GET /api HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let ask = |s: &mut TcpStream, buf: &mut Vec<u8>| {
        s.write_all(request).ok()?;
        read_response(s, buf).map(|r| r.status)
    };
    // Open client connections, as the proxy counts them.
    let open_until = |n: f64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&proxy, "orca_ingress_connections ") != n {
            assert!(Instant::now() < deadline, "{n} connections open");
            thread::sleep(Duration::from_millis(20));
        }
    };
    // The probe that saw the proxy start must be gone first: accepted (the
    // kernel queues it until a worker's accept loop runs), then closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy, "orca_ingress_connections_accepted") < 1.0 {
        assert!(Instant::now() < deadline, "the start probe is accepted");
        thread::sleep(Duration::from_millis(20));
    }
    open_until(0.0);
    let (mut one, mut two) = (connect(proxy.http), connect(proxy.http));
    let (mut buf1, mut buf2) = (Vec::new(), Vec::new());
    assert_eq!(ask(&mut one, &mut buf1), Some(200));
    assert_eq!(ask(&mut two, &mut buf2), Some(200));

    // A third connection is accepted by the kernel and closed at once.
    let mut three = connect(proxy.http);
    assert_eq!(ask(&mut three, &mut Vec::new()), None, "beyond the limit");
    // The open ones keep working.
    assert_eq!(ask(&mut one, &mut buf1), Some(200));
    assert_eq!(ask(&mut two, &mut buf2), Some(200));

    // Once one closes, a new connection is served again.
    drop(one);
    open_until(1.0);
    let mut four = connect(proxy.http);
    assert_eq!(ask(&mut four, &mut Vec::new()), Some(200));
    assert_eq!(ask(&mut two, &mut buf2), Some(200));
}

/// A `kubernetes.io/tls` Secret holding a certificate and key.
fn tls_secret(name: &str, cert: &Path, key: &Path) -> String {
    let base64 = |path: &Path| {
        let out = Command::new("openssl")
            .args(["base64", "-A", "-in"])
            .arg(path)
            .output()
            .expect("openssl base64");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        base64(cert),
        base64(key)
    )
}

#[test]
fn cluster_mode_serves_certificates_from_tls_secrets_by_sni() {
    let etcd = orca_testkit::Etcd::start();
    let backend = Backend::start("one");
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = openssl_cert(dir.path(), "a.example.com");
    let (b_cert, b_key) = openssl_cert(dir.path(), "b.example.com");
    let rule = |host: &str| {
        format!(
            "    - host: {host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend:\n              service:\n                name: web\n                port:\n                  number: 80\n"
        )
    };
    apply(
        &etcd,
        &format!(
            "{}---\n{}---\n{}",
            tls_secret("a-tls", &a_cert, &a_key),
            tls_secret("b-tls", &b_cert, &b_key),
            r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - name: http
      port: 80
      targetPort: 8080
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  ingressClassName: orca
  tls:
    - hosts: [a.example.com]
      secretName: a-tls
    - hosts: [b.example.com]
      secretName: b-tls
  rules:
"#
            .to_string()
                + &rule("a.example.com")
                + &rule("b.example.com")
        ),
    );
    put_web_slice(&etcd, &[(&backend, true)]);

    let config_dir = tempfile::tempdir().unwrap();
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let path = config_dir.path().join("ingress.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - name: web\n    address: 127.0.0.1:{http}\n  - name: websecure\n    address: 127.0.0.1:{https}\n    tls:\n      certificates: []\n"
        ),
    )
    .unwrap();
    let proxy = Proxy::spawn(
        path,
        config_dir,
        http,
        admin,
        "ingress",
        &["--etcd", &etcd.endpoint()],
    );
    let tls = proxy.https();

    // Each name gets its own Secret's certificate, and its request is routed.
    for name in ["a.example.com", "b.example.com"] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = presented_subject(tls, name);
            let cn = seen.contains(&format!("CN = {name}")) || seen.contains(&format!("CN={name}"));
            if cn && seen.contains("one /tls xff=127.0.0.1 xfp=https") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}'s certificate is served: {seen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(served_pem(tls, "a.example.com"), pem(&a_cert));
    assert_eq!(served_pem(tls, "b.example.com"), pem(&b_cert));

    // A renewed Secret is served without a restart.
    let renewed = dir.path().join("renewed");
    std::fs::create_dir(&renewed).unwrap();
    let (c_cert, c_key) = openssl_cert(&renewed, "a.example.com");
    apply(&etcd, &tls_secret("a-tls", &c_cert, &c_key));
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_pem(tls, "a.example.com") != pem(&c_cert) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is served"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(served_pem(tls, "b.example.com"), pem(&b_cert));

    // A newer Ingress in another namespace can neither take a.example.com's
    // certificate over with one of its own, nor have its certificate for
    // t.example.com served for a name it does not cover.
    let thief = dir.path().join("thief");
    std::fs::create_dir(&thief).unwrap();
    let (t_cert, t_key) = openssl_cert(&thief, "t.example.com");
    let (ta_cert, ta_key) = openssl_cert(&thief, "a.example.com");
    let in_other = |yaml: String| yaml.replace("metadata:\n", "metadata:\n  namespace: other\n");
    apply(
        &etcd,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n---\n{}---\n{}---\n{}",
            in_other(tls_secret("t-tls", &t_cert, &t_key)),
            in_other(tls_secret("ta-tls", &ta_cert, &ta_key)),
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: thief\n  namespace: other\nspec:\n  ingressClassName: orca\n  tls:\n    - hosts: [t.example.com, d.example.com]\n      secretName: t-tls\n    - hosts: [a.example.com]\n      secretName: ta-tls\n  rules:\n"
                .to_string()
                + &rule("t.example.com"),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_pem(tls, "t.example.com") != pem(&t_cert) {
        assert!(
            Instant::now() < deadline,
            "the new Ingress's certificate is served"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        served_pem(tls, "a.example.com"),
        pem(&c_cert),
        "the oldest keeps it"
    );
    assert_ne!(
        served_pem(tls, "d.example.com"),
        pem(&t_cert),
        "not its name"
    );
}

/// A configuration with a plain listener, the admin server, `extra`
/// top-level YAML, and for each `(name, endpoints, settings)` an upstream
/// NAME with `settings` (YAML flow-map entries, may be empty) that serves
/// the host `NAME.test`.
fn upstream_per_host(upstreams: &[(&str, &[SocketAddr], &str)], extra: &str) -> String {
    let mut config =
        String::from("listeners:\n  - name: web\n    address: 127.0.0.1:{http}\nroutes:\n");
    for (name, _, _) in upstreams {
        config += &format!("  - {{host: {name}.test, upstream: {name}}}\n");
    }
    config += "upstreams:\n";
    for (name, endpoints, settings) in upstreams {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let sep = if settings.is_empty() { "" } else { ", " };
        config += &format!(
            "  - {{name: {name}, endpoints: [{}]{sep}{settings}}}\n",
            endpoints.join(", ")
        );
    }
    config + "admin:\n  address: 127.0.0.1:{admin}\n" + extra
}

/// A configuration whose one route sends every request to one upstream at
/// `endpoint` with `settings` (YAML flow-map entries, may be empty), with
/// `extra` top-level YAML.
fn catch_all(endpoint: SocketAddr, settings: &str, extra: &str) -> String {
    let sep = if settings.is_empty() { "" } else { ", " };
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:{{http}}\nroutes:\n  - {{path: /, upstream: u}}\nupstreams:\n  - {{name: u, endpoints: [\"{endpoint}\"]{sep}{settings}}}\nadmin:\n  address: 127.0.0.1:{{admin}}\n{extra}"
    )
}

#[test]
fn max_idle_per_endpoint_caps_each_upstreams_pool() {
    let (two, none) = (Backend::start("two"), Backend::start("none"));
    let proxy = Proxy::start(&upstream_per_host(
        &[
            ("two", &[two.addr], "max_idle_per_endpoint: 2"),
            ("none", &[none.addr], "max_idle_per_endpoint: 0"),
        ],
        "",
    ));
    let rt = runtime();
    rt.block_on(async {
        // One client connection is served by one worker, whose pool is
        // the one the cap bounds.
        let send = h2c(proxy.http).await;
        let get = |path: &str| h2_ok(send.clone(), format!("http://two.test{path}"));
        // Five requests at once take five connections; when they end, two
        // stay idle and three close.
        futures::future::join_all((0..5).map(|_| get("/slow"))).await;
        assert_eq!(two.accepted.load(Ordering::SeqCst), 5);
        wait_until("all but two idle connections closed", || {
            two.open.load(Ordering::SeqCst) == 2
        });
        get("/again").await;
        assert_eq!(
            two.accepted.load(Ordering::SeqCst),
            5,
            "a kept connection served the next request"
        );
    });
    // With a cap of 0 every request connects anew, even on one keep-alive
    // client connection.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: none.test\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
    }
    assert_eq!(none.accepted.load(Ordering::SeqCst), 3);
    wait_until("no idle connection kept", || {
        none.open.load(Ordering::SeqCst) == 0
    });
}

/// A chunked body of chunks of `sizes` bytes, then the last chunk.
fn chunks(sizes: &[usize]) -> String {
    let mut body: String = sizes
        .iter()
        .map(|n| format!("{n:x}\r\n{}\r\n", "x".repeat(*n)))
        .collect();
    body += "0\r\n\r\n";
    body
}

/// Sends a POST /echo with `body` over h2c, its length declared or not;
/// the status and the echoed body's length.
async fn h2_post(addr: SocketAddr, host: &str, body: &[&[u8]], declared: bool) -> (u16, usize) {
    let req = hyper::Request::post(format!("http://{host}/echo"));
    h2_send(addr, req, body, declared).await
}

/// Sends `req` with `body` in DATA frames over h2c, its length declared or
/// not; the status and the length of the answer's body.
async fn h2_send(
    addr: SocketAddr,
    mut req: hyper::http::request::Builder,
    body: &[&[u8]],
    declared: bool,
) -> (u16, usize) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    let mut send = h2c(addr).await;
    let frames: Vec<Result<_, std::convert::Infallible>> = body
        .iter()
        .map(|piece| Ok(Frame::data(Bytes::copy_from_slice(piece))))
        .collect();
    if declared {
        let len: usize = body.iter().map(|p| p.len()).sum();
        req = req.header("content-length", len);
    }
    let req = req
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let echoed = resp
        .into_body()
        .collect()
        .await
        .map_or(0, |b| b.to_bytes().len());
    (status, echoed)
}

#[test]
fn the_body_limit_holds_for_sized_chunked_and_http2_bodies() {
    let (h1, h2) = (Backend::start("h1"), H2cBackend::start("h2"));
    let proxy = Proxy::start(&upstream_per_host(
        &[
            // Nothing kept idle: an upstream connection left open is one
            // the proxy did not abort.
            ("h1", &[h1.addr], "max_idle_per_endpoint: 0"),
            ("h2", &[h2.addr], "protocol: h2c"),
        ],
        "limits:\n  max_body_bytes: 1KiB\n",
    ));
    let post = |host: &str, framing: &str, body: &str| {
        let mut s = connect(proxy.http);
        s.write_all(
            format!("POST /echo HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n{body}").as_bytes(),
        )
        .unwrap();
        let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
        let closed = r.status != 413 || s.read(&mut [0u8; 16]).unwrap_or(0) == 0;
        assert!(closed, "a refused body closes the connection");
        r
    };
    let chunked = "Transfer-Encoding: chunked";

    // The limit counts data, not chunk framing: 1 KiB in four chunks passes.
    let exact = post("h1.test", chunked, &chunks(&[256; 4]));
    assert_eq!((exact.status, exact.body.len()), (200, 1024));
    let served = h1.requests.load(Ordering::SeqCst);
    let sized = post("h1.test", "Content-Length: 1025", &"x".repeat(1025));
    assert_eq!(sized.status, 413);
    // A chunked body past the limit in what arrived with the head is
    // refused before anything goes upstream, not even a connection.
    let accepted = h1.accepted.load(Ordering::SeqCst);
    assert_eq!(post("h1.test", chunked, &chunks(&[600, 600])).status, 413);
    assert_eq!(h1.requests.load(Ordering::SeqCst), served);
    assert_eq!(h1.accepted.load(Ordering::SeqCst), accepted);

    // Past the limit after part of it went upstream: the client gets 413
    // and a close, the upstream request is aborted.
    let mut s = connect(proxy.http);
    s.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nHost: h1.test\r\n{chunked}\r\n\r\n258\r\n{}\r\n",
            "x".repeat(600)
        )
        .as_bytes(),
    )
    .unwrap();
    wait_until("the first chunk reached the backend", || {
        h1.requests.load(Ordering::SeqCst) == served + 1
    });
    s.write_all(format!("258\r\n{}\r\n", "x".repeat(600)).as_bytes())
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(r.status, 413);
    assert_eq!(s.read(&mut [0u8; 16]).unwrap_or(0), 0, "closed");
    wait_until("the upstream connection of the cut request closed", || {
        h1.open.load(Ordering::SeqCst) == 0
    });

    // HTTP/1.1 clients of an h2c upstream, alike.
    let ok = post("h2.test", chunked, &chunks(&[512, 512]));
    assert_eq!(ok.status, 200);
    assert!(ok.body.ends_with(&"x".repeat(1024)), "{}", ok.body);
    assert_eq!(post("h2.test", chunked, &chunks(&[600, 600])).status, 413);

    // HTTP/2 clients: a declared length is checked first, DATA frames
    // without one as they pass, whatever the upstream speaks.
    let piece = [b'x'; 600];
    runtime().block_on(async {
        for host in ["h1.test", "h2.test"] {
            let ok = h2_post(proxy.http, host, &[&piece[..400], &piece[..400]], false).await;
            assert_eq!(ok.0, 200, "{host}");
            assert!(ok.1 >= 800, "{host}: the body was echoed");
            let sized = h2_post(proxy.http, host, &[&piece, &piece], true).await;
            assert_eq!(sized.0, 413, "{host}");
            let streamed = h2_post(proxy.http, host, &[&piece, &piece], false).await;
            assert_eq!(streamed.0, 413, "{host}");
        }
    });
    // A client's oversized body is not the endpoint's failure.
    assert_eq!(metric(&proxy, "orca_ingress_upstream_failures_total"), 0.0);
}

#[test]
fn orca_master_serves_the_clusters_ingresses() {
    let etcd = orca_testkit::Etcd::start();
    let backend = Backend::start("one");
    apply(&etcd, &web_ingress());
    put_web_slice(&etcd, &[(&backend, true)]);
    let master = Proxy::launch(CLUSTER_CONFIG, "master", &["--etcd", &etcd.endpoint()]);
    eventually(
        &master,
        "web.example.com",
        "/x",
        "the master serves the Ingress",
        |r| r.body.starts_with("one /x"),
    );
    // Healthy once the routes are listed from the cluster; the metrics are
    // the proxy's.
    let health = raw(master.admin, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert!(metric(&master, "orca_ingress_requests_total") >= 1.0);
    assert_eq!(served_routes(&master)["count"], 1);
}

/// Runs `orca ARGS` with a configuration file of `config`, which must exit
/// by itself, unsuccessfully; its standard error.
fn refused(args: &[&str], config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orca"))
        .args(args)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("ORCA_ETCD")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orca {args:?} kept running");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "orca {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn master_and_cluster_ingress_refuse_a_broken_config_or_an_unreachable_etcd() {
    let closed = format!("http://127.0.0.1:{}", orca_testkit::closed_port());
    let good = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:{}\n",
        free_port()
    );
    let with_routes = good.clone()
        + "routes:\n  - {path: /, upstream: a}\nupstreams:\n  - {name: a, endpoints: [\"127.0.0.1:1\"]}\n";
    for command in ["master", "ingress"] {
        let args = [command, "--etcd", &closed];
        // The file is checked first, whatever etcd's state.
        let err = refused(&args, "listeners: []\n");
        assert!(
            err.starts_with("error: ingress proxy: ")
                && err.contains("listeners: at least one listener is required"),
            "{command}: {err}"
        );
        let err = refused(&args, &with_routes);
        assert!(
            err.contains("routes: in cluster mode routes come from Ingress objects"),
            "{command}: {err}"
        );
        // A good file and no etcd: the error every command gives, at once
        // rather than retried forever.
        let err = refused(&args, &good);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("error: cannot reach etcd at {closed}: ")),
            "{command}: {err}"
        );
    }
}

#[test]
fn requests_whose_body_went_upstream_are_never_retried() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&upstream_per_host(
        &[(
            "pair",
            &[a.addr, b.addr],
            "retries: {attempts: 1, on_status: [503]}",
        )],
        "",
    ));
    let sent = || a.requests.load(Ordering::SeqCst) + b.requests.load(Ordering::SeqCst);
    // Without a body the configured status is retried on the other endpoint.
    assert_eq!(get(proxy.http, "pair.test", "/status/503").status, 503);
    assert_eq!(sent(), 2, "retried");
    // PUT is idempotent, but its body streams through and is kept nowhere:
    // one attempt, whose answer is the client's, however it is framed.
    for framing in [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let before = sent();
        let request = format!("PUT /status/503 HTTP/1.1\r\nHost: pair.test\r\n{framing}");
        assert_eq!(raw(proxy.http, &request).unwrap().status, 503);
        assert_eq!(sent(), before + 1, "not retried: {framing:?}");
    }
    runtime().block_on(async {
        for declared in [true, false] {
            let before = sent();
            let req = hyper::Request::put("http://pair.test/status/503");
            let (status, _) = h2_send(proxy.http, req, &[b"hello"], declared).await;
            assert_eq!(status, 503);
            assert_eq!(sent(), before + 1, "HTTP/2, not retried");
        }
    });
}

#[test]
fn a_request_whose_connection_failed_goes_to_another_endpoint_body_and_all() {
    let (a, h2) = (Backend::start("a"), H2cBackend::start("h2"));
    let dead = SocketAddr::from(([127, 0, 0, 1], orca_testkit::closed_port()));
    let proxy = Proxy::start(&upstream_per_host(
        &[
            (
                "pair",
                &[dead, a.addr],
                "outlier: {consecutive_failures: 0}, retries: {budget_percent: 100}",
            ),
            (
                "h2pair",
                &[dead, h2.addr],
                "protocol: h2c, outlier: {consecutive_failures: 0}, retries: {budget_percent: 100}",
            ),
        ],
        "",
    ));
    // A retry's pick moves the round robin on too, so (nothing being
    // ejected, the budget ample) every request but maybe the first meets
    // the dead endpoint first; nothing was sent there, so each goes on,
    // body and all, whatever its method.
    for i in 0..4 {
        for framing in [
            "Content-Length: 5\r\n\r\nhello",
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ] {
            let request = format!("POST /echo HTTP/1.1\r\nHost: pair.test\r\n{framing}");
            let r = raw(proxy.http, &request).unwrap();
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "hello"),
                "{i} {framing:?}"
            );
            let request = format!("PUT /x HTTP/1.1\r\nHost: h2pair.test\r\n{framing}");
            let r = raw(proxy.http, &request).unwrap();
            assert_eq!(r.status, 200, "{i} {framing:?}: {}", r.body);
            assert!(r.body.ends_with("body=hello"), "{}", r.body);
        }
    }
    runtime().block_on(async {
        for declared in [true, false, true, false] {
            let (status, echoed) =
                h2_post(proxy.http, "pair.test", &[b"hel", b"lo"], declared).await;
            assert_eq!((status, echoed), (200, 5), "HTTP/2, declared {declared}");
        }
    });
    // 12 requests to `pair`, 8 to `h2pair`.
    assert!(metric(&proxy, "orca_ingress_retries_total") >= 18.0);
}

/// An upstream that closes its keep-alive connections as servers do when
/// their idle timeout fires: after answering the first request of each
/// (`on_second: false`: at once, the close reaching the proxy before its
/// next request), or when the second request arrives, unanswered
/// (`on_second: true`: the close crossing the request on the wire). It
/// reports each close once made.
fn closing_upstream(on_second: bool) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closes) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let closed = closed.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                let Some((_, headers)) = read_head(&mut stream, &mut buf) else {
                    return;
                };
                let n = headers
                    .get("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                let body = read_exact_from(&mut stream, &mut buf, n).unwrap_or_default();
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes());
                let _ = stream.write_all(&body);
                if on_second {
                    let _ = stream.read(&mut [0u8; 1]);
                }
                drop(stream);
                let _ = closed.send(());
            });
        }
    });
    (addr, closes)
}

#[test]
fn a_post_never_meets_a_pooled_connection_the_upstream_closed() {
    let (early, early_closes) = closing_upstream(false);
    let (racing, racing_closes) = closing_upstream(true);
    let strict = "outlier: {consecutive_failures: 1}, retries: {attempts: 0}";
    let proxy = Proxy::start(&upstream_per_host(
        &[("early", &[early], strict), ("racing", &[racing], strict)],
        "",
    ));
    let post = |host: &str| {
        format!("POST /p HTTP/1.1\r\nHost: {host}.test\r\nContent-Length: 5\r\n\r\nhello")
    };
    let get = |host: &str| format!("GET /g HTTP/1.1\r\nHost: {host}.test\r\n\r\n");
    // Closed after the GET, before the POST: the pooled connection is seen
    // to be closed and the POST goes on a new one.
    let mut client = connect(proxy.http);
    let mut buf = Vec::new();
    client.write_all(get("early").as_bytes()).unwrap();
    assert_eq!(read_response(&mut client, &mut buf).unwrap().status, 200);
    early_closes.recv().unwrap();
    client.write_all(post("early").as_bytes()).unwrap();
    let r = read_response(&mut client, &mut buf).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));

    // The close crossing the request: a GET goes again on a new connection;
    // a POST cannot (the upstream may have taken it), so it fails, but the
    // endpoint is not blamed: one failure would eject it.
    for (request, status) in [(get("racing"), 200), (post("racing"), 502)] {
        let mut client = connect(proxy.http);
        let mut buf = Vec::new();
        client.write_all(get("racing").as_bytes()).unwrap();
        assert_eq!(read_response(&mut client, &mut buf).unwrap().status, 200);
        client.write_all(request.as_bytes()).unwrap();
        let r = read_response(&mut client, &mut buf).unwrap();
        assert_eq!(r.status, status, "{request:?}");
        racing_closes.recv().unwrap();
    }
    // The same for an HTTP/2 client's requests, on one connection.
    runtime().block_on(async {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let mut send = h2c::<Full<Bytes>>(proxy.http).await;
        for (method, body, status) in [("GET", "", 200), ("POST", "hello", 502)] {
            for (method, body, status) in [("GET", "", 200), (method, body, status)] {
                let req = hyper::Request::builder()
                    .method(method)
                    .uri("http://racing.test/h2")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), status, "HTTP/2 {method}");
            }
            racing_closes.recv().unwrap();
        }
    });
    assert_eq!(get_status(proxy.http, "racing.test"), 200, "not ejected");
    assert_eq!(metric(&proxy, "orca_ingress_upstream_failures_total{"), 2.0);
    let stale =
        "orca_ingress_upstream_failures_total{upstream=\"racing\",kind=\"stale_connection\"}";
    assert_eq!(metric(&proxy, stale), 2.0);
}

fn get_status(addr: SocketAddr, host: &str) -> u16 {
    get(addr, host, "/").status
}

#[test]
fn quiet_upstreams_and_clients_taking_nothing_are_cut_off_in_either_version() {
    let (h1, h2) = (Backend::start("h1"), H2cBackend::start("h2"));
    let proxy = Proxy::start(&upstream_per_host(
        &[("h1", &[h1.addr], ""), ("h2", &[h2.addr], "protocol: h2c")],
        "limits: {body_read_timeout: 1s, send_timeout: 1s, h2_ping_interval: 1s, \
         header_read_timeout: 60s}\n",
    ));
    runtime().block_on(async {
        use http_body_util::{BodyExt, Empty, Full};
        use hyper::body::Bytes;
        // An upstream quiet mid-body: the HTTP/2 stream is reset.
        for host in ["h1", "h2"] {
            let mut send = h2c::<Empty<Bytes>>(proxy.http).await;
            let req = hyper::Request::get(format!("http://{host}.test/stall"))
                .body(Empty::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(resp.into_body().collect().await.is_err(), "{host}: cut off");
        }
        // A client that takes none of a large answer: the connection is
        // closed, and with it the upstream connection it held.
        let mut send = h2c::<Full<Bytes>>(proxy.http).await;
        let req = hyper::Request::post("http://h1.test/echo")
            .body(Full::new(Bytes::from(vec![b'x'; 6 << 20])))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let deadline = Instant::now() + Duration::from_secs(30);
        while h1.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the upstream connection is held: {} open of {} accepted",
                h1.open.load(Ordering::SeqCst),
                h1.accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(resp.into_body().collect().await.is_err(), "closed");
    });
    // An HTTP/1.1 client of a quiet h2c upstream: the connection closes
    // before the body's end.
    let r = raw(proxy.http, "GET /stall HTTP/1.1\r\nHost: h2.test\r\n\r\n");
    assert!(r.is_none(), "an unfinished body ends with the connection");
    // An HTTP/2 client that answers no ping is closed, stream or none.
    let mut client = connect(proxy.http);
    client
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut seen = Vec::new();
    client.read_to_end(&mut seen).unwrap();
    let mut frames = Vec::new();
    while seen.len() >= 9 {
        let len = usize::from(seen[0]) << 16 | usize::from(seen[1]) << 8 | usize::from(seen[2]);
        frames.push(seen[3]);
        seen.drain(..(9 + len).min(seen.len()));
    }
    assert!(frames.contains(&6), "pinged before the close: {frames:?}");
}

/// Debian's nginx, serving on loopback from a directory of its own,
/// killed on drop. `locations` is the body of its one `server` block;
/// the echo module (Debian's nginx-light brings it) is loaded, so a
/// location can answer with what it received.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(locations: &str) -> Self {
        for needed in [
            "/usr/sbin/nginx",
            "/usr/lib/nginx/modules/ngx_http_echo_module.so",
        ] {
            assert!(
                Path::new(needed).exists(),
                "{needed} is missing: this test needs Debian's nginx-light and its echo \
                 module (scripts/deps.sh installs them)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let port = free_port();
        let conf = format!(
            r#"
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    log_format framing escape=json '{{"request":"$request","status":$status,"length":$request_length,"body":"$request_body"}}';
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        {locations}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .args(["-p", d, "-e", &format!("{d}/error.log"), "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (scripts/deps.sh installs nginx-light)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start listening");
            thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr, dir }
    }

    /// What nginx has logged so far at level info and above.
    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The configuration of a proxy sending every request to `self`.
    fn behind_proxy(&self) -> String {
        format!(
            r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: nginx
upstreams:
  - name: nginx
    endpoints: ["{}"]
admin:
  address: 127.0.0.1:{{admin}}
"#,
            self.addr
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx answering `/echo` with the request body it read and every other
/// path with the framing headers it saw.
const NGINX_ECHO: &str = r#"
        location /echo { echo_read_request_body; echo_request_body; }
        location / { echo "cl=$http_content_length te=$http_transfer_encoding"; }
"#;

#[test]
fn bodies_reach_an_nginx_upstream_framed_once() {
    let nginx = Nginx::start(NGINX_ECHO);
    let proxy = Proxy::start(&nginx.behind_proxy());
    // Requests with bodies, of both framings, and one without, on one
    // connection: each must end where nginx thinks it ends.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
          PUT /headers HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc\
          GET /echo HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let r = read_response(&mut s, &mut buf).expect("a response");
        answers.push((r.status, r.body));
    }
    assert_eq!(
        answers,
        [
            (200, "hello".to_string()),
            (200, "hello world".to_string()),
            (200, "cl=3 te=\n".to_string()),
            (200, String::new()),
        ]
    );
}

#[test]
fn paths_are_routed_and_forwarded_in_their_normal_form() {
    let nginx = Nginx::start(r#"location / { echo "nginx $request_uri"; }"#);
    let admin = Backend::start("admin");
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /public
    upstream: public
  - path: /admin
    upstream: admin
upstreams:
  - name: public
    endpoints: ["{}"]
  - name: admin
    endpoints: ["{}"]
"#,
        nginx.addr, admin.addr
    ));
    // What reaches which upstream, as the upstream saw it.
    let cases = [
        ("/public/../admin", "admin /admin "),
        ("/public/%2e%2E/admin", "admin /admin "),
        ("//admin?x=/../y", "admin /admin?x=/../y "),
        ("/public/./a//b/?q=1", "nginx /public/a/b/?q=1\n"),
        ("/admin/../public/x", "nginx /public/x\n"),
        // An encoded slash is no separator: this stays under /public.
        ("/public/..%2Fadmin", "nginx /public/..%2Fadmin\n"),
    ];
    for (path, seen) in cases {
        let r = get(proxy.http, "a.test", path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.starts_with(seen), "HTTP/1.1 {path}: {}", r.body);
    }
    let paths: Vec<&str> = cases.iter().map(|(p, _)| *p).collect();
    for ((path, seen), (status, body)) in cases.iter().zip(h2_get(proxy.http, "a.test", &paths)) {
        assert_eq!(status, 200, "{path}");
        assert!(body.starts_with(seen), "HTTP/2 {path}: {body}");
    }
}

#[test]
fn interim_answers_and_protocol_switches_only_where_asked() {
    let nginx = Nginx::start(NGINX_ECHO);
    let web = Backend::start("web");
    // An upstream the test drives by hand, to know when the proxy has sent
    // a request on.
    let manual = StdListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /echo
    upstream: nginx
  - path: /manual
    upstream: manual
  - path: /
    upstream: web
upstreams:
  - name: nginx
    endpoints: ["{}"]
  - name: manual
    endpoints: ["{}"]
  - name: web
    endpoints: ["{}"]
"#,
        nginx.addr,
        manual.local_addr().unwrap(),
        web.addr
    ));
    // HTTP/1.1 asks nginx to continue, and is told to.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 100);
    s.write_all(b"hello").unwrap();
    let r = read_response(&mut s, &mut buf).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "hello"));
    // HTTP/1.0 knows no interim answers: its first answer is the final
    // one, though it sent Expect and the upstream answers 103 first.
    let mut s = connect(proxy.http);
    s.write_all(
        b"POST /manual HTTP/1.0\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let (mut upstream, _) = manual.accept().unwrap();
    let mut ubuf = Vec::new();
    read_head(&mut upstream, &mut ubuf).expect("the forwarded head");
    // The proxy has sent the head on, so any 100 of its own is written.
    s.write_all(b"hello").unwrap();
    assert_eq!(
        read_exact_from(&mut upstream, &mut ubuf, 5).unwrap(),
        b"hello"
    );
    upstream
        .write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    // The backend's /ws answers 101 whatever was asked: to a request that
    // asked for no upgrade that is no answer, and its connection is not
    // used again.
    let before = web.accepted.load(Ordering::SeqCst);
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 502);
    assert_eq!(get(proxy.http, "a.test", "/after").status, 200);
    assert_eq!(
        web.accepted.load(Ordering::SeqCst),
        before + 2,
        "the switched connection was not pooled"
    );
}

#[test]
fn every_x_forwarded_for_line_is_kept_by_either_version() {
    let nginx =
        Nginx::start(r#"location / { echo "xff=$http_x_forwarded_for fwd=$http_forwarded"; }"#);
    let proxy = Proxy::start(&nginx.behind_proxy());
    let want = "xff=192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1 \
                fwd=for=192.0.2.1, for=192.0.2.2, for=127.0.0.1;proto=http;host=a.test\n";
    let r = raw(
        proxy.http,
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 192.0.2.1\r\nForwarded: for=192.0.2.1\r\n\
         X-Forwarded-For: 192.0.2.2, 192.0.2.3\r\nForwarded: for=192.0.2.2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.body, want, "HTTP/1.1");
    let body = runtime().block_on(async {
        use http_body_util::{BodyExt, Empty};
        let mut send = h2c(proxy.http).await;
        let req = hyper::Request::get("http://a.test/")
            .header("x-forwarded-for", "192.0.2.1")
            .header("forwarded", "for=192.0.2.1")
            .header("x-forwarded-for", "192.0.2.2, 192.0.2.3")
            .header("forwarded", "for=192.0.2.2")
            .body(Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    assert_eq!(String::from_utf8_lossy(&body), want, "HTTP/2");
}

#[test]
fn connection_cannot_take_the_host_from_an_nginx_upstream() {
    let nginx = Nginx::start(r#"location / { echo "host=$http_host drop=$http_x_drop"; }"#);
    let proxy = Proxy::start(&nginx.behind_proxy());
    let r = raw(
        proxy.http,
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Host, x-drop\r\nX-Drop: 1\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "host=a.test drop=\n"));
}

#[test]
fn stalled_bodies_and_idle_tunnels_are_cut_off() {
    let nginx = Nginx::start(NGINX_ECHO);
    let web = Backend::start("web");
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /echo
    upstream: nginx
  - path: /
    upstream: web
upstreams:
  - name: nginx
    endpoints: ["{}"]
  - name: web
    endpoints: ["{}"]
limits:
  body_read_timeout: 1s
  tunnel_idle_timeout: 1s
"#,
        nginx.addr, web.addr
    ));
    // Ten bytes of a declared thousand, then silence: the client is told
    // so, and nginx sees the request it was reading end.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    let r = read_response(&mut s, &mut buf).expect("an answer to the stalled body");
    assert_eq!(r.status, 408);
    assert_eq!(s.read(&mut [0; 16]).unwrap(), 0, "the connection is closed");
    wait_until("nginx sees its client go", || {
        nginx
            .error_log()
            .contains("client prematurely closed connection")
    });
    // A WebSocket that carries something, then nothing: closed.
    let mut s = connect(proxy.http);
    let mut buf = Vec::new();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 101);
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exact_from(&mut s, &mut buf, 4).unwrap(), b"ping");
    assert_eq!(
        s.read(&mut [0; 16]).unwrap(),
        0,
        "the idle tunnel is closed"
    );
}

#[test]
fn idle_http2_connections_are_closed() {
    let web = Backend::start("web");
    let proxy = Proxy::start(&catch_all(
        web.addr,
        "",
        "limits: {header_read_timeout: 1s, keepalive_timeout: 1s}\n",
    ));
    runtime().block_on(async {
        use http_body_util::{BodyExt, Empty};
        // A client that completes the handshake and asks nothing, and one
        // that asks once and then nothing more: both are let go.
        for asks in [0, 1] {
            let tcp = tokio::net::TcpStream::connect(proxy.http).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            for _ in 0..asks {
                let req = hyper::Request::get("http://a.test/")
                    .body(Empty::<hyper::body::Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            }
            tokio::time::timeout(Duration::from_secs(15), conn)
                .await
                .unwrap_or_else(|_| panic!("a connection with {asks} requests was not closed"))
                .unwrap()
                .unwrap();
        }
    });
}

#[test]
fn chunk_extensions_and_trailers_are_bounded_before_nginx_sees_them() {
    let nginx = Nginx::start(NGINX_ECHO);
    let proxy = Proxy::start(&nginx.behind_proxy());
    let ok = "5;a=b\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n".to_string();
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(20_000));
    let long_trailer = format!("5\r\nhello\r\n0\r\nx-t: {}\r\n\r\n", "t".repeat(20_000));
    for (body, want) in [
        (ok, (200, "hello")),
        (long_extension, (413, "")),
        (long_trailer, (413, "")),
    ] {
        let r = raw(
            proxy.http,
            &format!(
                "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            ),
        )
        .unwrap();
        assert_eq!(r.status, want.0, "{}", &body[..20]);
        if want.0 == 200 {
            assert_eq!(r.body, want.1);
        }
    }
}

#[test]
fn request_trailers_are_not_forwarded() {
    let manual = StdListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:{{http}}
routes:
  - path: /
    upstream: manual
upstreams:
  - name: manual
    endpoints: ["{}"]
"#,
        manual.local_addr().unwrap()
    ));
    // The trailers arrive with the head, or after the upstream has the
    // body's first chunk.
    for split in [false, true] {
        let mut s = connect(proxy.http);
        let head = "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTrailer: x-injected\r\n\r\n5\r\nhello\r\n";
        let end = "0\r\nx-injected: 1\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n";
        if split {
            s.write_all(head.as_bytes()).unwrap();
        } else {
            s.write_all((head.to_string() + end).as_bytes()).unwrap();
        }
        let (mut upstream, _) = manual.accept().unwrap();
        let mut ubuf = Vec::new();
        let (_, headers) = read_head(&mut upstream, &mut ubuf).unwrap();
        assert!(!headers.contains_key("trailer"));
        read_exact_from(&mut upstream, &mut ubuf, 10).unwrap();
        if split {
            s.write_all(end.as_bytes()).unwrap();
        }
        // The rest of the body, up to the empty line that ends it.
        let mut rest = Vec::new();
        while !rest.ends_with(b"\r\n\r\n") {
            rest.push(read_exact_from(&mut upstream, &mut ubuf, 1).unwrap()[0]);
        }
        assert_eq!(
            String::from_utf8_lossy(&rest),
            "0\r\n\r\n",
            "split: {split}"
        );
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .unwrap();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    }
}

#[test]
fn a_stalled_http2_request_body_is_answered_408() {
    let nginx = Nginx::start(NGINX_ECHO);
    let proxy = Proxy::start(&format!(
        "{}limits:\n  body_read_timeout: 1s\n",
        nginx.behind_proxy()
    ));
    let status = runtime().block_on(async {
        use futures::StreamExt;
        use http_body_util::StreamBody;
        use hyper::body::{Bytes, Frame};
        // Ten bytes of a declared thousand, then nothing, the stream open.
        let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"0123456789"),
        ))])
        .chain(futures::stream::pending());
        let req = hyper::Request::post("http://a.test/echo")
            .header("content-length", "1000")
            .body(StreamBody::new(frames))
            .unwrap();
        let mut send = h2c(proxy.http).await;
        let resp = tokio::time::timeout(Duration::from_secs(15), send.send_request(req))
            .await
            .expect("an answer to the stalled body")
            .unwrap();
        resp.status()
    });
    assert_eq!(status, 408);
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS the proxy announces to an h2c
/// client, read from its first SETTINGS frame.
fn announced_max_streams(addr: SocketAddr) -> Option<u32> {
    let mut s = connect(addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut buf = Vec::new();
    let header = read_exact_from(&mut s, &mut buf, 9)?;
    assert_eq!(header[3], 4, "the first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let payload = read_exact_from(&mut s, &mut buf, len)?;
    payload
        .chunks(6)
        .find(|e| e[..2] == [0, 3])
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]))
}

#[test]
fn http2_streams_per_connection_are_bounded() {
    let web = Backend::start("web");
    let config = |extra: &str| {
        format!(
            "listeners:\n  - name: web\n    address: 127.0.0.1:{{http}}\n\
             routes:\n  - path: /\n    upstream: web\n\
             upstreams:\n  - name: web\n    endpoints: [\"{}\"]\n{extra}",
            web.addr
        )
    };
    let proxy = Proxy::start(&config(""));
    assert_eq!(
        announced_max_streams(proxy.http),
        Some(128),
        "nginx's default"
    );
    let proxy = Proxy::start(&config("limits:\n  h2_max_concurrent_streams: 8\n"));
    assert_eq!(announced_max_streams(proxy.http), Some(8));
}

#[test]
fn a_stalled_body_bound_for_an_h2c_upstream_is_answered_408() {
    let h2 = H2cBackend::start("h2");
    let proxy = Proxy::start(&catch_all(
        h2.addr,
        "protocol: h2c",
        "limits: {body_read_timeout: 1s}\n",
    ));
    let mut s = connect(proxy.http);
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("an answer to the stalled body");
    assert_eq!(r.status, 408);
}
