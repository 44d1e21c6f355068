#!/usr/bin/env bash
# Orca's ingress proxy against nginx and HAProxy, side by side, in one run.
#
# Run (root, Debian 12): benches/load/ingress_vs.sh   [DURATION=5 by default]
#
# One backend (nginx, one worker) serves a 2-byte and a 16 KiB body. Each
# proxy runs one worker pinned to core 0; the backend and the load generator
# share core 1. wrk drives HTTP/1.1 keep-alive at 64 and 256 connections,
# plain and with TLS terminated at the proxy; h2load drives HTTP/2 over TLS.
# For each run it prints req/s, p50, p99, the proxy's CPU time per request
# (from /proc/PID/stat over the run) and its peak RSS, then the ratios
# Orca/nginx and Orca/HAProxy and one summary line. Loopback only.
#
# Latest result (2026-11-25, this 2-core machine, DURATION=5, one run with
# another build beside it, so noisy): Orca/nginx req/s 0.83-1.55 over
# 64/256 connections x 2 B/16 KiB x plain/TLS (TLS 1.10-1.55), Orca/HAProxy
# 0.64-1.49; CPU per request Orca/nginx 0.58-1.14; h2load over TLS: Orca
# 27.9k req/s, nginx 33.1k, HAProxy 33.9k; 10k idle keep-alive connections:
# Orca 140 MiB, nginx 24.7, HAProxy 35.0 (Orca measured ~55 MiB by hand after
# idle connections stopped holding buffers). Quote ratios from one run only.
#
# 2026-11-30, after an idle connection's task stopped carrying room for a TLS
# stream and for a request's state (a ~500-byte wait plus its socket, was a
# 3.7 KB task plus a 1.2 KB boxed future): 10k idle keep-alive connections in
# a fresh `orca ingress --workers 1`, each after one request, VmRSS 25.5 MiB
# (was 55.3). This script measures them after its load runs, and there Orca
# read 61.1 MiB (nginx 24.6, HAProxy 34.9; same run: Orca/nginx req/s
# 0.77-1.21, noisy, a build beside it): that is what h2load leaves behind,
# not the idle connections. After h2load alone Orca holds 48.6 MiB, with ~540
# upstream HTTP/1 connections of the h2 bridge still pooled.
#
# 2026-11-30, after the h2 clients' HTTP/1.1 upstream connections joined the
# idle pool (cap per endpoint, closed after the upstream's idle_timeout; both
# pools now expire on that timeout, was 300 s): fresh `orca ingress --workers
# 1`, TLS listener, nginx backend, `h2load -n 100000 -c 64 -m 10`, one run
# each: before, 52.8 MiB VmRSS 1 s and 35 s after, 640 upstream connections
# still open; after, 52.6 MiB at 1 s (640 open) and 50.4 MiB at 35 s with
# none open. The rest is freed memory glibc keeps: malloc_trim(0) (by gdb)
# brought a like run from 49.6 to 17.1 MiB. Spare buffers per worker
# 1024 -> 64: wrk -c256 2 B 14.7-15.5k vs 14.8-15.9k req/s, 16 KiB
# 11.3-11.8k vs 11.2-11.4k (two runs each, noisy).
#
# 2026-11-30, later (nothing else running; one run): after the wait between
# requests stopped costing a read that would block, the request id stopped
# asking the kernel for the pid (4 system calls per request, were 6) and a
# worker kept enough spare buffers not to zero a fresh one per request:
# Orca/nginx req/s 0.92-1.29 (plain 0.92-1.23, TLS 1.00-1.29), Orca/HAProxy
# 0.95-1.21; CPU per request Orca/nginx 0.94-1.05 plain, 0.65-0.79 TLS;
# p99 Orca/nginx 0.54-1.29 but 3.44 and 2.05 with TLS at 256 connections
# (the 256 handshakes at the start); h2load over TLS: Orca 14.8k req/s,
# nginx 22.5k, HAProxy 19.8k; 10k idle connections after the loads: Orca
# 35.4 MiB (nginx 24.5, HAProxy 35.1). Orca and nginx spend ~67% of their
# CPU in the kernel here (perf), on the same system calls per request.
#
# The next run, same binary, the script now also measuring the idle
# connections in a new Orca process: Orca/nginx req/s 0.77-1.48 (plain
# 16 KiB at 64 connections 0.77, CPU 1.30; the run before read 0.92 and
# 1.05 there), CPU per request 0.95-1.30 plain, 0.67-0.89 TLS; p99 0.85-1.13
# but 3.64 with TLS at 256 connections and 16 KiB; h2load: Orca 9.9k req/s,
# nginx 15.9k, HAProxy 17.1k; 10k idle connections: Orca 33.2 MiB after the
# loads, 22.7 MiB in a new process (nginx 24.6, HAProxy 35.0).
#
# 2026-11-30, a quiet machine, one run, with the TLS handshake-burst lines
# added: Orca/nginx req/s 0.89-1.69 (plain 0.89-1.10, TLS 1.10-1.69),
# Orca/HAProxy 0.79-1.66; CPU per request Orca/nginx 0.83-1.10 plain,
# 0.55-0.91 TLS; p99 Orca/nginx 0.87-1.20, but 6.46 and 3.15 with TLS at 256
# connections; h2load: Orca 11.7k req/s, nginx 16.3k, HAProxy 20.7k; 10k idle
# connections 34.5 MiB after the loads, 23.6 MiB in a new process (nginx
# 24.6, HAProxy 35.3). The TLS p99 at 256 connections is the burst of 256
# handshakes at the start, and a choice of order, not a slower handshake
# (ring signs RSA-2048 in 0.84 ms here, OpenSSL in 0.93 ms): nginx signs
# every ClientHello before it finishes any handshake, so its clients connect
# late (h2load: connect 258-383 ms, mean 347) but send their first requests
# when the burst is over; Orca finishes each handshake as its ClientHello is
# handled (connect 65-318 ms, mean 182), so the clients that connected first
# send requests that wait behind the handshakes still to do (request max 274
# ms against nginx's 140, means 19.6 and 20.5 ms). A client's first answer
# comes sooner from Orca; wrk counts only the request's wait. Accepting one
# connection per turn of the worker, as nginx does, changed nothing
# measurable (tried, not kept).
#
# 2026-11-30, after upstream responses got 32 KiB read buffers (a 16 KiB
# response in one read and one write instead of two of each), one run, a
# quiet machine: Orca/nginx req/s 0.82-1.53 (plain 1.04-1.53, TLS
# 0.82-1.42), Orca/HAProxy 0.80-1.50; CPU per request Orca/nginx 0.61-0.87
# plain (16 KiB: 0.61 and 0.87; the runs before read 0.83-1.10), 0.59-0.94
# TLS; p99 0.75-1.21, but 1.96 and 5.33 with TLS at 256 connections (the
# handshake burst above); h2load: Orca 12.8k req/s, nginx 15.5k, HAProxy
# 17.4k; 10k idle connections: 39.1 MiB after the loads, 24.7 MiB in a new
# process (nginx 24.6, HAProxy 35.1). The same TLS row at 256 connections
# and 16 KiB read 1.13-1.34 in the three runs before: ratios from single
# runs swing by a third here.
#
# 2026-11-30, after a worker began answering one ClientHello at a time,
# after the connections that are ready (one run; the machine ran about a
# third as fast as on other days, the backend direct at 21k req/s with 64
# connections): Orca/nginx req/s 0.90-1.36 (plain 0.90-1.11, TLS
# 0.99-1.36), Orca/HAProxy 0.99-1.55; CPU per request 0.78-1.05 plain,
# 0.62-1.06 TLS; p99 0.40-1.03 except plain 64 connections 2 B (1.35); with
# TLS at 256 connections p99 0.78 and 0.91 (were 1.96 and 5.33): the burst
# of handshakes no longer queues the first clients' requests behind it
# (h2load --h1 -c256: request max 74 ms, nginx 146, HAProxy 383). h2load
# over TLS: Orca 11.3k req/s, nginx 15.4k, HAProxy 15.4k; four alternating
# rounds by hand right after read Orca/nginx 0.77, 0.87, 0.97, 0.98, both
# using their whole core. 10k idle connections: 24.8 MiB in a new process.
#
# 2026-11-30, after HTTP/2 clients' requests to HTTP/1.1 upstreams went
# through the proxy's own exchange instead of hyper's client (one run):
# h2load over TLS Orca 12.6k req/s, nginx 14.1k, HAProxy 18.2k (Orca/nginx
# 0.89; the same A/B by hand, four rounds, +17-32% req/s and 15-25% less
# CPU per request than the build before). wrk: Orca/nginx req/s 0.95-1.63
# (plain 0.95-1.54, TLS 1.17-1.63), Orca/HAProxy 0.83-1.86; CPU per
# request 0.67-1.07 plain, 0.48-0.80 TLS; p99 0.56-1.19; 10k idle
# connections 25.0 MiB in a new process (27.0 after the loads).
#
# 2026-11-30, the last run of the day (fewer allocations per HTTP/2
# request, the last DATA frame ending the stream; a quiet machine): every
# wrk row Orca/nginx req/s 1.01-1.21 (plain 1.01-1.15, TLS 1.03-1.21),
# Orca/HAProxy 0.96-1.46; CPU per request 0.76-0.99 plain (256 connections
# 2 B 0.99, 16 KiB 0.85 and 0.89), 0.64-0.79 TLS; p99 0.63-1.06; h2load
# over TLS Orca 17.4k req/s, nginx 16.4k, HAProxy 17.6k (Orca/nginx 1.06);
# 10k idle connections 24.9 MiB in a new process (26.9 after the loads).
#
# 2026-12-04, after a response's head and a body over 4 KiB began going out
# in one writev instead of the body being copied behind the head (A/B by
# hand, wrk -c64 16 KiB, three rounds: 3-7% less CPU per request); one
# run, nothing else running: Orca/nginx req/s 0.94-0.95 plain, 1.01-1.15
# TLS; Orca/HAProxy 0.89-1.19; CPU per request 0.90-1.01 plain, 0.68-0.88
# TLS; p99 0.78-1.19; h2load over TLS Orca 54.7k req/s, nginx 40.8k,
# HAProxy 39.0k (1.34x nginx); 10k idle connections 24.2 MiB in a new
# process (27.0 after the loads). In this run every proxy got within 5-10%
# of the backend direct, the generator's core the bound, so the plain rows
# tell little apart; ~77% of Orca's CPU per plain request is the kernel
# (perf), on 4 system calls per request to nginx's ~5.
#
# 2026-12-04, later, with the kernel% column (the share of each proxy's CPU
# time that is system time); one run, nothing else running: Orca/nginx
# req/s 0.95-1.04 plain 2 B, 1.01-1.18 plain 16 KiB, 0.88-1.19 TLS;
# Orca/HAProxy 0.87-1.46; CPU per request 0.91-1.02 plain 2 B, 0.73-0.84
# plain 16 KiB, 0.62-1.00 TLS; p99 0.55-1.08; h2load Orca 44.7k req/s,
# nginx 40.8k, HAProxy 47.1k; 10k idle connections 23.0 MiB in a new
# process. kernel% on plain 2 B: Orca 75-77, nginx 77-79, HAProxy 72: at
# 64 connections Orca's system time alone was 13.7 us per request, nginx's
# whole CPU 17.8, so 0.8x nginx would leave Orca ~0.5 us of user time per
# request. Both proxies send the same 4 TCP segments per request (nstat).
#
# 2026-12-07, after one dispatch path for every protocol pair (the
# HTTP/1.1 exchange split into send and relay): the commit before (3ac9533,
# which already checked pooled connections with MSG_PEEK and had the
# HTTP/2 send and body-read timeouts, none of it measured here before) and
# after, one full run each, back to back, nothing else running. Orca/nginx req/s before 0.84-1.16 (plain 0.96-1.04, TLS
# 0.84-1.16), after 0.84-1.34 (plain 0.84-0.89, TLS 0.95-1.34); CPU per
# request Orca/nginx before 0.64-1.00, after 0.55-1.10; h2load over TLS
# Orca 32.6k / 32.3k req/s, nginx 30.6k / 31.4k, HAProxy 31.6k / 34.7k; 10k
# idle connections Orca 31.5 / 29.6 MiB. The plain rows read lower after,
# so the two binaries were run side by side (wrk -c64, 2 B, 4 s, four
# alternating rounds each): before 28.5k, after 28.2k req/s on average
# (-1%), inside the rounds' own spread of 27.1k-29.4k. Both runs sit in
# the range the runs above recorded.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5}
ulimit -n 65536 2>/dev/null || true
for tool in wrk h2load nginx haproxy openssl taskset python3; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install wrk nghttp2-client nginx-light haproxy openssl util-linux" >&2
        exit 1
    }
