#!/usr/bin/env bash
# Brings up a local Orca cluster, as much of it as exists: etcd, a master (the
# ingress proxy in cluster mode, the scheduler and the controllers) and, as
# root, a node (the node proxy) whose nftables live in a network namespace of
# its own. Then it runs the main job: apply examples/ (the nginx Deployment,
# its Service and Ingress) and show what each component made of it. The
# controllers make the Deployment's ReplicaSet and its three pods, but no
# kubelet exists yet to register a node and run them, so they stay Pending
# and the Service has no endpoints: the demo shows the route and the
# ClusterIP in place, answering "unavailable" as they must until then.
# Everything listens on loopback; the namespace's only routes are blackholes,
# so no packet leaves it. Every process, the namespace and the temp dir go on
# exit, whatever the exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# ORCA_BIN: an orca binary already built (the test suite passes its own);
# otherwise install what is missing and build one.
if [ -n "${ORCA_BIN:-}" ]; then
    orca=$ORCA_BIN
else
    scripts/deps.sh
    cargo build --locked --bin orca
    orca=target/debug/orca
fi

# etcd takes port and port+1 (peer); the master's listener and admin server
# port+2 and port+3; the node's admin server port+4.
port=${ORCA_DEMO_PORT:-23790}
listener=$((port + 2))
master_admin=$((port + 3))
node_admin=$((port + 4))
root=false
[ "$(id -u)" -eq 0 ] && root=true
netns=orca-demo-$$

work=$(mktemp -d -t orca-demo-XXXXXX)
pids=()
cleanup() {
    # Under `set -e`: `wait` reports each process's signal, which must not
    # stop the cleanup before the namespace and the temp dir are removed.
    # The node goes before its namespace, the master before etcd.
    local i pid
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Deleting the namespace deletes the node proxy's nftables table with it.
    # Its name is tested rather than a flag set after `ip netns add`: an
    # interrupted add can leave the name without the flag.
    if [ -e "/run/netns/$netns" ]; then
        ip netns delete "$netns" || true
    fi
    rm -rf "$work"
}
# bash runs it on SIGINT and SIGTERM too.
trap cleanup EXIT

for p in "$port" "$((port + 1))" "$listener" "$master_admin" "$node_admin"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; choose another with ORCA_DEMO_PORT=N (it uses N to N+4)" >&2
        exit 1
    fi
done

# Waits up to 20 s for COMMAND to succeed while process PID (logging to LOG)
# lives; otherwise says what was awaited, shows the log and fails.
wait_for() {
    local what=$1 pid=$2 log=$3
    shift 3
    for _ in $(seq 200); do
        "$@" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: the process died while waiting for $what; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: timed out after 20 s waiting for $what; its log:" >&2
    cat "$log" >&2
    exit 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Exit status 0 when the master's admin server lists the Ingress's route.
route_served() {
    curl -sf "http://127.0.0.1:$master_admin/routes" 2>/dev/null | grep -q '"host":"nginx.local"'
}
node_healthy() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$node_admin/healthz")" = 200 ]
}
# Exit status 0 when the node proxy's table names the Service's ClusterIP.
# /healthz answers after the first sync, which may come before the Service.
cluster_ip_programmed() {
    ip netns exec "$netns" nft list table ip orca 2>/dev/null | grep -qF "$cluster_ip "
}
# Exit status 0 once the scheduler has written why $pod waits.
pod_says_why() {
    "$orca" get pod "$pod" -o json 2>/dev/null | grep -q 'nodes are available'
}
# Exit status 0 once the Deployment's ReplicaSet has made its three pods.
pods_made() {
    [ "$("$orca" get pods 2>/dev/null | grep -c '^nginx-deployment-')" = 3 ]
}

echo "== starting etcd on 127.0.0.1:$port (data in $work)"
etcd --name orca-demo --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "orca-demo=http://127.0.0.1:$((port + 1))" \
    --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
export ORCA_ETCD="http://127.0.0.1:$port"
wait_for "etcd to listen on 127.0.0.1:$port" "${pids[-1]}" "$work/etcd.log" listening "$port"

