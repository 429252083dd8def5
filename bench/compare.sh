#!/usr/bin/env bash
# tabula side by side with `wasmtime serve` (the wasmtime version tabula depends on, default
# and tuned flags) and a native hyper server, on the same hello component, at several
# connection counts and with HTTP/1 pipelining; then a large Python component
# (componentize-py) on tabula and wasmtime serve. Every figure comes from this one invocation
# on this one machine: the ratios are the point, since absolute numbers vary between machines.
# Reports req/s, p50/p99/p99.9 latency, RSS under load and errors (non-2xx answers and socket
# errors).
#
# Then the counter example against native hyper + Redis (bench/counter.sh) and the per-request
# cost split (cargo bench --bench instantiate), so that one invocation gives every figure.
#
#   bench/compare.sh                      # DURATION=5s CONNS="1 16 256 1000"
#   PIPE_CONNS=32 bench/compare.sh        # connections of the HTTP/1 pipelining run (default)
#   PYTHON=0 bench/compare.sh             # skip the Python component
#   BASELINE=/tmp/tabula-old bench/compare.sh  # also another tabula build (e.g. from before a
#                                         # change) on hello, in the same run
#
# Installs wasmtime-cli 48.0.8 with `cargo install` and componentize-py with pip when missing.
# Needs wrk and redis-server. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk python3 redis-server redis-cli
DURATION=${DURATION:-5s}
CONNS=${CONNS:-"1 16 256 1000"}
PIPE_CONNS=${PIPE_CONNS:-32}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-1}
BASELINE=${BASELINE:-}
WASMTIME_VERSION=48.0.8
ulimit -n 65536 2>/dev/null || true

if ! command -v wasmtime >/dev/null || ! wasmtime --version | grep -q "$WASMTIME_VERSION"; then
    echo "bench: installing wasmtime-cli $WASMTIME_VERSION (cargo install; several minutes)" >&2
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked
fi
start_redis
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula --example native-hello
hello=$(target/release/tabula build examples/hello --target-dir target/guests 2>/dev/null | cut -f3)

TUNED=(-O pooling-allocator -O pooling-pagemap-scan=y -O pooling-memory-keep-resident=4194304
       -O pooling-table-keep-resident=65536 -O pooling-async-stack-keep-resident=1048576)

# serve NAME CMD...: starts a server on $PORT (the command must use it) and waits for it.
serve() {
    local name=$1
    shift
    background "$@" >/dev/null 2>&1
    SERVER=$!
    local tries=0
    until curl -sf "http://127.0.0.1:$PORT/" >/dev/null; do
        sleep 0.1
        tries=$((tries + 1))
        [ $tries -lt 600 ] || { echo "bench: $name did not start" >&2; exit 1; }
    done
}

# measure NAME CONNS -> a table row
measure() {
    local out result rss
    local threads=$((THREADS < $2 ? THREADS : $2))
    out=$(wrk -t"$threads" -c"$2" -d"$DURATION" -s bench/report.lua "http://127.0.0.1:$PORT/")
    result=$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)
    # RSS right after the load, of the server and its worker processes if any. (Not the peak:
    # that is compiling the component at start-up, which wasmtime serve skips when its
    # compilation cache has it.)
    local procs
    procs="$SERVER $(cat /proc/"$SERVER"/task/*/children 2>/dev/null || true)"
    rss=$(for p in $procs; do cat "/proc/$p/status"; done | awk '/VmRSS/ {s += $2} END {printf "%.0f", s/1024}')
    read -r rps p50 p99 p999 errors <<<"$result"
    printf '%-34s %6s %10s %9s %9s %9s %8s %7s\n' "$1" "$2" "$rps" "$p50" "$p99" "$p999" "$rss" "$errors"
    echo "$1|$2|$rps" >>"$RESULTS"
}

stop() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

RESULTS=$(mktemp)
header() {
    echo
    echo "$1: wrk -t$THREADS -d$DURATION, $(nproc) cores, $(uname -sr), wasmtime $WASMTIME_VERSION"
    printf '%-34s %6s %10s %9s %9s %9s %8s %7s\n' server conns req/s p50_ms p99_ms p99.9_ms rss_mib errors
}

