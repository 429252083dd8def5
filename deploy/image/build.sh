#!/usr/bin/env bash
# Builds tabula's container image: the static binary first, then the image around it.
#
#   deploy/image/build.sh [IMAGE]        # default IMAGE: localhost/tabula:VERSION (and :latest)
#
# The binary is built for x86_64-unknown-linux-musl with the `image` profile (release, no
# debug info, stripped): static, so it runs FROM scratch, and musl's own DNS resolver reads
# /etc/resolv.conf, where a static glibc would need NSS modules the image does not have.
# CARGO_TARGET_DIR is honoured. Needs rustup, a C compiler for musl (Debian: musl-tools),
# podman (or CONTAINER=docker) and a CA bundle at /etc/ssl/certs/ca-certificates.crt
# (Debian: ca-certificates), which the image carries for `rediss://`.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=x86_64-unknown-linux-musl
container=${CONTAINER:-podman}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ! rustup target list --installed | grep -qx "$target"; then
    echo "image: installing the $target target"
    rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null; then
    echo "image: musl-gcc is missing (ring and mimalloc compile C for musl, and a glibc cc would leave glibc symbols in a static binary): apt-get install musl-tools" >&2
    exit 1
fi
if [ ! -s "$ca_bundle" ]; then
    echo "image: no CA bundle at $ca_bundle for rediss://: apt-get install ca-certificates, or set CA_BUNDLE" >&2
    exit 1
fi
if ! command -v "$container" >/dev/null; then
    echo "image: $container is missing: apt-get install podman runc (or CONTAINER=docker)" >&2
    exit 1
fi

# The cc crate finds musl-gcc by itself for this target; Rust links the static binary.
cargo build --profile image --target "$target" -p tabula
target_dir=${CARGO_TARGET_DIR:-target}
binary=$target_dir/$target/image/tabula

version=$("$binary" --version | awk '{print $2}')
image=${1:-localhost/tabula:$version}

# The build context holds only what the image needs, not the repository.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/tabula"
cp "$ca_bundle" "$context/ca-certificates.crt"
mkdir -p "$context/rootfs/tmp" "$context/rootfs/cache"
chmod 1777 "$context/rootfs/tmp"
chmod 0700 "$context/rootfs/cache"

"$container" build -t "$image" -f deploy/image/Containerfile "$context"
if [ $# -eq 0 ]; then
    "$container" tag "$image" localhost/tabula:latest
fi
echo "image: $image ($(du -h "$binary" | cut -f1) binary)"
"$container" image ls "$image"
