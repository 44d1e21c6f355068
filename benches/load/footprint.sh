#!/usr/bin/env bash
# The footprint of a local cluster from `orca up --nodes 3`: the time from
# `orca up` to every node Ready, the time from applying the example (nginx,
# three replicas, its Service and Ingress) to the three replicas available,
# and, idle with the example running, the RSS of one master process and of
# one node process (the kubelet, the node proxy, the DNS responder and the
# log shipper in one) with the monitors of that node's pods counted in;
# etcd aside. The images come from a registry in the cluster's hub, as in
# the demo, pulled before the timed apply by a warm-up Deployment.
#
# Usage: benches/load/footprint.sh        (root; builds the release binaries)
#
# Latest figures (2026-12-07, this 2-core machine, release build):
#
#   orca up --nodes 3, to every node Ready        1.0 s    (target < 10 s)
#   apply to 3 replicas available                 0.2 s    (target < 5 s)
#   master RSS                                   25.3 MiB
#   node RSS (node-1) + its monitors             27.6 MiB (1 monitor)
#   master + node                                53.0 MiB (target < 64 MiB;
#                                                k3s asks for 512 MiB)
#
# What bounds them: `orca up` is etcd's start (about 0.2 s) and three
# processes registering; the apply is the scheduler, three kubelets each
# starting one container (runc) and the readiness of the Deployment; the
# RSS is mostly the processes' shared caches and their runtimes' threads.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "footprint.sh needs root (orca up)" >&2; exit 1; }
scripts/deps.sh
cargo build --release --locked --bin orca --bin orca-monitor
orca=$PWD/target/release/orca

work=$(mktemp -d -t orca-footprint-XXXXXX)
state=$work/orca-fp-$$
hub=/run/netns/orca-fp-$$-hub
registry_pid=
cleanup() {
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    [ -e "$state/cluster.json" ] && "$orca" down --state "$state" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

cat >"$work/kubelet.yaml" <<EOF
registries:
  docker.io: {mirrors: ["http://172.30.0.1:5000"]}
EOF
t0=$(now)
"$orca" up --nodes 3 --kubelet-config "$work/kubelet.yaml" --state "$state" >"$work/up.log"
t1=$(now)
export ORCA_CLUSTER=$state/client.yaml

cat >"$work/registry.yaml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: "172.30.0.1:5000"}
EOF
nsenter "--net=$hub" docker-registry serve "$work/registry.yaml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 200); do
    nsenter "--net=$hub" bash -c 'exec 3<>/dev/tcp/172.30.0.1/5000' 2>/dev/null && break
    sleep 0.05
done
nsenter "--net=$hub" scripts/nginx-image.sh 172.30.0.1:5000 1.7.9 >/dev/null

# A warm-up Deployment of the same image on every node pulls it, so the
# timed apply measures the cluster, not the registry.
sed -e 's/name: nginx-deployment/name: warm-up/' -e 's/app: nginx/app: warm-up/' \
    examples/nginx-deployment.yaml | "$orca" apply -f - >/dev/null
"$orca" rollout status deployment/warm-up --timeout 120s >/dev/null
"$orca" delete deployment warm-up >/dev/null

t2=$(now)
"$orca" apply -f examples/ >/dev/null
until [ "$("$orca" get deployment nginx-deployment -o json |
    sed -n 's/^    "availableReplicas": \([0-9]*\),\{0,1\}$/\1/p')" = 3 ]; do
    sleep 0.02
done
t3=$(now)

# Idle: the warm-up's pods gone, the example's running.
until ! "$orca" get pods | grep -q '^warm-up-'; do sleep 0.1; done
sleep 5
pid_of() {
    python3 -c 'import json,sys; print(next(p["pid"] for p in json.load(open(sys.argv[1]))["processes"] if p["what"] == sys.argv[2]))' \
        "$state/cluster.json" "$1"
}
master=$(rss_kib "$(pid_of master-1)")
node=$(rss_kib "$(pid_of node-1)")
monitors=0
count=0
for pid in $(pgrep -f orca-monitor); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$state/node-1/"; then
        monitors=$((monitors + $(rss_kib "$pid")))
        count=$((count + 1))
    fi
done

awk -v up="$(echo "$t1 - $t0" | bc)" -v apply="$(echo "$t3 - $t2" | bc)" \
    -v master="$master" -v node="$node" -v monitors="$monitors" -v count="$count" 'BEGIN {
    printf "orca up --nodes 3, to every node Ready      %5.1f s    (target < 10 s)\n", up
    printf "apply to 3 replicas available               %5.1f s    (target < 5 s)\n", apply
    printf "master RSS                                  %5.1f MiB\n", master / 1024
    printf "node RSS (node-1) + its monitors            %5.1f MiB (%d monitor(s))\n", (node + monitors) / 1024, count
    printf "master + node                               %5.1f MiB (target < 64 MiB)\n", (master + node + monitors) / 1024
}'
