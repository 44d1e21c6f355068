#!/usr/bin/env bash
# Leader takeover: two `orca master`s on one etcd; the leader is SIGKILLed
# (its Lease is never revoked, so it has to expire) and the time until the
# other logs "became leader" is measured, ROUNDS times, for a lease TTL.
# The bound is the TTL itself: a survivor may take over only once the dead
# leader's lease has expired (etcd checks expiry about every 500 ms), and
# it campaigns on the key's deletion, not on a poll.
#
# Usage: benches/load/takeover.sh [TTL] [ROUNDS]   (default 3s 5)
# Needs: etcd (etcd-server), python3; builds the release binary.
# Only loopback is touched.
#
# Latest figures (2026-12-07, this 2-core machine, release build):
#
#   lease TTL 3 s:   3.15, 3.26, 3.27, 3.27, 3.28 s
#   lease TTL 15 s:  14.78, 14.79, 14.76 s (the default)
#
# The dead leader renewed a third of a TTL apart, so its lease expires
# between two thirds of a TTL and a whole one after the kill; etcd sees
# the expiry on its next check (every 500 ms), and the survivor, waiting
# on the key, campaigns at once: within the TTL and that check step.
set -euo pipefail
cd "$(dirname "$0")/../.."

ttl=${1:-3s}
rounds=${2:-5}
for tool in etcd python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
cargo build --release --locked --bin orca
orca=$PWD/target/release/orca
work=$(mktemp -d -t orca-takeover-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port) peer=$(free_port)
etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
export ORCA_ETCD="http://127.0.0.1:$port"

declare -A master_pid
start_master() {
    local name=$1
    printf 'workers: 1\nlisteners: [{name: web, address: "127.0.0.1:%s"}]\nadmin: {address: "127.0.0.1:%s"}\n' \
        "$(free_port)" "$(free_port)" >"$work/$name.yaml"
    RUST_LOG=info "$orca" master --config "$work/$name.yaml" --identity "$name" --leader-ttl "$ttl" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    master_pid[$name]=$!
}
# Waits for `name`'s log to say it leads; prints when, in seconds since the epoch.
led_at() {
    local name=$1
    until grep -q "became leader" "$work/$name.log"; do
        kill -0 "${master_pid[$name]}" || { tail "$work/$name.log" >&2; exit 1; }
        sleep 0.01
    done
    date +%s.%N
}

start_master m0
led_at m0 >/dev/null
leader=m0 n=1
for round in $(seq "$rounds"); do
    standby=m$n
    n=$((n + 1))
    start_master "$standby"
    # The standby waits on the key once it has logged that it stands by.
    until grep -q "standing by" "$work/$standby.log"; do
        sleep 0.01
    done
    killed=$(date +%s.%N)
    kill -9 "${master_pid[$leader]}"
    wait "${master_pid[$leader]}" 2>/dev/null || true
    took=$(awk -v a="$killed" -v b="$(led_at "$standby")" 'BEGIN { printf "%.2f", b - a }')
    echo "round $round: $standby led ${took} s after $leader was killed (lease TTL $ttl)"
    leader=$standby
done
