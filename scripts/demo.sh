#!/usr/bin/env bash
# Brings up a local Orca cluster and runs its main job. As root: etcd, a
# registry, a master (the ingress proxy in cluster mode, the scheduler and
# the controllers) and a node (the kubelet, the node proxy), all inside one
# network namespace of its own. It applies examples/ (the nginx Deployment
# of three replicas, its Service and Ingress), waits for the rollout and
# shows the pods running, the nginx welcome page through the master's
# ingress by host name and through the Service's ClusterIP, and the pods'
# logs with those requests. No public registry is reachable here, so the
# node pulls docker.io's nginx:1.7.9 through a mirror: the local registry,
# holding an image built from Debian's nginx-light under that tag
# (scripts/nginx-image.sh); with Docker Hub in reach, the same manifest
# pulls the real image. The namespace's only routes are loopback, the pods'
# bridge and blackholes for the cluster and service ranges, so no packet
# leaves it. Not root: no node runs, so the pods stay Pending and the
# ingress answers 503. Every process, the namespace, the pods, their
# mounts and cgroups and the temp dir go on exit, whatever the exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# ORCA_BIN: an orca binary already built (the test suite passes its own);
# otherwise install what is missing and build one.
if [ -n "${ORCA_BIN:-}" ]; then
    orca=$ORCA_BIN
else
    scripts/deps.sh
    cargo build --locked --bin orca --bin orca-monitor
    orca=target/debug/orca
fi

# etcd takes port and port+1 (peer); the master's listener and admin server
# port+2 and port+3; the node's admin server port+4, the registry port+5,
# the kubelet's server port+6 (all on the namespace's loopback as root).
port=${ORCA_DEMO_PORT:-23790}
listener=$((port + 2))
master_admin=$((port + 3))
node_admin=$((port + 4))
registry_port=$((port + 5))
kubelet_port=$((port + 6))
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
    # The pods outlive the kubelet (their monitors hold them), as on any
    # node: its cleanup removes them, their mounts, cgroups and addresses.
    if [ -e "$work/kubelet.yaml" ]; then
        in_ns "$orca" kubelet --cleanup --config "$work/kubelet.yaml" >/dev/null || true
    fi
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
# The prefix that runs a command inside the cluster's network namespace (as
# root). nsenter changes the network namespace alone (`ip netns exec` would
# also mount a new /sys, hiding the cgroup hierarchies runc needs) and
# execs the command, so `$!` of a background one is the command itself.
ns=()
$root && ns=(nsenter "--net=/run/netns/$netns")
in_ns() { "${ns[@]}" "$@"; }

if ! $root; then
    for p in "$port" "$((port + 1))" "$listener" "$master_admin"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "port $p is in use; choose another with ORCA_DEMO_PORT=N (it uses N to N+3)" >&2
            exit 1
        fi
    done