# tabula_rows LABEL WASM CONNS [EXTRA_ARGS...]: tabula (one process, a worker thread per core)
# and, with EXTRA_ARGS, a second tabula row with them (e.g. --processes).
run_component() {
    local label=$1 wasm=$2 conns=$3
    for c in $conns; do
        PORT=$(free_port)
        TABULA_LOG=warn serve tabula target/release/tabula serve --store memory --operator-listen off \
            --listen "127.0.0.1:$PORT" "/=$wasm"
        measure "tabula ($label)" "$c"; stop
        if [ -n "$BASELINE" ] && [ "$label" = hello ]; then
            PORT=$(free_port)
            TABULA_LOG=warn serve baseline "$BASELINE" serve --store memory --operator-listen off \
                --listen "127.0.0.1:$PORT" "/=$wasm"
            measure "tabula baseline build ($label)" "$c"; stop
        fi
        if [ "$label" = python ]; then
            # One process per core, sharing a Redis: no cross-core TLB shootdowns (README).
            PORT=$(free_port)
            TABULA_LOG=warn serve tabula target/release/tabula serve --processes "$(nproc)" \
                --store "redis://127.0.0.1:$REDIS_PORT" --operator-listen off \
                --listen "127.0.0.1:$PORT" "/=$wasm"
            measure "tabula --processes $(nproc) ($label)" "$c"; stop
        fi
        PORT=$(free_port)
        serve wasmtime wasmtime serve -Scli --addr "127.0.0.1:$PORT" "$wasm"
        measure "wasmtime serve, defaults ($label)" "$c"; stop
        PORT=$(free_port)
        serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$wasm"
        measure "wasmtime serve, tuned ($label)" "$c"; stop
    done
}

header "hello (examples/hello), fresh instance per request"
for c in $CONNS; do
    PORT=$(free_port)
    serve native target/release/examples/native-hello "127.0.0.1:$PORT"
    measure "native hyper hello" "$c"; stop
done
run_component hello "$hello" "$CONNS"

# HTTP/1 pipelining: every write carries PIPELINE requests (bench/report.lua).
export PIPELINE=8
header "hello, HTTP/1 pipelined ($PIPELINE requests per write)"
PORT=$(free_port)
serve native target/release/examples/native-hello "127.0.0.1:$PORT"
measure "native hyper hello (pipelined)" "$PIPE_CONNS"; stop
PORT=$(free_port)
TABULA_LOG=warn serve tabula target/release/tabula serve --store memory --operator-listen off \
    --listen "127.0.0.1:$PORT" "/=$hello"
measure "tabula (pipelined)" "$PIPE_CONNS"; stop
PORT=$(free_port)
serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$hello"
measure "wasmtime serve, tuned (pipelined)" "$PIPE_CONNS"; stop
unset PIPELINE

if [ "$PYTHON" = 1 ]; then
    command -v componentize-py >/dev/null || pip install -q componentize-py
    wit=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "wasmtime-wasi-http":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "wit"))')
    py=target/guests/python
    mkdir -p "$py"
    cp bench/python/app.py "$py/"
    (cd "$py" && componentize-py -d "$wit" -w wasi:http/proxy@0.2.12 componentize app -o pyhello.wasm >/dev/null)
    header "python hello (componentize-py, $(du -m "$py/pyhello.wasm" | cut -f1) MB)"
    run_component python "$py/pyhello.wasm" "16"
fi

echo
echo "ratios (req/s), same connections:"
python3 - "$RESULTS" <<'PY'
import sys, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, conns, rps = line.strip().split("|")
    rows[conns][name] = float(rps)
for conns, r in rows.items():
    natives = {"hello": "native hyper hello", "pipelined": "native hyper hello (pipelined)"}
    for label in ("hello", "pipelined", "python"):
        d, u = r.get(f"wasmtime serve, defaults ({label})"), r.get(f"wasmtime serve, tuned ({label})")
        for name, t in r.items():
            if not (name.startswith("tabula") and name.endswith(f"({label})") and u):
                continue
            native = r.get(natives.get(label, ""))
            extra = f", native/tabula {native / t:.2f}x" if native else ""
            defaults = f", /defaults {t / d:.2f}x" if d else ""
            print(f"  {name:28} c={conns:>4}: /tuned {t / u:.2f}x{defaults}{extra}")
    base = r.get("tabula baseline build (hello)")
    if base:
        print(f"  tabula / baseline build    c={conns:>4}: {r['tabula (hello)'] / base:.2f}x")
PY
rm -f "$RESULTS"

echo
echo "bench: the counter example against native hyper + redis" >&2
CONNS=64 THREADS=2 DURATION=$DURATION bash bench/counter.sh 2>/tmp/tabula-counter-bench.log | tail -n +2

echo
echo "bench: the per-request cost split (cargo bench)" >&2
cargo bench -q -p tabula --bench instantiate 2>/dev/null | grep -v '^tabula: building\|Finished'
