#!/usr/bin/env bash
# Rust, Python and JavaScript side by side, in one run on one machine:
# - hello in each language, the same component on tabula (its defaults, on Redis) and on
#   tuned `wasmtime serve`: req/s, p50/p99, RSS after the load, and how long each took from
#   start to its first answer (compiling the component: wasmtime's cache is off);
# - the kv counter in each language (one increment per request) on tabula with Redis.
# The hellos are built for the plain `wasi:http/proxy` world (bench/python, bench/js), so that
# wasmtime serve runs them too; the counters with tabula's SDKs (bench/counter-py,
# bench/counter-js, examples/counter). `wasmtime serve` has no store that several instances
# or replicas share, so the counters run on tabula only.
#
#   bench/polyglot.sh                  # DURATION=5s CONNS=16
#
# Needs wrk, redis-server, wasmtime-cli 48.0.8 (bench/compare.sh installs it), componentize-py
# and Node.js with npm. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk redis-server redis-cli wasmtime componentize-py node npm
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
THREADS=${THREADS:-2}
TUNED=(-O pooling-allocator -O pooling-pagemap-scan=y -O pooling-memory-keep-resident=4194304
       -O pooling-table-keep-resident=65536 -O pooling-async-stack-keep-resident=1048576)

echo "bench: building" >&2
cargo build --release -q -p tabula --bin tabula
out=target/guests/polyglot
mkdir -p "$out"
built() { target/release/tabula build "$1" --target-dir target/guests 2>/dev/null | cut -f3; }
rust_hello=$(built examples/hello)
componentize-py -d wit -w wasi:http/proxy@0.2.12 componentize -p bench/python app \
    -o "$out/hello-py.wasm" >/dev/null
(cd guest-sdk/js && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; })
node guest-sdk/js/build.mjs bench/js "$out/hello-js.wasm" wasi:http/proxy@0.2.12 >/dev/null
rust_counter=$(built examples/counter)
py_counter=$(built bench/counter-py)
js_counter=$(built bench/counter-js)
start_redis

# serve CMD...: starts a server on $PORT, waits for its first answer, and sets READY to the
# seconds that took.
serve() {
    local began tries=0
    began=$(date +%s.%N)
    background "$@" >/dev/null 2>&1
    SERVER=$!
    until curl -sf "http://127.0.0.1:$PORT/" >/dev/null; do
        sleep 0.05
        tries=$((tries + 1))
        [ $tries -lt 1200 ] || { echo "bench: $* did not start" >&2; exit 1; }
    done
    READY=$(awk "BEGIN {print $(date +%s.%N) - $began}")
}

stop() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

RESULTS=$(mktemp)
# measure NAME SIZE_MB: a table row for the server on $PORT.
measure() {
    local out rps p50 p99 p999 errors rss
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s bench/report.lua "http://127.0.0.1:$PORT/")
    read -r rps p50 p99 p999 errors _ <<<"$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)"
    # The server and its worker processes, if any: all of them, and the largest one.
    read -r rss largest <<<"$(for p in $(server_procs "$SERVER"); do
        cat "/proc/$p/status"; done | awk '/VmRSS/ {s += $2; if ($2 > m) m = $2}
                                          END {printf "%.0f %.0f", s/1024, m/1024}')"
    printf '%-36s %6s %8.2f %9s %8s %8s %8s %8s %7s\n' "$1" "$2" "$READY" "$rps" "$p50" "$p99" "$rss" "$largest" "$errors"
    echo "$1|$rps" >>"$RESULTS"
}

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $(nproc) cores, $(uname -sr), $(wasmtime --version)"
printf '%-36s %6s %8s %9s %8s %8s %8s %8s %7s\n' server size_mb ready_s req/s p50_ms p99_ms rss_mib max_proc errors
size() { du -m "$1" | cut -f1; }
for lang in rust python js; do
    case $lang in
        rust) wasm=$rust_hello ;;
        python) wasm=$out/hello-py.wasm ;;
        js) wasm=$out/hello-js.wasm ;;
    esac
    PORT=$(free_port)
    TABULA_CACHE_DIR=off serve target/release/tabula serve \
        --store "redis://127.0.0.1:$REDIS_PORT" --operator-listen off \
        --listen "127.0.0.1:$PORT" "/=$wasm"
    measure "tabula, hello ($lang)" "$(size "$wasm")"; stop
    PORT=$(free_port)
    # Its compilation cache off, as tabula's is (TABULA_CACHE_DIR=off above): ready_s is
    # then compiling the component, for both.
    serve wasmtime serve -Scli -C cache=n "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$wasm"
    measure "wasmtime serve tuned, hello ($lang)" "$(size "$wasm")"; stop
done
for lang in rust python js; do
    case $lang in
        rust) wasm=$rust_counter ;;
        python) wasm=$py_counter ;;
        js) wasm=$js_counter ;;
    esac
    PORT=$(free_port)
    serve target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" \
        --operator-listen off --listen "127.0.0.1:$PORT" "/=$wasm"
    measure "tabula + redis, kv counter ($lang)" "$(size "$wasm")"; stop
done

echo
echo "ratios (req/s), tabula / tuned wasmtime serve, same component:"
python3 - "$RESULTS" <<'PY'
import sys
r = dict(line.strip().split("|") for line in open(sys.argv[1]))
for lang in ("rust", "python", "js"):
    t, w = float(r[f"tabula, hello ({lang})"]), float(r[f"wasmtime serve tuned, hello ({lang})"])
    print(f"  hello ({lang}): {t / w:.2f}x")
PY
rm -f "$RESULTS"
