#!/usr/bin/env bash
# Registry retention: Redis's used_memory over 50 deploys of distinct builds of one app (each
# build is hello with 2 MB of random bytes in a custom section, a new digest, and a new 2 MB
# assets bundle: ~7 MB stored per version), with the default
# retention (--keep-versions 10) and with retention off in effect (--keep-versions 1000, every
# version kept, as before issue 27), in one run on two throwaway Redis servers.
#
#   bash bench/retention.sh          # DEPLOYS=50 by default
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require python3 redis-server redis-cli curl
DEPLOYS=${DEPLOYS:-50}

cargo build --release -p tabula >&2
hello=$(example hello)
export TABULA_ADMIN_TOKEN=bench-token-0123456789abcdef TABULA_LOG=warn
work_dir

# build: a distinct build, a component with a 2 MB custom section and a 2 MB bundle.
build() {
    python3 - "$hello" "$work/build.wasm" "$work/assets/blob.bin" <<'PY'
import os, sys
src, dst, asset = sys.argv[1:]
def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7f; n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n: return bytes(out)
name = b"bench-build"
body = bytes([len(name)]) + name + os.urandom(2 << 20)
open(dst, "wb").write(open(src, "rb").read() + b"\x00" + leb(len(body)) + body)
os.makedirs(os.path.dirname(asset), exist_ok=True)
open(asset, "wb").write(os.urandom(2 << 20))
PY
}

used() { redis-cli -p "$1" info memory | awk -F: '/^used_memory:/ {printf "%.0f", $2 / 1048576}'; }

declare -A redis_port admin_url
for keep in 10 1000; do
    start_redis
    redis_port[$keep]=$REDIS_PORT
    port=$(free_port)
    background ./target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" \
        --listen 127.0.0.1:0 --operator-listen off --cache-dir off \
        --admin-listen "127.0.0.1:$port" --keep-versions "$keep" >"$work/serve-$keep.log" 2>&1
    until curl -s "http://127.0.0.1:$port/" >/dev/null 2>&1; do sleep 0.05; done
    admin_url[$keep]="http://127.0.0.1:$port"
done

echo "used_memory, MiB, after each 10 deploys of distinct builds"
printf '%8s %14s %14s\n' deploys keep-10 keep-1000
printf '%8s %14s %14s\n' 0 "$(used "${redis_port[10]}")" "$(used "${redis_port[1000]}")"
for n in $(seq "$DEPLOYS"); do
    build
    for keep in 10 1000; do
        ./target/release/tabula deploy "$work/build.wasm" --name kept --route /kept \
            --assets "$work/assets" --admin-url "${admin_url[$keep]}" >/dev/null 2>&1
    done
    if [ $((n % 10)) = 0 ]; then
        sleep 1 # collections run after the deploy answers
        printf '%8s %14s %14s\n' "$n" "$(used "${redis_port[10]}")" "$(used "${redis_port[1000]}")"
    fi
done
