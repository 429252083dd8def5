#!/usr/bin/env bash
# Hostile requests one after another (the memory attacks of tests/guests/hostile and a log
# flood) beside wrk load on hello, for DURATION seconds; the server's RSS every 10 s, then
# after the attacks stop, and what the hello clients saw. Loopback only.
#
#   DURATION=90 bench/hostile-soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk curl
DURATION=${DURATION:-90}
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula
target/release/tabula build examples/hello tests/guests/hostile --target-dir target/guests >/dev/null
guests=target/guests/wasm32-wasip2/release
PORT=$(free_port)
TABULA_LOG=error background target/release/tabula serve --store memory --operator-listen off \
    --listen "127.0.0.1:$PORT" "/hostile=$guests/hostile.wasm" "/hello=$guests/hello.wasm" >/dev/null 2>&1
server=$!
until curl -sf "http://127.0.0.1:$PORT/hello" >/dev/null; do sleep 0.2; done
mib() { echo $(($(awk "/$1/ {print \$2}" "/proc/$server/status") / 1024)); }
echo "start: rss $(mib VmRSS) MiB"
(
    end=$((SECONDS + DURATION))
    while [ $SECONDS -lt $end ]; do
        for attack in truncate unlink-open dir-listings cas-handles get-many fields long-names log-flood; do
            curl -s -m 30 -o /dev/null "http://127.0.0.1:$PORT/hostile?attack=$attack"
        done
    done
) &
attacks=$!
wrk -t1 -c32 -d"${DURATION}s" "http://127.0.0.1:$PORT/hello" >"${TMPDIR:-/tmp}/hostile-soak-wrk.txt" &
load=$!
for _ in $(seq $((DURATION / 10))); do
    sleep 10
    echo "t=${SECONDS}s: rss $(mib VmRSS) MiB, peak $(mib VmHWM) MiB"
done
wait "$load"
wait "$attacks" 2>/dev/null || true
for wait in 2 10; do
    sleep "$wait"
    echo "after the attacks, +${wait}s: rss $(mib VmRSS) MiB"
done
grep -E "Requests/sec|Non-2xx|Socket errors" "${TMPDIR:-/tmp}/hostile-soak-wrk.txt"
