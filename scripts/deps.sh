#!/usr/bin/env bash
# Installs the Debian packages Orca's build, tests and demo need, if missing.
# Runs as root on Debian 12 (apt-get); prints what is missing otherwise.
set -euo pipefail

packages=(
    etcd-server       # the real etcd the store, tests and demo run against
    protobuf-compiler # etcd-client generates its gRPC code at build time
    libprotobuf-dev
    pkg-config
    iproute2          # network namespaces in tests
    nftables          # node proxy tests read the kernel ruleset back with `nft -j`
    rsyslog           # log shipper: the syslog output is tested against a real rsyslogd
    openssl           # TLS certificates for the ingress and log shipper tests
    socat             # TLS terminator in the log shipper HTTPS test; the raw copy in its load bench
    curl              # the demo asks the ingress proxy and the admin servers
    runc              # the kubelet's OCI runtime
    docker-registry   # the real registry images are pulled from in tests and the demo
    umoci             # tests build their OCI images with umoci ...
    skopeo            # ... and push them to the registry with skopeo
    busybox-static    # the one binary test images are made of (sh, httpd, sleep)
    nginx-light       # the demo's nginx image is built from Debian's nginx
    wrk               # the load in the cluster drills (a rolling update under load)
    bind9-dnsutils    # dig: the DNS responder's tests ask it as a pod's resolver would
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
