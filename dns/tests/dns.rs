//! The DNS responder against a real etcd, asked by a real resolver client
//! (`dig`, from Debian's bind9-dnsutils) over UDP and TCP on 127.0.0.1.
//! Names outside the cluster go to a fake upstream the test runs on
//! loopback; nothing leaves the machine.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orca_core::api::{EndpointSlice, Service};
use orca_core::store::{Store, StoreConfig};
use orca_core::telemetry::Metrics;
use orca_core::watch::Informers;
use orca_dns::Settings;
use orca_testkit::Etcd;
use serde_json::json;

/// The address the fake upstream gives every name.
const UPSTREAM_ANSWER: [u8; 4] = [192, 0, 2, 1];

/// What `dig` printed: the status, the header flags and the answer lines.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: String,
    answers: Vec<String>,
}

impl Dig {
    /// The addresses (or other data) of the answer section.
    fn data(&self) -> Vec<String> {
        let mut data: Vec<String> = self
            .answers
            .iter()
            .filter_map(|l| l.split_whitespace().last().map(str::to_string))
            .collect();
        data.sort();
        data
    }
}

fn dig(server: SocketAddr, args: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=3"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "dig is missing ({e}): this test needs Debian's bind9-dnsutils (scripts/deps.sh)"
            )
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = text
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .unwrap_or_else(|| panic!("dig {args:?} got no answer:\n{text}"));
    let status = header
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .to_string();
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_default()
        .to_string();
    let answers = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    Dig {
        status,
        flags,
        answers,
    }
}

/// Resolves `name` as a pod's resolver does with the kubelet's
/// resolv.conf (`search default.svc.cluster.local svc.cluster.local
/// cluster.local`, `ndots:5`): each search suffix in turn, then the name as
/// it is; the first name that exists wins.
fn resolve_like_a_pod(server: SocketAddr, name: &str, args: &[&str]) -> (String, Dig) {
    let suffixes = [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ];
    let mut tried = Vec::new();
    for full in suffixes
        .iter()
        .map(|s| format!("{name}.{s}."))
        .chain([format!("{name}.")])
    {
        let mut all = vec![full.as_str()];
        all.extend_from_slice(args);
        let answer = dig(server, &all);
        if answer.status == "NOERROR" {
            return (full, answer);
        }
        assert_eq!(answer.status, "NXDOMAIN", "{full}: {answer:?}");
        tried.push(full);
    }
    panic!("{name}: no name resolved; tried {tried:?}");
}

/// A fake upstream resolver on loopback, over UDP and TCP: answers every
/// query with one A record, and records the names it was asked.
struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

fn answer_upstream(query: &[u8], asked: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    // The question's name, uncompressed as clients send it.
    let mut pos = 12;
    let mut labels = Vec::new();
    while *query.get(pos)? != 0 {
        let len = usize::from(query[pos]);
        labels.push(String::from_utf8_lossy(query.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
    let question_end = pos + 5;
    asked.lock().unwrap().push(labels.join("."));
    let mut out = Vec::new();
    out.extend_from_slice(query.get(..2)?);
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    out.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    out.extend_from_slice(&UPSTREAM_ANSWER);
    Some(out)
}

impl Upstream {
    fn start() -> Upstream {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let a = Arc::clone(&asked);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                if let Some(answer) = answer_upstream(&buf[..n], &a) {
                    let _ = udp.send_to(&answer, from);
                }
            }
        });
        let a = Arc::clone(&asked);
        std::thread::spawn(move || {
            for mut stream in tcp.incoming().flatten() {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut query).is_err() {
                    continue;
                }
                if let Some(answer) = answer_upstream(&query, &a) {
                    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    let _ = stream.write_all(&framed);
                }
            }
        });
        Upstream { addr, asked }
    }
}