echo "== starting orca master: ingress listener 127.0.0.1:$listener, admin 127.0.0.1:$master_admin"
cat >"$work/master.yaml" <<EOF
workers: 1
listeners:
  - name: web
    address: 127.0.0.1:$listener
admin:
  address: 127.0.0.1:$master_admin
EOF
"$orca" master --config "$work/master.yaml" >"$work/master.log" 2>&1 &
pids+=($!)
master_pid=${pids[-1]}

if $root; then
    echo "== creating network namespace $netns (lo up; 10.96.0.0/12 and 10.244.0.0/16 blackholed)"
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    ip -n "$netns" route add blackhole 10.96.0.0/12
    ip -n "$netns" route add blackhole 10.244.0.0/16
    echo "== starting orca node demo-node: nftables in $netns, admin 127.0.0.1:$node_admin"
    "$orca" node --node demo-node --netns "/run/netns/$netns" --cluster-cidr 10.244.0.0/16 \
        --admin "127.0.0.1:$node_admin" >"$work/node.log" 2>&1 &
    pids+=($!)
    node_pid=${pids[-1]}
else
    echo "== not root: no node (its proxy programs nftables in a network namespace, which needs root)"
fi

run() { echo; echo "\$ orca $*"; "$orca" "$@"; }
run apply -f examples/
run get deployments -o wide
run get services -o wide
# The store allocated the Service's ClusterIP when it was created.
cluster_ip=$("$orca" get service nginx -o json | sed -n 's/^    "clusterIP": "\(.*\)",$/\1/p')
run get ingresses

echo
echo "== waiting for the master's controllers to make the Deployment's pods"
wait_for "the ReplicaSet's three pods" "$master_pid" "$work/master.log" pods_made
run get replicasets
run get pods -o wide
pod=$("$orca" get pods | awk '/^nginx-deployment-/ { print $1; exit }')
wait_for "the scheduler's verdict on $pod" "$master_pid" "$work/master.log" pod_says_why
echo "(Pending: no kubelet runs yet to register a node; the scheduler says why on each pod:)"
"$orca" get pod "$pod" -o json | sed -n 's/^ *"message": "\(.*nodes are available.*\)",\{0,1\}$/  \1/p'
run get endpointslices
echo "(none: no pod runs, so the Service has no endpoints)"
run describe deployment nginx-deployment

echo
echo "== waiting for the master to serve the Ingress's route${node_pid:+ and the node to be healthy}"
wait_for "the master's /routes to show nginx.local" "$master_pid" "$work/master.log" route_served
if $root; then
    wait_for "the node's /healthz to answer 200" "$node_pid" "$work/node.log" node_healthy
    wait_for "the node proxy to program ClusterIP $cluster_ip" "$node_pid" "$work/node.log" cluster_ip_programmed
fi
echo "\$ curl -s http://127.0.0.1:$master_admin/routes"
curl -s "http://127.0.0.1:$master_admin/routes"
echo

echo
echo "== asking the ingress for nginx.local"
echo "(503 is the right answer today: no kubelet runs the pods yet, so Service nginx has no endpoints)"
echo "\$ curl -s -i -H 'Host: nginx.local' http://127.0.0.1:$listener/"
curl -s -i -H 'Host: nginx.local' "http://127.0.0.1:$listener/"

if $root; then
    echo
    echo "== the node proxy's rules for ClusterIP $cluster_ip in $netns"
    echo "(programmed, and rejecting new connections while the Service has no endpoints;"
    echo " the table's blocks that name it, and the reject chain)"
    echo "\$ ip netns exec $netns nft list table ip orca"
    # nft separates blocks by blank lines: awk's paragraph mode keeps whole ones.
    ip netns exec "$netns" nft list table ip orca |
        awk -v RS= -v ip="$cluster_ip " 'index($0, ip) || /chain reject-chain/ { print sep $0; sep = "\n" }'
fi
echo
echo "== done; everything stops now"
