#!/usr/bin/env bash
# Brings up a local Orca cluster and runs its main job, as root. `orca up`
# makes the cluster: etcd (TLS with client certificates), a master (the
# ingress proxy, the scheduler and the controllers) and three nodes (the
# kubelet, the node proxy and the log shipper), each node in a network
# namespace of its own, joined by a bridge in the cluster's hub namespace.
# The demo applies examples/ (the nginx Deployment of three replicas, its
# Service and Ingress) and a busybox client pod, waits for the rollout and
# shows the pods on three nodes, the nginx welcome page through the
# master's ingress by host name and through the Service's ClusterIP and
# name (the node's DNS responder) from the client pod, the pods' logs with those requests, and the same lines
# delivered by the nodes' log shippers. No public registry is reachable
# here, so the nodes pull docker.io's images through a mirror: a local
# registry (Debian's docker-registry) in the hub, holding nginx:1.7.9 built
# from Debian's nginx-light (scripts/nginx-image.sh) and busybox:1.36 from
# busybox-static (scripts/busybox-image.sh); with Docker Hub in reach, the
# same manifests pull the real images. No namespace has a route out, so no
# packet leaves them. On any exit `orca down` removes the cluster and the
# registry and temp dir go.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "error: the demo needs root: its cluster's nodes are network namespaces, its pods containers" >&2
    exit 1
fi
# ORCA_BIN: an orca binary already built (the test suite passes its own);
# otherwise install what is missing and build one.
if [ -n "${ORCA_BIN:-}" ]; then
    orca=$ORCA_BIN
else
    scripts/deps.sh
    cargo build --locked --bin orca --bin orca-monitor
    orca=target/debug/orca
fi

work=$(mktemp -d -t orca-demo-XXXXXX)
# The state directory names the cluster (its namespaces are NAME-hub and
# NAME-node-N): the process id keeps two demos apart.
state=$work/orca-demo-$$
hub=/run/netns/orca-demo-$$-hub
registry_pid=
cleanup() {
    # Under `set -e`: `wait` reports the registry's signal, which must not
    # stop the cleanup before the cluster and the temp dir are removed.
    if [ -n "$registry_pid" ]; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
    if [ -e "$state/cluster.json" ]; then
        echo "== orca down: every process, pod, namespace, mount and cgroup of the cluster"
        "$orca" down --state "$state" || true
    fi
    rm -rf "$work"
}
# bash runs it on SIGINT and SIGTERM too.
trap cleanup EXIT
in_hub() { nsenter "--net=$hub" "$@"; }

