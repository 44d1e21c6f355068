#!/usr/bin/env bash
# The control plane at scale: N hollow nodes (`orca hollow-node`, one
# process) and P pending pods of three shapes against one etcd and one
# `orca master`: pods bound per second end to end (from the first create to
# the last binding stored), the per-pod scheduling latency (first seen
# pending to bound, p50/p99 from the scheduler's histogram), the master's
# RSS; then a 1,000-replica Deployment from apply to all available; beside
# them, etcd's own write rate on this machine (the pods' creates, 32 at a
# time through `orca apply`), which bounds everything else.
#
# Then the scheduler's own rate with no create beside it: the master
# stops, the pods are stored while nothing schedules, and `orca
# scheduler` starts alone and binds them all; once with the hollow nodes
# reporting every bound pod Running (etcd applies their status writes
# beside the bindings), once with no kubelet at all, as kube-scheduler's
# scheduler_perf measures it.
#
# Usage: benches/load/scheduler.sh [NODES] [PODS]   (default 5000 10000)
# Needs: etcd (etcd-server), python3, curl; builds the release binary.
# Only loopback is touched; hollow nodes run nothing.
#
# Latest figures (2026-12-07, the master's pod cache compact, eight binding
# transactions in flight; this 2-core machine with nothing else running,
# release build, 5000 hollow nodes, one run each):
#
#                                          10,000 pods     50,000 pods
#   nodes registered with pod CIDRs        30.1 s          30.5 s
#   etcd floor (the creates)               871 pods/s      884 pods/s
#   created to all bound                   854 pods/s      884 pods/s
#     per pod, first seen to bound         p50 <= 16 ms    p50 <= 16 ms
#                                          p99 <= 64 ms    p99 <= 64 ms
#     master RSS                           75 MiB          130 MiB
#   1000-replica Deployment to available   2.0 s           2.4 s
#   the scheduler alone, with kubelets:
#     start to all bound (its list incl.)  4,960 pods/s    3,663 pods/s
#     first binding to the last            5,638 pods/s    4,135 pods/s
#     CPU: scheduler, etcd, hollow nodes   0.43, 1.00, 0.22 0.30, 1.20, 0.17
#     its RSS                              66 MiB          124 MiB
#   the scheduler alone, no kubelets:
#     start to all bound (its list incl.)  4,853 pods/s    4,342 pods/s
#     first binding to the last            5,312 pods/s    5,076 pods/s
#     CPU: scheduler, etcd                 0.41, 1.12      0.36, 1.31
#
# Targets: >= 5,000 pods/s at 5,000 nodes and the master's RSS under 200
# MiB at 5,000 nodes and 50,000 pods. The master holds 130 MiB with
# 50,000 pods. The scheduler binds 5,300-5,600 pods/s at 10,000 pods and,
# at 50,000, 5,076 with no kubelet (as scheduler_perf counts, first
# binding to last; 4,342 counting its list of 55,000 objects) and 4,135
# with the hollow kubelets' status writes beside it: 5-8x kube-scheduler's
# CI floor of 680-810. What bounds it is etcd on the same two cores:
# 1.0-1.3 cores to the scheduler's 0.3-0.4 (about 70 us of scheduler CPU
# a pod). A binding is a linearizable read and two puts (the pod, and its
# copy in the node view the kubelets watch), 60 pods a transaction, eight
# transactions in flight; each status write is two puts more. With
# creates beside it the scheduler keeps up with them, and the end-to-end
# figure is etcd's create rate through `orca apply` (850-920 pods/s).
#
# What each step gave (the same bench, one run each, 50,000 pods):
# - the master's pods as k8s-openapi Pods: master RSS 475 MiB, the
#   scheduler alone 445 MiB (8.7 KiB a pod); compact pods with shared
#   labels, owners and templates: 130 and 125 MiB (benches/pod_cache.rs:
#   1.2 KiB a running pod against 10.9 KiB);
# - one binding transaction at a time: 2,885 pods/s with kubelets; four
#   in flight: 4,409; eight: 4,135-5,179 (no kubelets: 4,830 with four,
#   5,076-5,871 with eight; the higher figures of each pair had the
#   binding reads serializable, which etcd can answer before a write its
#   watchers were told of is visible, and which left a pod unbound).
# Earlier (the same machine): before bindings were batched, 560 pods/s at
# 10,000; before unschedulable pods were woken only by nodes and departing
# pods, every binding woke every pending pod (116 pods/s); before loop
# queues held keys rather than pod copies, a lagging loop held ~3.7
# versions of every pod (heaptrack: 218 of 241 MiB at 10,000 pods).
set -euo pipefail
cd "$(dirname "$0")/../.."

