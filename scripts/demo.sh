#!/usr/bin/env bash
# Brings up a local Orca cluster (as much of it as exists: etcd so far) and
# runs the main job: apply the nginx Deployment, then show it with `orca get`.
# Everything listens on loopback; the etcd data dir is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
cargo build --locked --bin orca
orca=target/debug/orca

port=${ORCA_DEMO_PORT:-23790}
work=$(mktemp -d -t orca-demo-XXXXXX)
etcd_pid=
cleanup() {
    # Under `set -e`: `wait` reports etcd's signal, which must not stop
    # the cleanup before the data dir is removed.
    if [ -n "$etcd_pid" ]; then
        kill "$etcd_pid" 2>/dev/null || true
        wait "$etcd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

for p in "$port" "$((port + 1))"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; choose another with ORCA_DEMO_PORT=N" >&2
        exit 1
    fi
done

echo "== starting etcd on 127.0.0.1:$port (data in $work)"
etcd --name orca-demo --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "orca-demo=http://127.0.0.1:$((port + 1))" \
    --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
etcd_pid=$!
export ORCA_ETCD="http://127.0.0.1:$port"
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$etcd_pid" 2>/dev/null || { cat "$work/etcd.log" >&2; exit 1; }
    sleep 0.1
done

run() { echo; echo "\$ orca $*"; "$orca" "$@"; }
run apply -f examples/nginx-deployment.yaml
run get deployments
run get deploy -o wide
run get namespaces
run describe deployment nginx-deployment
run get deploy nginx-deployment -o yaml
echo
echo "== done; etcd stops now"
