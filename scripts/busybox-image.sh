#!/usr/bin/env bash
# Builds a busybox image from Debian's busybox-static (one static binary
# and its applets: sh, wget, nslookup, sleep, ...) with umoci, and pushes
# it with skopeo to the plain-HTTP registry REGISTRY (host:port) as
# library/busybox:TAG. The demo runs it as a client pod, as one runs
# `kubectl run -it --image=busybox` to try a Service from inside.
#
#   scripts/busybox-image.sh 127.0.0.1:5000 [1.36]
set -euo pipefail
registry=$1
tag=${2:-1.36}
for tool in umoci skopeo /usr/bin/busybox; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: install Debian's umoci, skopeo and busybox-static (scripts/deps.sh)" >&2
        exit 1
    }
done
work=$(mktemp -d -t orca-busybox-image-XXXXXX)
trap 'rm -rf "$work"' EXIT

umoci init --layout "$work/oci"
umoci new --image "$work/oci:busybox"
umoci unpack --rootless --image "$work/oci:busybox" "$work/bundle" >/dev/null
root=$work/bundle/rootfs
mkdir -p "$root"/{bin,etc,tmp}
cp /usr/bin/busybox "$root/bin/"
for applet in sh wget nslookup sleep cat ls echo; do
    ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
umoci repack --image "$work/oci:busybox" "$work/bundle" >/dev/null
umoci config --image "$work/oci:busybox" --config.cmd sh --config.env PATH=/bin
HOME=$work skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
    "oci:$work/oci:busybox" "docker://$registry/library/busybox:$tag"
