#!/usr/bin/env bash
# Instructions per hello request under valgrind's callgrind: a measure the machine's noise does
# not move. One worker thread, the on-demand allocator (valgrind cannot map the instance pool),
# wrk -t1 -c16: 3 s of warm-up, then the counters are zeroed and 10 s are measured.
# BASELINE=/path/to/another/tabula measures that build too, in the same run.
#
#   BASELINE=/tmp/tabula-old bench/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk curl valgrind callgrind_control callgrind_annotate
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula
hello=$(target/release/tabula build examples/hello --target-dir target/guests 2>/dev/null | cut -f3)
out=$(mktemp -d)
for bin in target/release/tabula ${BASELINE:+"$BASELINE"}; do
    PORT=$(free_port)
    rm -f "$out"/cg.*
    TABULA_LOG=warn TABULA_WORKERS=1 background valgrind --tool=callgrind \
        --callgrind-out-file="$out/cg.%p" "$bin" serve --store memory --operator-listen off \
        --allocator on-demand --listen "127.0.0.1:$PORT" "/=$hello" >/dev/null 2>&1
    pid=$!
    until curl -sf -m 2 "http://127.0.0.1:$PORT/" >/dev/null; do sleep 1; done
    wrk -t1 -c16 -d3s "http://127.0.0.1:$PORT/" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    n=$(wrk -t1 -c16 -d10s "http://127.0.0.1:$PORT/" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null
    sleep 2
    ir=$(for f in "$out"/cg.*; do callgrind_annotate "$f" 2>/dev/null; done |
        awk '/PROGRAM TOTALS/ {gsub(",", "", $1); if ($1 > max) max = $1} END {print max}')
    echo "$bin: $n requests, $((ir / n)) instructions per request"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
done
rm -rf "$out"
