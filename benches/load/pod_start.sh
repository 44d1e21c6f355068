#!/usr/bin/env bash
# Pod start-up on one node, images already pulled: the time from a pod's
# binding (its create, with nodeName set) to its Running status and to its
# readiness probe passing (a tcpSocket probe on busybox's httpd), p50 and
# p99 over 20 pods started one after another, then for 100 pods bound at
# once; beside them, in the same run, `runc run --detach` of a busybox
# bundle alone (the floor: what runc itself costs per container), and the
# kubelet's RSS with 100 pods and its monitors' (each counted alone).
#
# Usage: benches/load/pod_start.sh [SINGLE] [BATCH]   (default 20 100)
# Needs root, etcd (etcd-server), runc, docker-registry, umoci, skopeo,
# busybox-static, python3; builds the release binaries. The node's bridge
# and pods live in a network namespace the script makes, whose only routes
# are the pod CIDR, lo and blackholes: nothing leaves it.
#
# Latest figures (2026-12-06, this 2-core machine, release build; etcd, the
# kubelet, the pods and the watcher share it):
#
#   one pod at a time (20), bound to Running   p50   60 ms   p99   92 ms
#   one pod at a time (20), bound to Ready     p50   63 ms   p99 1110 ms
#   runc run --detach alone (20)              p50   34 ms   p99   46 ms
#     kubelet over runc alone (p50)           1.75x  (2.09x when the monitor
#                                              ran runc create, then start)
#   100 pods at once, bound to Running        p50 2318 ms   p99 4184 ms
#   100 pods at once, bound to Ready          p50 3357 ms   all 4246 ms
#   kubelet RSS with 100 pods                 26.2 MiB
#   monitors (100)                            RSS max 2.5 MiB, mean 2.3 MiB
#
# What bounds them: the ~26 ms over runc alone is the pod's way through
# the cluster (the `orca apply` process and its etcd write, the watch to
# the kubelet, the status write and the watch back to `orca get -w`) plus
# the sandbox (a network namespace, a veth pair through netlink, the
# overlay mount); runc itself (one Go process start-up per container) is
# the rest. The Ready p99 is a probe that found httpd not yet listening
# and passed at the next period (1 s). The monitors' RSS is bounded by what
# any process of a Rust program on glibc costs here: an empty `fn main()`
# peaks at 1.84 MiB, `/bin/true` at 1.0 MiB; the monitor's two reader
# threads, buffers and spec add the rest, so the 2 MiB target would need a
# statically linked monitor without the std runtime.
set -euo pipefail
cd "$(dirname "$0")/../.."
single=${1:-20}
batch=${2:-100}
[ "$(id -u)" -eq 0 ] || { echo "needs root (namespaces, mounts, cgroups, runc)" >&2; exit 1; }
scripts/deps.sh
cargo build --release --locked --bin orca --bin orca-monitor
orca=$PWD/target/release/orca

work=$(mktemp -d -t orca-pod-start-XXXXXX)
netns=orca-bench-$$
pids=()
cleanup() {
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    if [ -e "$work/kubelet.yaml" ]; then
        "$orca" kubelet --cleanup --config "$work/kubelet.yaml" --netns "/run/netns/$netns" >/dev/null || true
    fi
    for id in $(runc --root "$work/runc-floor" list -q 2>/dev/null); do
        runc --root "$work/runc-floor" delete --force "$id" || true
    done
    [ -e "/run/netns/$netns" ] && ip netns delete "$netns"
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port)
registry_port=$(free_port)
kubelet_port=$(free_port)
etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$(free_port)" --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
cat >"$work/registry.yaml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: "127.0.0.1:$registry_port"}
EOF
docker-registry serve "$work/registry.yaml" >"$work/registry.log" 2>&1 &
pids+=($!)
export ORCA_ETCD="http://127.0.0.1:$etcd_port"
until curl -sf "http://127.0.0.1:$registry_port/v2/" >/dev/null && "$orca" get nodes >/dev/null 2>&1; do sleep 0.1; done

# A busybox image: /bin/busybox and its applets.
umoci init --layout "$work/oci"
umoci new --image "$work/oci:bb"
umoci unpack --rootless --image "$work/oci:bb" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp /usr/bin/busybox "$work/bundle/rootfs/bin/"
for applet in sh httpd sleep; do ln -s busybox "$work/bundle/rootfs/bin/$applet"; done
umoci repack --image "$work/oci:bb" "$work/bundle" >/dev/null
skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$work/oci:bb" \
    "docker://127.0.0.1:$registry_port/bb:1"
image=127.0.0.1:$registry_port/bb:1

ip netns add "$netns"
ip -n "$netns" link set lo up
ip -n "$netns" route add 10.96.0.0/12 dev lo
ip -n "$netns" route add blackhole 10.244.0.0/16
cat >"$work/kubelet.yaml" <<EOF
state_dir: $work/state
log_dir: $work/pods
pod_cidr: 10.244.1.0/24
cgroup_parent: orca-bench-$$
port: $kubelet_port
max_pods: 250
registries:
  "127.0.0.1:$registry_port": {insecure: true}
EOF
"$orca" kubelet --node bench-node --config "$work/kubelet.yaml" --netns "/run/netns/$netns" \
    >"$work/kubelet.log" 2>&1 &
