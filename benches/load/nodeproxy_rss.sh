#!/usr/bin/env bash
# The node proxy as a process at scale: N Services (each with one port and
# an EndpointSlice of 10 ready endpoints on 3 nodes) are applied to a real
# etcd with `orca apply`, then `orca node-proxy` starts against it,
# programming a network namespace this script creates, and the script
# prints the time to the first sync and the process's peak and current RSS
# once it is in (what benches/nodeproxy.rs cannot show: the watch, the
# objects and the runtime, not only the proxier).
#
# Usage (root): benches/load/nodeproxy_rss.sh [SERVICES]   (default 10000)
# Needs: etcd (etcd-server), python3, curl, iproute2; builds the release
# binary. Only loopback and the namespace it creates are touched.
#
# Latest figures (2026-11-30, this 2-core machine, release build, 10000
# Services, builds running beside it):
#
#   first sync after start       3.2 s (list of 20000 objects and the full sync)
#   RSS once synced              peak 57.1 MiB, then 40.0 MiB
#
# Before the store decoded objects straight into their types, the tracker
# kept them reduced and the full sync gave its memory back: peak 409.6
# MiB, then 395.7 MiB. Before the sync streamed its operations into the
# netlink batch (it built the whole operation list, ~40 MiB, first): peak
# 105.3 MiB. The peak is now the 14 MiB batch on top of the state.
set -euo pipefail
cd "$(dirname "$0")/../.."

services=${1:-10000}
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, nftables)" >&2; exit 1; }
for tool in etcd python3 curl ip; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

cargo build --release --locked --bin orca
orca=$PWD/target/release/orca
work=$(mktemp -d -t orca-nodeproxy-rss-XXXXXX)
netns=orca-rss-$$
etcd_pid= proxy_pid=
# Every step may fail (a process already gone, `wait` reporting its
# signal) without stopping the rest: this runs under `set -e`.
stop() {
    if [ -n "$1" ]; then
        kill "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$proxy_pid"
    stop "$etcd_pid"
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port) peer=$(free_port) admin=$(free_port)
etcd --name rss --data-dir "$work/etcd" --quota-backend-bytes 4294967296 \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "rss=http://127.0.0.1:$peer" --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
export ORCA_ETCD="http://127.0.0.1:$port"

echo "== writing $services Services and EndpointSlices"
python3 benches/load/services.py "$services" >"$work/services.yaml"
"$orca" apply -f "$work/services.yaml" >/dev/null

ip netns add "$netns"
ip -n "$netns" link set lo up
echo "== orca node-proxy against $services Services"
start=$(date +%s.%N)
"$orca" node-proxy --node node-0 --cluster-cidr 10.128.0.0/9 --admin "127.0.0.1:$admin" \
    --netns "/run/netns/$netns" >"$work/node-proxy.log" 2>&1 &
proxy_pid=$!
until curl -sf "http://127.0.0.1:$admin/metrics" 2>/dev/null \
    | grep -q "^orca_node_proxy_services{family=\"ip\"} $services\$"; do
    kill -0 "$proxy_pid" 2>/dev/null || { cat "$work/node-proxy.log" >&2; exit 1; }
    sleep 0.05
done
synced=$(date +%s.%N)
sleep 2
rss() { awk -v k="$1" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$proxy_pid/status"; }
awk -v a="$start" -v b="$synced" 'BEGIN { printf "first sync after start       %.1f s\n", b - a }'
echo "RSS once synced              peak $(rss VmHWM) MiB, then $(rss VmRSS) MiB"