nodes=${1:-5000}
pods=${2:-10000}
for tool in etcd python3 curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
cargo build --release --locked --bin orca
orca=$PWD/target/release/orca
work=$(mktemp -d -t orca-scheduler-XXXXXX)
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
port=$(free_port) peer=$(free_port) admin=$(free_port) web=$(free_port)
etcd --name bench --data-dir "$work/etcd" --quota-backend-bytes 8589934592 \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
etcd_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
export ORCA_ETCD="http://127.0.0.1:$port"
printf 'workers: 1\nlisteners: [{name: web, address: "127.0.0.1:%s"}]\nadmin: {address: "127.0.0.1:%s"}\n' \
    "$web" "$admin" >"$work/master.yaml"
# A /9 of pod CIDRs: 32,768 nodes' worth of /24s (the default /16 has 256).
"$orca" master --config "$work/master.yaml" --cluster-cidr 10.128.0.0/9 >"$work/master.log" 2>&1 &
pids+=($!)
master_pid=$!
metric() {
    curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m { print $2; exit }'
}
now() { date +%s.%N; }

echo "== registering $nodes hollow nodes"
start=$(now)
"$orca" hollow-node --count "$nodes" --heartbeat 10s >"$work/hollow.log" 2>&1 &
pids+=($!)
hollow_pid=$!
until [ "$("$orca" get nodes -o json | grep -c '"podCIDR"')" -ge "$nodes" ]; do
    kill -0 "$master_pid" || { tail "$work/master.log"; exit 1; }
    sleep 1
done
awk -v a="$start" -v b="$(now)" -v n="$nodes" 'BEGIN { printf "nodes registered with pod CIDRs  %.1f s\n", b - a }'

echo "== $pods pending pods of three shapes"
python3 - "$pods" >"$work/pods.yaml" <<'PY'
import sys
shapes = [("100m", "128Mi"), ("250m", "256Mi"), ("500m", "512Mi")]
out = []
for i in range(int(sys.argv[1])):
    cpu, mem = shapes[i % 3]
    out.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: p{i}, labels: {{shape: s{i % 3}}}}}
spec:
  containers: [{{name: c, image: nginx, resources: {{requests: {{cpu: {cpu}, memory: {mem}}}}}}}]
