#!/usr/bin/env bash
# Peak RSS growth (VmHWM) of one hostile request in a fresh `tabula serve`, per memory attack of
# tests/guests/hostile, with the default limits. BASELINE=/path/to/another/tabula measures that
# build beside this one (e.g. one from before a change), in the same run.
#
#   bench/hostile-memory.sh
#   BASELINE=/tmp/tabula-old bench/hostile-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require curl
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula
target/release/tabula build tests/guests/hostile --target-dir target/guests >/dev/null
wasm=target/guests/wasm32-wasip2/release/hostile.wasm
binaries=(target/release/tabula ${BASELINE:+"$BASELINE"})
printf '%-18s %-28s %9s  %s\n' attack build peak_mib answer
for attack in truncate truncate-open unlink-open rename-over-open long-names descriptor-paths \
    dir-listings bucket-names cas-handles get-many fields; do
    for bin in "${binaries[@]}"; do
        PORT=$(free_port)
        TABULA_LOG=error background "$bin" serve --store memory --operator-listen off \
            --listen "127.0.0.1:$PORT" "/hostile=$wasm" >/dev/null 2>&1
        pid=$!
        until curl -sf "http://127.0.0.1:$PORT/hostile?attack=ok" >/dev/null; do sleep 0.1; done
        base=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
        answer=$(curl -s -m 60 "http://127.0.0.1:$PORT/hostile?attack=$attack" | head -c 70 | tr '\n' ' ')
        peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
        printf '%-18s %-28s %9s  %s\n' "$attack" "$bin" "+$(((peak - base) / 1024))" "$answer"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