fi

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
listening() { in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# Exit status 0 when the master's admin server lists the Ingress's route.
route_served() {
    in_ns curl -sf "http://127.0.0.1:$master_admin/routes" 2>/dev/null | grep -q '"host":"nginx.local"'
}
node_healthy() {
    [ "$(in_ns curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$node_admin/healthz")" = 200 ]
}
# Exit status 0 when the node proxy's table names the Service's ClusterIP.
# /healthz answers after the first sync, which may come before the Service.
cluster_ip_programmed() {
    in_ns nft list table ip orca 2>/dev/null | grep -qF "$cluster_ip "
}
# Exit status 0 once the ingress answers nginx.local with 200.
ingress_serves() {
    [ "$(in_ns curl -s -o /dev/null -w '%{http_code}' -H 'Host: nginx.local' "http://127.0.0.1:$listener/")" = 200 ]
}
# Exit status 0 once the Deployment's three pods run and are ready.
pods_ready() {
    [ "$(in_ns "$orca" get deployment nginx-deployment -o json 2>/dev/null |
        sed -n 's/^    "readyReplicas": \([0-9]*\),\{0,1\}$/\1/p')" = 3 ]
}
# Exit status 0 once the scheduler has written why $pod waits.
pod_says_why() {
    in_ns "$orca" get pod "$pod" -o json 2>/dev/null | grep -q 'nodes are available'
}
# Exit status 0 once the Deployment's ReplicaSet has made its three pods.
pods_made() {
    [ "$(in_ns "$orca" get pods 2>/dev/null | grep -c '^nginx-deployment-')" = 3 ]
}

if $root; then
    echo "== creating network namespace $netns (lo up; 10.96.0.0/12 routed to lo, 10.244.0.0/16 blackholed)"
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    # The service range is routed to lo, where a packet to an address no
    # Service has ends: a connection from the node to a ClusterIP needs a
    # route to start (a blackhole fails it before the node proxy's DNAT in
    # the output hook sees it).
    ip -n "$netns" route add 10.96.0.0/12 dev lo
    ip -n "$netns" route add blackhole 10.244.0.0/16
fi

echo "== starting etcd on 127.0.0.1:$port (data in $work)"
"${ns[@]}" etcd --name orca-demo --data-dir "$work/etcd" \
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
"${ns[@]}" "$orca" master --config "$work/master.yaml" >"$work/master.log" 2>&1 &
pids+=($!)
master_pid=${pids[-1]}

if $root; then
    echo "== starting a registry on 127.0.0.1:$registry_port, the mirror of docker.io"
    cat >"$work/registry.yaml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: "127.0.0.1:$registry_port"}
EOF
    "${ns[@]}" docker-registry serve "$work/registry.yaml" >"$work/registry.log" 2>&1 &
    pids+=($!)
    wait_for "the registry to listen" "${pids[-1]}" "$work/registry.log" listening "$registry_port"
    echo "== building nginx:1.7.9 from Debian's nginx-light into it (scripts/nginx-image.sh)"
    in_ns scripts/nginx-image.sh "127.0.0.1:$registry_port" 1.7.9
    cat >"$work/kubelet.yaml" <<EOF
state_dir: $work/state
log_dir: $work/pods
cgroup_parent: orca-demo-$$
port: $kubelet_port
registries:
  docker.io: {mirrors: ["http://127.0.0.1:$registry_port"]}
images:
  allow: ["docker.io/library/*"]
EOF
    echo "== starting orca node demo-node: the kubelet (pods on bridge orca0) and the node proxy, admin 127.0.0.1:$node_admin"
    "${ns[@]}" "$orca" node --node demo-node --cluster-cidr 10.244.0.0/16 \
        --kubelet-config "$work/kubelet.yaml" --admin "127.0.0.1:$node_admin" >"$work/node.log" 2>&1 &
    pids+=($!)
    node_pid=${pids[-1]}
else
    echo "== not root: no node (the kubelet and the node proxy need root), so no pod will run"
fi

run() { echo; echo "\$ orca $*"; in_ns "$orca" "$@"; }
run apply -f examples/
run get services -o wide
# The store allocated the Service's ClusterIP when it was created.
cluster_ip=$(in_ns "$orca" get service nginx -o json | sed -n 's/^    "clusterIP": "\(.*\)",$/\1/p')
run get ingresses

echo
echo "== waiting for the master's controllers to make the Deployment's pods"
wait_for "the ReplicaSet's three pods" "$master_pid" "$work/master.log" pods_made
pod=$(in_ns "$orca" get pods | awk '/^nginx-deployment-/ { print $1; exit }')
if $root; then
    echo "== waiting for the rollout: the kubelet pulls the image and starts the pods"
    wait_for "the three pods to be ready" "$node_pid" "$work/node.log" pods_ready
    run rollout status deployment/nginx-deployment
else
    wait_for "the scheduler's verdict on $pod" "$master_pid" "$work/master.log" pod_says_why
    echo "(Pending: no node is registered; the scheduler says why on each pod:)"
    in_ns "$orca" get pod "$pod" -o json | sed -n 's/^ *"message": "\(.*nodes are available.*\)",\{0,1\}$/  \1/p'
fi
run get deployments -o wide
run get pods -o wide
run get endpointslices

echo
echo "== waiting for the master to serve the Ingress's route${node_pid:+ and the node to be healthy}"
wait_for "the master's /routes to show nginx.local" "$master_pid" "$work/master.log" route_served
if $root; then
    wait_for "the node's /healthz to answer 200" "$node_pid" "$work/node.log" node_healthy
    wait_for "the node proxy to program ClusterIP $cluster_ip" "$node_pid" "$work/node.log" cluster_ip_programmed
    wait_for "the ingress to reach the pods" "$master_pid" "$work/master.log" ingress_serves
fi
echo "\$ curl -s http://127.0.0.1:$master_admin/routes"
in_ns curl -s "http://127.0.0.1:$master_admin/routes"
echo

echo
echo "== asking the master's ingress for nginx.local"
echo "\$ curl -s -i -H 'Host: nginx.local' http://127.0.0.1:$listener/"
in_ns curl -s -i -H 'Host: nginx.local' "http://127.0.0.1:$listener/"

if $root; then
    echo
    echo "== asking the Service's ClusterIP $cluster_ip from the node (the node proxy's nftables pick a pod)"
    echo "\$ curl -s http://$cluster_ip/ | grep '<title>'"
    in_ns curl -s "http://$cluster_ip/" | grep '<title>'
    echo
    echo "== the node proxy's rules for ClusterIP $cluster_ip (the blocks of its table that name it)"
    echo "\$ nft list table ip orca"
    # nft separates blocks by blank lines: awk's paragraph mode keeps whole ones.
    in_ns nft list table ip orca |
        awk -v RS= -v ip="$cluster_ip " 'index($0, ip) { print sep $0; sep = "\n" }'
    echo
    echo "== the pods' logs: nginx's access log, served by the kubelet"
    for p in $(in_ns "$orca" get pods | awk '/^nginx-deployment-/ { print $1 }'); do
        run logs "$p" --tail 2
    done
fi
echo
echo "== done; everything stops now"