""")
print("---\n".join(out))
PY
before=$(metric orca_scheduler_bindings_total); before=${before:-0}
start=$(now)
"$orca" apply -f "$work/pods.yaml" >/dev/null
created=$(now)
until [ "$(metric orca_scheduler_bindings_total | cut -d. -f1)" -ge $((before + pods)) ]; do
    kill -0 "$master_pid" || { tail "$work/master.log"; exit 1; }
    sleep 0.2
done
bound=$(now)
awk -v a="$start" -v c="$created" -v b="$bound" -v p="$pods" 'BEGIN {
    printf "etcd floor: %d creates          %.1f s  %6.0f pods/s\n", p, c - a, p / (c - a)
    printf "created to all bound            %.1f s  %6.0f pods/s\n", b - a, p / (b - a) }'
curl -s "http://127.0.0.1:$admin/metrics" | awk '
    /^orca_scheduler_pod_scheduling_duration_seconds_bucket/ {
        match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; counts[n] = $2 }
    /^orca_scheduler_pod_scheduling_duration_seconds_count/ { total = $2 }
    END {
        for (i = 1; i <= n; i++) { if (!p50 && counts[i] >= total * 0.5) p50 = les[i]; if (!p99 && counts[i] >= total * 0.99) p99 = les[i] }
        printf "per pod, first seen to bound    p50 <= %s s, p99 <= %s s (histogram buckets)\n", p50, p99 }'
rss() { awk -v k="$1" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$master_pid/status"; }
echo "master RSS                       peak $(rss VmHWM) MiB, now $(rss VmRSS) MiB"

echo "== a 1000-replica Deployment"
"$orca" delete -f "$work/pods.yaml" >/dev/null
cat >"$work/deploy.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: big}
spec:
  replicas: 1000
  selector: {matchLabels: {app: big}}
  template:
    metadata: {labels: {app: big}}
    spec: {containers: [{name: c, image: nginx, resources: {requests: {cpu: 10m, memory: 16Mi}}}]}
YAML
start=$(now)
"$orca" apply -f "$work/deploy.yaml" >/dev/null
"$orca" rollout status deploy/big --timeout 600s >/dev/null
awk -v a="$start" -v b="$(now)" 'BEGIN { printf "apply to 1000 available          %.1f s\n", b - a }'
echo "master RSS                       peak $(rss VmHWM) MiB, now $(rss VmRSS) MiB"

# The scheduler's own rate, with no create beside it: the master stops,
# the pods are stored while nothing schedules, then `orca scheduler`
# starts alone (its own election key, so it leads at once) and binds them.
echo "== the scheduler alone: $pods pods stored before it starts"
kill "$master_pid"
wait "$master_pid" 2>/dev/null || true
# CPU seconds (user + system) of a process so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
rss_of() { awk -v k="$2" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# Stores `pods` pods named PREFIX..., starts `orca scheduler` and reports
# how fast it binds them and the CPU each process spent meanwhile; leaves
# the scheduler running as $sched_pid.
scheduler_alone() {
    local prefix=$1
    sed "s/name: p/name: $prefix/" "$work/pods.yaml" >"$work/pods-$prefix.yaml"
    "$orca" apply -f "$work/pods-$prefix.yaml" >/dev/null
    local sched_admin
    sched_admin=$(free_port)
    local etcd_cpu hollow_cpu=0
    etcd_cpu=$(cpu "$etcd_pid")
    if kill -0 "$hollow_pid" 2>/dev/null; then hollow_cpu=$(cpu "$hollow_pid"); fi
    local start
    start=$(now)
    "$orca" scheduler --identity bench-scheduler --admin "127.0.0.1:$sched_admin" --cluster-cidr 10.128.0.0/9 \
        >"$work/scheduler-$prefix.log" 2>&1 &
    pids+=($!)
    sched_pid=$!
    bindings() { # 0 until the scheduler's admin server answers
        { curl -s "http://127.0.0.1:$sched_admin/metrics" || true; } |
            awk '$1 == "orca_scheduler_bindings_total" { n = int($2) } END { print n + 0 }'
    }
    local first= first_done=0 so_far=0
    until [ "$so_far" -ge "$pods" ]; do
        kill -0 "$sched_pid" || { tail "$work/scheduler-$prefix.log"; exit 1; }
        so_far=$(bindings)
        so_far=${so_far:-0}
        if [ -z "$first" ] && [ "$so_far" -gt 0 ]; then
            first=$(now)
            first_done=$so_far
        fi
        sleep 0.1
    done
    local bound
    bound=$(now)
    awk -v a="$start" -v f="$first" -v n="$first_done" -v b="$bound" -v p="$pods" 'BEGIN {
        printf "start to all bound (list incl.)  %.1f s  %6.0f pods/s\n", b - a, p / (b - a)
        printf "first binding to the last        %.1f s  %6.0f pods/s\n", b - f, (p - n) / (b - f) }'
    local hollow_now=0
    if kill -0 "$hollow_pid" 2>/dev/null; then hollow_now=$(cpu "$hollow_pid"); fi
    awk -v t="$(awk -v a="$start" -v b="$bound" 'BEGIN { print b - a }')" \
        -v s="$(cpu "$sched_pid")" -v e="$(awk -v a="$etcd_cpu" -v b="$(cpu "$etcd_pid")" 'BEGIN { print b - a }')" \
        -v h="$(awk -v a="$hollow_cpu" -v b="$hollow_now" 'BEGIN { print b - a }')" 'BEGIN {
        printf "CPU meanwhile, in cores          scheduler %.2f, etcd %.2f, hollow nodes %.2f (of 2)\n", s / t, e / t, h / t }'
    echo "scheduler RSS                    peak $(rss_of "$sched_pid" VmHWM) MiB"
}
scheduler_alone q

# As kube-scheduler's scheduler_perf measures it: nodes that no kubelet
# runs, so etcd applies the bindings alone. The hollow nodes stop (their
# Nodes stay Ready: no node controller runs), the pods bound above go
# at once, and the scheduler binds as many again.
echo "== the scheduler alone, no kubelets: $pods pods stored before it starts"
kill "$sched_pid" "$hollow_pid"
wait "$sched_pid" "$hollow_pid" 2>/dev/null || true
"$orca" delete -f "$work/pods-q.yaml" --grace-period 0 >/dev/null
scheduler_alone r
