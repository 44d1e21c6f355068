#!/usr/bin/env bash
# `orca apply -f` of one file of N Services and their EndpointSlices (2N
# documents) against a real etcd: the time and the client's peak RSS to
# read and validate the file alone (etcd unreachable, so nothing is
# written), to create every object, and to apply the same file again
# (every object unchanged: reads only).
#
# Usage: benches/load/apply.sh [SERVICES]   (default 10000: 20,000 documents)
# Needs: etcd (etcd-server), python3, /usr/bin/time; builds the release
# binary. Only loopback is touched.
#
# Latest figures (2026-12-06, this 2-core machine, release build, 10000
# Services = 20,000 documents, 25 MB of YAML):
#
#   read and validate only     6.01 s   3328 docs/s   peak RSS 43.2 MiB
#   create all                 7.39 s   2706 docs/s   peak RSS 45.1 MiB
#   apply again (unchanged)    4.74 s   4219 docs/s   peak RSS 43.6 MiB
#
# The YAML parser bounds it: a profile of the read puts ~70% of the time
# in serde-saphyr's scanner and events (~4.5 s for the 25 MB; the
# validate-only row also waits ~1.5 s retrying the unreachable etcd before
# it gives up). The etcd writes, 32 in flight, add ~1.4 s for 20,000
# creates. Documents are held as compact JSON between validation and the
# writes: held as decoded values the same file peaked at 342 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."

services=${1:-10000}
for tool in etcd python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

cargo build --release --locked --bin orca
orca=$PWD/target/release/orca
work=$(mktemp -d -t orca-apply-XXXXXX)
etcd_pid=
cleanup() {
    if [ -n "$etcd_pid" ]; then
        kill "$etcd_pid" 2>/dev/null || true
        wait "$etcd_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port) peer=$(free_port) closed=$(free_port)
python3 benches/load/services.py "$services" >"$work/services.yaml"
docs=$((services * 2))
size=$(du -m "$work/services.yaml" | cut -f1)

# Prints "LABEL  SECONDS s  DOCS/s  RSS MiB" for one run of orca apply.
measure() {
    local label=$1 etcd=$2 expect=$3
    local out rc=0
    out=$(ORCA_ETCD=$etcd /usr/bin/time -f "%e %M" "$orca" apply -f "$work/services.yaml" \
        2>"$work/time" >"$work/out") || rc=$?
    if [ "$expect" = ok ] && [ "$rc" != 0 ]; then
        cat "$work/time" >&2
        exit 1
    fi
    read -r secs kib < <(tail -1 "$work/time")
    awk -v l="$label" -v s="$secs" -v k="$kib" -v d="$docs" \
        'BEGIN { printf "%-28s %6.2f s  %7.0f docs/s  peak RSS %5.1f MiB\n", l, s, d / s, k / 1024 }'
}

echo "== $docs documents ($size MB) in one file"
measure "read and validate only" "http://127.0.0.1:$closed" fail

etcd --name apply --data-dir "$work/etcd" --quota-backend-bytes 4294967296 \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "apply=http://127.0.0.1:$peer" --logger zap --log-level warn >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
measure "create all" "http://127.0.0.1:$port" ok
[ "$(grep -c ' created$' "$work/out")" = "$docs" ] || { echo "not all created" >&2; exit 1; }
measure "apply again (unchanged)" "http://127.0.0.1:$port" ok
[ "$(grep -c ' unchanged$' "$work/out")" = "$docs" ] || { echo "not all unchanged" >&2; exit 1; }