# Waits up to 60 s for COMMAND to succeed; otherwise says what was awaited
# and fails (the cluster's logs are in $state/logs).
wait_for() {
    local what=$1
    shift
    for _ in $(seq 600); do
        "$@" && return 0
        sleep 0.1
    done
    echo "error: timed out after 60 s waiting for $what; the cluster's logs:" >&2
    tail -n 20 "$state"/logs/*.log >&2
    exit 1
}
registry_listens() { in_hub bash -c 'exec 3<>/dev/tcp/172.30.0.1/5000' 2>/dev/null; }
route_served() {
    in_hub curl -sf http://172.30.0.11:9090/routes 2>/dev/null | grep -q '"host":"nginx.local"'
}
ingress_serves() {
    [ "$(in_hub curl -s -o /dev/null -w '%{http_code}' -H 'Host: nginx.local' http://172.30.0.11/)" = 200 ]
}
client_ready() {
    "$orca" get pod client -o json 2>/dev/null | grep -q '"ready": true'
}
# Exit status 0 once a node's shipper has delivered an access-log line.
shipped() { cat "$state"/shipped/*.jsonl 2>/dev/null | grep -q '"GET / HTTP/1.1\\" 200'; }

# The nodes pull docker.io's images from the registry the demo starts in
# the hub, at 172.30.0.1:5000, the address every node reaches.
# Only docker.io's official images are allowed: the masters refuse other
# pods as they are written, the kubelets refuse to pull them.
cat >"$work/kubelet.yaml" <<EOF
registries:
  docker.io: {mirrors: ["http://172.30.0.1:5000"]}
EOF
echo "\$ orca up --nodes 3 --image-allow 'docker.io/library/*' --kubelet-config $work/kubelet.yaml --state $state"
"$orca" up --nodes 3 --image-allow 'docker.io/library/*' --kubelet-config "$work/kubelet.yaml" --state "$state"
export ORCA_CLUSTER=$state/client.yaml

echo
echo "== starting a registry in the hub on 172.30.0.1:5000, the nodes' mirror of docker.io"
cat >"$work/registry.yaml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: "172.30.0.1:5000"}
EOF
# nsenter itself (not the in_hub function, which would run in a subshell)
# execs the registry, so $! is the registry's pid.
nsenter "--net=$hub" docker-registry serve "$work/registry.yaml" >"$work/registry.log" 2>&1 &
registry_pid=$!
wait_for "the registry to listen" registry_listens
echo "== building nginx:1.7.9 from Debian's nginx-light and busybox:1.36 from busybox-static into it"
in_hub scripts/nginx-image.sh 172.30.0.1:5000 1.7.9
in_hub scripts/busybox-image.sh 172.30.0.1:5000 1.36

run() { echo; echo "\$ orca $*"; "$orca" "$@"; }
run get nodes -o wide
run apply -f examples/
echo
echo "\$ orca apply -f - (a busybox pod to try the Service from inside)"
"$orca" apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
    - name: client
      image: busybox:1.36
      command: [sleep, "3600"]
EOF
run get services -o wide
cluster_ip=$("$orca" get service nginx -o json | sed -n 's/^    "clusterIP": "\(.*\)",$/\1/p')

echo
echo "== waiting for the rollout: the scheduler spreads the pods, each node pulls the image and starts its pod"
run rollout status deployment/nginx-deployment --timeout 120s
wait_for "the client pod to be ready" client_ready
run get deployments -o wide
run get pods -o wide
run get endpointslices

echo
echo "== waiting for the master's ingress to route nginx.local to the pods"
wait_for "the master's /routes to show nginx.local" route_served
wait_for "the ingress to reach the pods" ingress_serves
echo
echo "== asking the master's ingress for nginx.local (from the hub, where the masters listen)"
echo "\$ curl -s -i -H 'Host: nginx.local' http://172.30.0.11/"
in_hub curl -s -i -H 'Host: nginx.local' http://172.30.0.11/

echo
echo "== asking the Service's ClusterIP $cluster_ip from the client pod (its node's nftables pick a pod, maybe on another node)"
for _ in 1 2 3; do
    echo "\$ orca exec client -- wget -qO- http://$cluster_ip/ | grep '<title>'"
    "$orca" exec client -- wget -qO- "http://$cluster_ip/" | grep '<title>'
done

echo
echo "== the same by the Service's name, which the client's node's DNS responder answers from its caches"
echo "\$ orca exec client -- cat /etc/resolv.conf"
"$orca" exec client -- cat /etc/resolv.conf
echo "\$ orca exec client -- nslookup -type=a nginx.default.svc.cluster.local."
"$orca" exec client -- nslookup -type=a nginx.default.svc.cluster.local.
echo "\$ orca exec client -- wget -qO- http://nginx/ | grep '<title>'"
"$orca" exec client -- wget -qO- http://nginx/ | grep '<title>'

echo
echo "== the pods' logs: nginx's access log, served by each node's kubelet"
for p in $("$orca" get pods | awk '/^nginx-deployment-/ { print $1 }'); do
    run logs "$p" --tail 3
done

echo
echo "== the same lines, delivered by the nodes' log shippers to $state/shipped/"
wait_for "the log shippers to deliver the access log" shipped
echo "\$ grep -h 'GET / HTTP' $state/shipped/*.jsonl | head -n 3"
grep -h 'GET / HTTP' "$state"/shipped/*.jsonl | head -n 3

echo
echo "== done; everything stops now"