fn free_addr() -> SocketAddr {
    // A port free for both UDP and TCP.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

async fn start_responder(
    store: &Store,
    upstream: SocketAddr,
    timeout: Duration,
) -> (SocketAddr, Metrics, Arc<Informers>) {
    let listen = free_addr();
    let metrics = Metrics::new();
    let informers = Arc::new(Informers::new(store.clone(), &metrics));
    let settings = Settings {
        listen,
        netns: None,
        domain: "cluster.local".into(),
        upstream,
        upstream_timeout: timeout,
    };
    let (i, m) = (Arc::clone(&informers), metrics.clone());
    tokio::spawn(async move {
        orca_dns::run(&i, settings, &m, std::future::pending())
            .await
            .expect("the DNS responder runs");
    });
    (listen, metrics, informers)
}

/// Asks until the answer is what the caches should give, or fails after 10 s.
async fn wait_for(server: SocketAddr, name: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (server, n) = (server, name.to_string());
        let answer = tokio::task::spawn_blocking(move || dig(server, &[&n]))
            .await
            .unwrap();
        if answer.data() == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{name}: still {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
    .unwrap()
}

fn slice(service: &str, addresses: &[String]) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-abcde"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_services_and_other_names_are_forwarded() {
    let etcd = Etcd::start();
    let store = Store::connect(StoreConfig::new(etcd.endpoint()))
        .await
        .unwrap();
    let services = store.api::<Service>("default");
    let nginx = services
        .create(&service(
            "nginx",
            json!({"selector": {"app": "nginx"}, "ports": [{"name": "http", "port": 80}]}),
        ))
        .await
        .unwrap();
    let cluster_ip = nginx.spec.unwrap().cluster_ip.unwrap();
    services
        .create(&service(
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "web", "port": 8080}]}),
        ))
        .await
        .unwrap();
    let db: Vec<String> = vec!["10.244.1.5".into(), "10.244.2.7".into()];
    store
        .api::<EndpointSlice>("default")
        .create(&slice("db", &db))
        .await
        .unwrap();
    // A headless Service with more endpoints than a UDP answer holds.
    services
        .create(&service("big", json!({"clusterIP": "None"})))
        .await
        .unwrap();
    let big: Vec<String> = (1..=100).map(|i| format!("10.244.3.{i}")).collect();
    store
        .api::<EndpointSlice>("default")
        .create(&slice("big", &big))
        .await
        .unwrap();

    let upstream = Upstream::start();
    let (server, metrics, _informers) =
        start_responder(&store, upstream.addr, Duration::from_secs(2)).await;
    wait_for(server, "nginx.default.svc.cluster.local", &[&cluster_ip]).await;

    let checks = tokio::task::spawn_blocking(move || {
        // Short names as a pod's search list expands them, over UDP and TCP.
        for short in [
            "nginx",
            "nginx.default",
            "nginx.default.svc",
            "nginx.default.svc.cluster.local",
        ] {
            for transport in [&[][..], &["+tcp"][..]] {
                let (full, answer) = resolve_like_a_pod(server, short, transport);
                assert_eq!(
                    answer.data(),
                    std::slice::from_ref(&cluster_ip),
                    "{short} {transport:?}"
                );
                assert!(answer.flags.contains("aa"), "{answer:?}");
                let fields: Vec<&str> = answer.answers[0].split_whitespace().collect();
                assert_eq!(fields[1..4], ["5", "IN", "A"], "TTL 5: {answer:?}");
                if short == "nginx" {
                    assert_eq!(full, "nginx.default.svc.cluster.local.");
                }
            }
        }
        // An IPv4-only Service has no AAAA: an empty NOERROR.
        let aaaa = dig(server, &["nginx.default.svc.cluster.local", "AAAA"]);
        assert_eq!(aaaa.status, "NOERROR");
        assert!(aaaa.answers.is_empty(), "{aaaa:?}");
        // SRV for a named port.
        let srv = dig(
            server,
            &["_http._tcp.nginx.default.svc.cluster.local", "SRV"],
        );
        assert_eq!(srv.data(), ["nginx.default.svc.cluster.local."], "{srv:?}");
        assert!(srv.answers[0].contains(" 80 "), "{srv:?}");
        // A headless Service: its endpoints' addresses.
        let headless = dig(server, &["db.default.svc.cluster.local"]);
        assert_eq!(headless.data(), db, "{headless:?}");
        // Unknown names of the cluster domain: NXDOMAIN, never forwarded.
        for name in [
            "nope.default.svc.cluster.local",
            "nginx.other.svc.cluster.local",
        ] {
            let answer = dig(server, &[name]);
            assert_eq!(answer.status, "NXDOMAIN", "{name}: {answer:?}");
            let answer = dig(server, &["+tcp", name]);
            assert_eq!(answer.status, "NXDOMAIN", "{name} over TCP: {answer:?}");
        }
        // Too many addresses for UDP: TC set and no records; TCP has them all.
        let cut = dig(server, &["+ignore", "big.default.svc.cluster.local"]);
        assert!(cut.flags.split(' ').any(|f| f == "tc"), "{cut:?}");
        assert!(cut.answers.is_empty());
        let cut = dig(
            server,
            &["+ignore", "+noedns", "db.default.svc.cluster.local"],
        );
        assert!(!cut.flags.split(' ').any(|f| f == "tc"), "{cut:?}");
        let whole = dig(server, &["+tcp", "big.default.svc.cluster.local"]);
        assert_eq!(whole.data().len(), 100, "{whole:?}");
        // dig without +ignore retries over TCP by itself.
        let retried = dig(server, &["big.default.svc.cluster.local"]);
        assert_eq!(retried.data().len(), 100);
        // Names outside the cluster go to the upstream, over UDP and TCP.
        for transport in [&[][..], &["+tcp"][..]] {
            let mut args = vec!["www.example.com"];
            args.extend_from_slice(transport);
            let forwarded = dig(server, &args);
            assert_eq!(forwarded.status, "NOERROR", "{forwarded:?}");
            assert_eq!(forwarded.data(), ["192.0.2.1"], "{forwarded:?}");
        }
    });
    checks.await.unwrap();
    let asked = upstream.asked.lock().unwrap().clone();
    assert!(
        asked.iter().all(|n| !n.ends_with("cluster.local")),
        "{asked:?}"
    );
    assert_eq!(
        asked
            .iter()
            .filter(|n| n.as_str() == "www.example.com")
            .count(),
        2,
        "{asked:?}"
    );

    let text = metrics.encode().unwrap();
    for line in [
        "orca_dns_queries_total{result=\"nxdomain\"}",
        "orca_dns_queries_total{result=\"noerror\"}",
        "orca_dns_queries_total{result=\"forwarded\"} 2",
        "orca_dns_forwarded_total 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // A changed Service is answered anew once the cache has it.
    let api = store.api::<EndpointSlice>("default");
    let mut changed = api.get("db-abcde").await.unwrap();
    changed.endpoints.truncate(1);
    api.update(&changed).await.unwrap();
    wait_for(server, "db.default.svc.cluster.local", &["10.244.1.5"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_servfail_in_time() {
    let etcd = Etcd::start();
    let store = Store::connect(StoreConfig::new(etcd.endpoint()))
        .await
        .unwrap();
    // Bound, never read: queries to it go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (server, metrics, _informers) = start_responder(
        &store,
        silent.local_addr().unwrap(),
        Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || dig(server, &["www.example.com"]))
        .await
        .unwrap();
    assert_eq!(answer.status, "SERVFAIL", "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("orca_dns_upstream_failures_total 1"),
        "{text}"
    );
    drop(silent);
}
