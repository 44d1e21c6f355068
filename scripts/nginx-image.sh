#!/usr/bin/env bash
# Builds an nginx image from Debian's nginx-light (the binary, the libraries
# it links, its mime types and welcome page; configured as the official
# image is: `nginx -g 'daemon off;'`, port 80, access log to stdout) with
# umoci, and pushes it with skopeo to the plain-HTTP registry REGISTRY
# (host:port) as library/nginx:TAG. The demo serves it as docker.io's
# nginx:1.7.9 through a mirror, since no public registry is reachable here;
# on a machine that reaches Docker Hub the same manifest pulls the real one.
#
#   scripts/nginx-image.sh 127.0.0.1:5000 [1.7.9]
set -euo pipefail
registry=$1
tag=${2:-1.7.9}
for tool in umoci skopeo /usr/sbin/nginx; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: install Debian's umoci, skopeo and nginx-light (scripts/deps.sh)" >&2
        exit 1
    }
done
work=$(mktemp -d -t orca-nginx-image-XXXXXX)
trap 'rm -rf "$work"' EXIT

umoci init --layout "$work/oci"
umoci new --image "$work/oci:nginx"
umoci unpack --rootless --image "$work/oci:nginx" "$work/bundle" >/dev/null
root=$work/bundle/rootfs
mkdir -p "$root"/{usr/sbin,etc/nginx,var/log/nginx,var/lib/nginx,usr/share/nginx/html,run,tmp}
cp /usr/sbin/nginx "$root/usr/sbin/"
# Every library nginx links, and the dynamic loader, at their own paths.
for lib in $(ldd /usr/sbin/nginx | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp /etc/nginx/mime.types "$root/etc/nginx/"
cp /usr/share/nginx/html/index.html "$root/usr/share/nginx/html/"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
cat >"$root/etc/nginx/nginx.conf" <<'CONF'
worker_processes 1;
error_log /dev/stderr notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
    include mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    server {
        listen 80;
        server_name localhost;
        root /usr/share/nginx/html;
        index index.html;
    }
}
CONF
umoci repack --image "$work/oci:nginx" "$work/bundle" >/dev/null
umoci config --image "$work/oci:nginx" --config.cmd nginx --config.cmd -g \
    --config.cmd 'daemon off;' --config.exposedports 80/tcp \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
    "oci:$work/oci:nginx" "docker://$registry/library/nginx:$tag"