done
# ORCA_BIN: an orca binary already built; otherwise build one.
if [ -z "${ORCA_BIN:-}" ]; then
    cargo build --release --locked --bin orca >&2
fi
ORCA=${ORCA_BIN:-$PWD/target/release/orca}

work=$(mktemp -d -t orca-ingress-bench-XXXXXX)
# nginx workers drop root; they must be able to read the bodies.
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

BACKEND=127.0.0.1:28000
ORCA_HTTP=28101 ORCA_TLS=28102 NGINX_HTTP=28201 NGINX_TLS=28202 HAP_HTTP=28301 HAP_TLS=28302

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench.local \
    -addext subjectAltName=DNS:bench.local \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/haproxy.pem"
head -c 16384 /dev/zero | tr '\0' 'x' >"$work/16k"
printf 'ok' >"$work/2b"

# The backend: nginx with one worker, keep-alive without limits.
mkdir -p "$work/backend"
cat >"$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/backend;
    server {
        listen $BACKEND reuseport backlog=4096;
        location = /2b  { alias $work/2b; }
        location = /16k { alias $work/16k; }
    }
}
CONF
taskset -c 1 nginx -c "$work/backend.conf" -e "$work/backend/error.log" &
pids+=($!)

# Orca.
orca_config() { # $1: file, $2: the listeners
    cat >"$1" <<CONF
workers: 1
listeners:
$2
routes:
  - path: /
    upstream: backend
upstreams:
  - name: backend
    endpoints: ["$BACKEND"]
CONF
}
orca_config "$work/orca.yaml" "  - name: web
    address: 127.0.0.1:$ORCA_HTTP
  - name: websecure
    address: 127.0.0.1:$ORCA_TLS
    tls:
      certificates:
        - cert: $work/cert.pem
          key: $work/key.pem"