pids+=($!)
kubelet_pid=$!

python3 - "$orca" "$image" "$single" "$batch" "$kubelet_pid" "$work" <<'PY'
import json, os, subprocess, sys, threading, time

orca, image, single, batch, kubelet_pid, work = sys.argv[1:]
single, batch, kubelet_pid = int(single), int(batch), int(kubelet_pid)

def pod(name):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": "bench-node", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "web", "image": image,
                                     "command": ["httpd", "-f", "-p", "8080"],
                                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}

def apply(objs):
    text = "\n---\n".join(json.dumps(o) for o in objs)
    subprocess.run([orca, "apply", "-f", "-"], input=text.encode(), check=True, stdout=subprocess.DEVNULL)

# One watcher stamps each pod's first Running row and first 1/1 row.
running, ready, cond = {}, {}, threading.Condition()
watcher = subprocess.Popen([orca, "get", "pods", "-w"], stdout=subprocess.PIPE, text=True)
def watch():
    for line in watcher.stdout:
        now = time.monotonic()
        f = line.split()
        if len(f) < 3 or f[0] == "NAME":
            continue
        with cond:
            # A status may go from Pending to Running and ready at once.
            if f[2] == "Running" or f[1] == "1/1":
                running.setdefault(f[0], now)
            if f[1] == "1/1":
                ready.setdefault(f[0], now)
            cond.notify_all()
threading.Thread(target=watch, daemon=True).start()

def wait(names, table):
    with cond:
        cond.wait_for(lambda: all(n in table for n in names), timeout=600)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

# Warm: the image is pulled once, before anything is timed.
apply([pod("warm")]); wait(["warm"], ready)
subprocess.run([orca, "delete", "pod", "warm"], check=True, stdout=subprocess.DEVNULL)

to_running, to_ready = [], []
for i in range(single):
    name = f"one-{i}"
    t0 = time.monotonic()
    apply([pod(name)])
    wait([name], ready)
    to_running.append(running[name] - t0)
    to_ready.append(ready[name] - t0)
    subprocess.run([orca, "delete", "pod", name], check=True, stdout=subprocess.DEVNULL)

names = [f"many-{i}" for i in range(batch)]
t0 = time.monotonic()
apply([pod(n) for n in names])
wait(names, ready)
batch_running = [running[n] - t0 for n in names]
batch_ready = [ready[n] - t0 for n in names]

def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
monitors = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
    except OSError:
        continue
    if "orca-monitor" in cmd and work in cmd:
        monitors.append(rss(p))
monitors = [m for m in monitors if m is not None]

# The floor: runc alone, the same busybox root, `runc run --detach`.
floor_root = os.path.join(work, "runc-floor")
bundle = os.path.join(work, "floor")
os.makedirs(bundle, exist_ok=True)
subprocess.run(["runc", "spec"], cwd=bundle, check=True)
spec = json.load(open(os.path.join(bundle, "config.json")))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["httpd", "-f", "-p", "8080"]
spec["process"]["env"] = ["PATH=/bin"]
spec["root"] = {"path": os.path.join(work, "bundle", "rootfs"), "readonly": True}
spec["linux"]["cgroupsPath"] = f"/orca-bench-floor-{os.getpid()}/c"
json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
floor = []
for i in range(single):
    t0 = time.monotonic()
    subprocess.run(["runc", "--root", floor_root, "run", "--detach", "--bundle", bundle, f"floor-{i}"],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    floor.append(time.monotonic() - t0)
    subprocess.run(["runc", "--root", floor_root, "delete", "--force", f"floor-{i}"], check=True)
try:
    os.rmdir(f"/sys/fs/cgroup/memory/orca-bench-floor-{os.getpid()}")
except OSError:
    pass
for d in os.listdir("/sys/fs/cgroup"):
    try:
        os.rmdir(f"/sys/fs/cgroup/{d}/orca-bench-floor-{os.getpid()}")
    except OSError:
        pass

watcher.terminate()
ms = lambda s: f"{s * 1000:7.0f} ms"
print()
print(f"one pod at a time ({single}), bound to Running   p50 {ms(pct(to_running, 50))}   p99 {ms(pct(to_running, 99))}")
print(f"one pod at a time ({single}), bound to Ready     p50 {ms(pct(to_ready, 50))}   p99 {ms(pct(to_ready, 99))}")
print(f"runc run --detach alone ({single})              p50 {ms(pct(floor, 50))}   p99 {ms(pct(floor, 99))}")
print(f"  kubelet over runc alone (p50, to Running)   {pct(to_running, 50) / pct(floor, 50):.2f}x")
print(f"{batch} pods at once, bound to Running          p50 {ms(pct(batch_running, 50))}   p99 {ms(pct(batch_running, 99))}   all {ms(max(batch_running))}")
print(f"{batch} pods at once, bound to Ready            p50 {ms(pct(batch_ready, 50))}   p99 {ms(pct(batch_ready, 99))}   all {ms(max(batch_ready))}")
print(f"kubelet RSS with {batch} pods                   {rss(kubelet_pid):.1f} MiB")
if monitors:
    print(f"monitors ({len(monitors)})                             RSS max {max(monitors):.1f} MiB, mean {sum(monitors) / len(monitors):.1f} MiB")
PY