RUST_LOG=warn,rustls=error taskset -c 0 "$ORCA" ingress --config "$work/orca.yaml" --workers 1 &
orca_pid=$!
pids+=($orca_pid)

# nginx as a proxy: one worker, upstream keep-alive with a pool as large as
# the concurrency (a smaller pool reconnects on most requests).
mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/nginx;
    proxy_temp_path $work/nginx;
    upstream backend { server $BACKEND; keepalive 1024; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGINX_HTTP reuseport backlog=4096;
        listen 127.0.0.1:$NGINX_TLS ssl http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
taskset -c 0 nginx -c "$work/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)

cat >"$work/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend web
    bind 127.0.0.1:$HAP_HTTP
    bind 127.0.0.1:$HAP_TLS ssl crt $work/haproxy.pem alpn h2,http/1.1
    default_backend backend
backend backend
    server b1 $BACKEND
CONF
taskset -c 0 haproxy -f "$work/haproxy.cfg" -db &
pids+=($!)
sleep 1.5

# The worker, not the master, does the proxying.
nginx_pid=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
hap_pid=$(pgrep -n -f "haproxy -f $work/haproxy.cfg")

# User and system clock ticks, "utime stime".
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
to_ms() { # wrk latency like 1.23ms / 456.00us / 1.01s -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
HZ=$(getconf CLK_TCK)

declare -A RPS P99 CPU
# kernel%: the share of the proxy's CPU time spent in the kernel.
printf '%-8s %-5s %-6s %-5s %10s %8s %8s %10s %7s %9s\n' proxy proto conns body req/s p50ms p99ms cpu_us/req kernel% rss_MiB
run() { # name pid url conns body
    local name=$1 pid=$2 url=$3 conns=$4 body=$5 proto=$6
    local before after out rps p50 p99 cpu kernel
    [ "$pid" != "-" ] && before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$url/$body" 2>&1)
    [ "$pid" != "-" ] && after=$(cpu_ticks "$pid")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    if [ "$pid" != "-" ]; then
        read -r cpu kernel < <(awk -v b="$before" -v a="$after" -v hz="$HZ" -v r="$rps" -v d="$DURATION" 'BEGIN {
            split(b, x, " "); split(a, y, " "); u = y[1] - x[1]; s = y[2] - x[2]
            printf "%.1f %.0f\n", (u + s) / hz * 1e6 / (r * d), (u + s > 0 ? 100 * s / (u + s) : 0) }')
        rss=$(awk -v k="$(peak_rss "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')
    else
        cpu=- kernel=- rss=-
    fi
    local errors
    errors=$(awk '/Non-2xx|Socket errors/ {printf "%s ", $0}' <<<"$out")
    printf '%-8s %-5s %-6s %-5s %10s %8s %8s %10s %7s %9s %s\n' "$name" "$proto" "$conns" "$body" "$rps" "$p50" "$p99" "$cpu" "$kernel" "$rss" "$errors"
    RPS[$name,$proto,$conns,$body]=$rps
    P99[$name,$proto,$conns,$body]=$p99
    CPU[$name,$proto,$conns,$body]=$cpu
}

for body in 2b 16k; do
    for conns in 64 256; do
        run direct - "http://$BACKEND" "$conns" "$body" http
        run orca "$orca_pid" "http://127.0.0.1:$ORCA_HTTP" "$conns" "$body" http
        run nginx "$nginx_pid" "http://127.0.0.1:$NGINX_HTTP" "$conns" "$body" http
        run haproxy "$hap_pid" "http://127.0.0.1:$HAP_HTTP" "$conns" "$body" http
        run orca "$orca_pid" "https://127.0.0.1:$ORCA_TLS" "$conns" "$body" https
        run nginx "$nginx_pid" "https://127.0.0.1:$NGINX_TLS" "$conns" "$body" https
        run haproxy "$hap_pid" "https://127.0.0.1:$HAP_TLS" "$conns" "$body" https
    done
done

echo
echo "HTTP/2 over TLS (h2load -c64 -m10, 2-byte body):"
for target in "orca https://127.0.0.1:$ORCA_TLS" "nginx https://127.0.0.1:$NGINX_TLS" "haproxy https://127.0.0.1:$HAP_TLS"; do
    set -- $target
    out=$(taskset -c 1 h2load -c64 -m10 -D "$DURATION" "$2/2b" 2>&1 || true)
    if grep -q "^Application protocol: h2" <<<"$out"; then
        printf '%-8s %s; %s\n' "$1" "$(grep -m1 'finished in' <<<"$out")" "$(grep -m1 '^requests:' <<<"$out")"
    else
        printf '%-8s h2 not negotiated\n' "$1"
    fi
done

echo
# wrk times a request from when it is written, after the handshake: what a
# burst of handshakes costs shows as the wait of the requests served during
# it. h2load shows both sides: how long connecting took, and the requests.
echo "256 new TLS connections at once, then HTTP/1.1 (h2load --h1 -c256, 200 requests each;"
echo "min / max / mean in ms):"
for target in "orca https://127.0.0.1:$ORCA_TLS" "nginx https://127.0.0.1:$NGINX_TLS" "haproxy https://127.0.0.1:$HAP_TLS"; do
    set -- $target
    out=$(taskset -c 1 h2load --h1 -c256 -n 51200 "$2/2b" 2>&1 || true)
    awk -v name="$1" '
        /^time for connect:/ { c = sprintf("connect %s / %s / %s", $4, $5, $6) }
        /^time for request:/ { r = sprintf("request %s / %s / %s", $4, $5, $6) }
        END { printf "%-8s %s; %s\n", name, c, r }' <<<"$out"
done

echo
echo "RSS with 10k idle keep-alive connections (each made one request):"
idle_rss() { # name pid port
    rm -f "$work/idle.ready" "$work/idle.done"
    python3 - "$3" "$work" <<'PY' &
import os, socket, sys, time
port, work = int(sys.argv[1]), sys.argv[2]
conns = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /2b HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.recv(4096)
    conns.append(s)
open(os.path.join(work, "idle.ready"), "w").close()
deadline = time.time() + 60
while not os.path.exists(os.path.join(work, "idle.done")) and time.time() < deadline:
    time.sleep(0.05)
PY
    local py=$! rss
    while [ ! -e "$work/idle.ready" ] && kill -0 "$py" 2>/dev/null; do sleep 0.1; done
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$2/status")
    touch "$work/idle.done"
    wait "$py" 2>/dev/null || true
    printf '%-8s %8s MiB\n' "$1" "$rss"
}
idle_rss orca "$orca_pid" "$ORCA_HTTP"
idle_rss nginx "$nginx_pid" "$NGINX_HTTP"
idle_rss haproxy "$hap_pid" "$HAP_HTTP"
# The same in an Orca that served no load before: what the idle connections
# cost, without what the loads above left pooled (HTTP/1 upstream
# connections of the HTTP/2 clients stay until their idle timeout).
ORCA_FRESH=28103
orca_config "$work/orca-fresh.yaml" "  - name: web
    address: 127.0.0.1:$ORCA_FRESH"
RUST_LOG=warn,rustls=error taskset -c 0 "$ORCA" ingress --config "$work/orca-fresh.yaml" --workers 1 &
fresh_pid=$!
pids+=($fresh_pid)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$ORCA_FRESH") 2>/dev/null && break; sleep 0.05; done
idle_rss "orca new" "$fresh_pid" "$ORCA_FRESH"

echo
printf '%-5s %-6s %-5s %12s %12s %14s %14s\n' proto conns body orca/nginx orca/haproxy cpu_orca/nginx p99_orca/nginx
worst=
for body in 2b 16k; do for conns in 64 256; do for proto in http https; do
    k="$proto,$conns,$body"
    r1=$(awk -v a="${RPS[orca,$k]}" -v b="${RPS[nginx,$k]}" 'BEGIN { printf "%.2f", a / b }')
    r2=$(awk -v a="${RPS[orca,$k]}" -v b="${RPS[haproxy,$k]}" 'BEGIN { printf "%.2f", a / b }')
    c1=$(awk -v a="${CPU[orca,$k]}" -v b="${CPU[nginx,$k]}" 'BEGIN { printf "%.2f", a / b }')
    p1=$(awk -v a="${P99[orca,$k]}" -v b="${P99[nginx,$k]}" 'BEGIN { printf "%.2f", a / b }')
    printf '%-5s %-6s %-5s %12s %12s %14s %14s\n' "$proto" "$conns" "$body" "$r1" "$r2" "$c1" "$p1"
    worst=$(awk -v w="${worst:-99}" -v r="$r1" 'BEGIN { print (r < w) ? r : w }')
done; done; done
echo
echo "summary: worst orca/nginx req/s ratio ${worst}; orca peak RSS $(awk -v k="$(peak_rss "$orca_pid")" 'BEGIN { printf "%.1f", k / 1024 }') MiB"
