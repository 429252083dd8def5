#!/usr/bin/env bash
# tabula side by side with `wasmtime serve` (the wasmtime version tabula depends on, default
# and tuned flags) and a native hyper server, on the same hello component, at several
# connection counts and with HTTP/1 pipelining; then a large Python component
# (componentize-py) on tabula and wasmtime serve. Every figure comes from this one invocation
# on this one machine: the ratios are the point, since absolute numbers vary between machines.
# Reports req/s, p50/p99/p99.9 latency, RSS under load, errors (non-2xx answers and socket
# errors) and the server's CPU time per request (its worker processes included).
#
# Also: a hello built without the SDK (bench/plain-hello, the `wasi` crate alone) at 64 and
# 256 connections; `wasmtime serve` reusing each instance for 1000 requests beside its fresh
# runs; an open-loop run (bench/openloop.rs: a fixed rate, latency from when each request was
# due) at 50% and 80% of tuned wasmtime serve's peak, for tabula, wasmtime and native hyper.
# Then the counter example against native hyper + Redis (bench/counter.sh), the per-request
# cost split (cargo bench --bench instantiate), and Rust, Python and JavaScript side by side
# (bench/polyglot.sh), so that one invocation gives every figure.
#
#   bench/compare.sh                      # DURATION=5s CONNS="1 16 64 256 1000"
#   PIPE_CONNS=32 bench/compare.sh        # connections of the HTTP/1 pipelining run (default)
#   PYTHON=0 bench/compare.sh             # skip the Python component
#   POLYGLOT=0 bench/compare.sh           # skip bench/polyglot.sh
#   COUNTER=0 SPLIT=0 bench/compare.sh    # skip bench/counter.sh, the cargo bench cost split
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
CONNS=${CONNS:-"1 16 64 256 1000"}
PIPE_CONNS=${PIPE_CONNS:-32}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-1}
POLYGLOT=${POLYGLOT:-1}
COUNTER=${COUNTER:-1}
SPLIT=${SPLIT:-1}
OPEN_SECONDS=${OPEN_SECONDS:-10}
BASELINE=${BASELINE:-}
WASMTIME_VERSION=48.0.8
ulimit -n 65536 2>/dev/null || true

if ! command -v wasmtime >/dev/null || ! wasmtime --version | grep -q "$WASMTIME_VERSION"; then
    echo "bench: installing wasmtime-cli $WASMTIME_VERSION (cargo install; several minutes)" >&2
    cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked
fi
start_redis
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula --example native-hello --example openloop
hello=$(target/release/tabula build examples/hello --target-dir target/guests 2>/dev/null | cut -f3)
plain=$(target/release/tabula build bench/plain-hello --target-dir target/guests 2>/dev/null | cut -f3)

# tabula with its defaults, on the store production uses: no tuning flag, no access log (off
# by default for `serve`; a row with `--access-log` shows what the line per request costs).
# Its log goes to /dev/null.
TABULA=(target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" --operator-listen off)
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

# The CPU time (user + system, in clock ticks) the server and its worker processes have used.
server_ticks() {
    local p
    for p in $(server_procs "$SERVER"); do
        # The fields after the command name: utime and stime are the 12th and 13th.
        sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true
    done | awk '{t += $12 + $13} END {print t + 0}'
}
HZ=$(getconf CLK_TCK)

# measure NAME CONNS -> a table row. cpu_us is the server's CPU time per request (its worker
# processes included): with wrk on the same cores, req/s depends on how the cores are shared,
# the CPU a request costs the server much less.
measure() {
    local out result rss before after
    local threads=$((THREADS < $2 ? THREADS : $2))
    before=$(server_ticks)
    out=$(wrk -t"$threads" -c"$2" -d"$DURATION" -s bench/report.lua "http://127.0.0.1:$PORT/")
    after=$(server_ticks)
    result=$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)
    # RSS right after the load, of the server and its worker processes if any. (Not the peak:
    # that is compiling the component at start-up, which wasmtime serve skips when its
    # compilation cache has it.)
    rss=$(for p in $(server_procs "$SERVER"); do cat "/proc/$p/status"; done | awk '/VmRSS/ {s += $2} END {printf "%.0f", s/1024}')
    read -r rps p50 p99 p999 errors requests <<<"$result"
    cpu=$(awk -v t=$((after - before)) -v hz="$HZ" -v n="$requests" \
        'BEGIN {if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-"}')
    printf '%-34s %6s %10s %9s %9s %9s %8s %7s %7s\n' "$1" "$2" "$rps" "$p50" "$p99" "$p999" "$rss" "$errors" "$cpu"
    echo "$1|$2|$rps|$cpu" >>"$RESULTS"
}

stop() {
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
}

RESULTS=$(mktemp)
header() {
    echo
    echo "$1: wrk -t$THREADS -d$DURATION, $(nproc) cores, $(uname -sr), wasmtime $WASMTIME_VERSION"
    printf '%-34s %6s %10s %9s %9s %9s %8s %7s %7s\n' server conns req/s p50_ms p99_ms p99.9_ms rss_mib errors cpu_us
}

# run_component LABEL WASM CONNS: tabula as a user runs it in production (`serve --store
# redis://…`, no tuning flag: a worker process per core), the same with its access log on,
# tabula in one process with a thread per core (as `--store memory` runs), then wasmtime
# serve with defaults, tuned, and tuned reusing instances.
run_component() {
    local label=$1 wasm=$2 conns=$3
    for c in $conns; do
        PORT=$(free_port)
        serve tabula "${TABULA[@]}" --listen "127.0.0.1:$PORT" "/=$wasm"
        measure "tabula ($label)" "$c"; stop
        if [ -n "$BASELINE" ] && [ "$label" = hello ]; then
            PORT=$(free_port)
            serve baseline "$BASELINE" "${TABULA[@]:1}" \
                --listen "127.0.0.1:$PORT" "/=$wasm"
            measure "tabula baseline build ($label)" "$c"; stop
        fi
        if [ "$label" != python ]; then
            PORT=$(free_port)
            serve tabula "${TABULA[@]}" --access-log --listen "127.0.0.1:$PORT" "/=$wasm"
            measure "tabula, --access-log ($label)" "$c"; stop
        fi
        PORT=$(free_port)
        serve tabula "${TABULA[@]}" --processes 1 --listen "127.0.0.1:$PORT" "/=$wasm"
        measure "tabula, one process ($label)" "$c"; stop
        PORT=$(free_port)
        serve wasmtime wasmtime serve -Scli --addr "127.0.0.1:$PORT" "$wasm"
        measure "wasmtime serve, defaults ($label)" "$c"; stop
        PORT=$(free_port)
        serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$wasm"
        measure "wasmtime serve, tuned ($label)" "$c"; stop
        if [ "$label" != python ]; then
            # Not fresh: each instance serves up to 1000 requests (state leaks between them).
            PORT=$(free_port)
            serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --max-instance-reuse-count 1000 \
                --addr "127.0.0.1:$PORT" "$wasm"
            measure "wasmtime serve, tuned, reused ($label)" "$c"; stop
        fi
    done
}

header "hello (examples/hello), fresh instance per request"
for c in $CONNS; do
    PORT=$(free_port)
    serve native target/release/examples/native-hello "127.0.0.1:$PORT"
    measure "native hyper hello" "$c"; stop
done
run_component hello "$hello" "$CONNS"

header "plain-wasi hello (bench/plain-hello: the wasi crate, no SDK), fresh instance per request"
run_component plain "$plain" "64 256"

# Open loop: a fixed rate, at 50% and 80% of tuned wasmtime serve's peak on hello at 64
# connections (measured above, in this run).
peak=$(awk -F'|' '$1 == "wasmtime serve, tuned (hello)" && $2 == 64 {print $3}' "$RESULTS")
if [ -z "$peak" ]; then
    PORT=$(free_port)
    serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$hello"
    peak=$(wrk -t"$THREADS" -c64 -d"$DURATION" -s bench/report.lua "http://127.0.0.1:$PORT/" \
        | awk '/^RESULT/ {print $2}')
    stop
fi
echo
echo "hello, open loop (bench/openloop.rs, 64 connections, ${OPEN_SECONDS}s): rates are 50% and 80% of tuned wasmtime serve's peak here, $peak req/s"
printf '%-34s %7s %10s %9s %9s %9s %9s %7s\n' server rate achieved p50_ms p99_ms p99.9_ms max_ms errors
OPEN=$(mktemp)
openloop() {
    local result
    result=$(target/release/examples/openloop "http://127.0.0.1:$PORT/" "$2" "$OPEN_SECONDS" 64 \
        | awk '/^RESULT/ {$1 = ""; print}')
    # shellcheck disable=SC2086
    printf '%-34s %7s %10s %9s %9s %9s %9s %7s\n' "$1" "$2" $result
    echo "$1|$2|$result" >>"$OPEN"
}
for pct in 50 80; do
    rate=$(awk -v p="$peak" -v f="$pct" 'BEGIN {printf "%d", p * f / 100}')
    PORT=$(free_port)
    serve native target/release/examples/native-hello "127.0.0.1:$PORT"
    openloop "native hyper hello" "$rate"; stop
    PORT=$(free_port)
    serve tabula "${TABULA[@]}" --listen "127.0.0.1:$PORT" "/=$hello"
    openloop "tabula (hello)" "$rate"; stop
    PORT=$(free_port)
    serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$hello"
    openloop "wasmtime serve, tuned (hello)" "$rate"; stop
done
awk -F'|' '{split($3, r, " "); p99[$1 "|" $2] = r[3]} END {
    for (k in p99) if (index(k, "tabula (hello)|") == 1) {
        split(k, kk, "|"); n = p99["native hyper hello|" kk[2]]
        if (n > 0) printf "  tabula p99 / native hyper p99 at %s req/s: %.2fx\n", kk[2], p99[k] / n
    }}' "$OPEN"
rm -f "$OPEN"

# HTTP/1 pipelining: every write carries PIPELINE requests (bench/report.lua).
export PIPELINE=8
header "hello, HTTP/1 pipelined ($PIPELINE requests per write)"
PORT=$(free_port)
serve native target/release/examples/native-hello "127.0.0.1:$PORT"
measure "native hyper hello (pipelined)" "$PIPE_CONNS"; stop
PORT=$(free_port)
serve tabula "${TABULA[@]}" --listen "127.0.0.1:$PORT" "/=$hello"
measure "tabula (pipelined)" "$PIPE_CONNS"; stop
PORT=$(free_port)
serve wasmtime wasmtime serve -Scli "${TUNED[@]}" --addr "127.0.0.1:$PORT" "$hello"
measure "wasmtime serve, tuned (pipelined)" "$PIPE_CONNS"; stop
unset PIPELINE

if [ "$PYTHON" = 1 ]; then
    py=$(python_hello)
    header "python hello (componentize-py, $(du -m "$py" | cut -f1) MB)"
    run_component python "$py" "16"
fi

echo
echo "ratios (req/s), same connections:"
python3 - "$RESULTS" <<'PY'
import sys, collections
rows = collections.defaultdict(dict)
cpu = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, conns, rps, us = line.strip().split("|")
    rows[conns][name] = float(rps)
    if us != "-":
        cpu[conns][name] = float(us)
for conns, r in rows.items():
    natives = {"hello": "native hyper hello", "pipelined": "native hyper hello (pipelined)"}
    for label in ("hello", "plain", "pipelined", "python"):
        d, u = r.get(f"wasmtime serve, defaults ({label})"), r.get(f"wasmtime serve, tuned ({label})")
        for name, t in r.items():
            if not (name.startswith("tabula") and name.endswith(f"({label})") and u):
                continue
            native = r.get(natives.get(label, ""))
            reused = r.get(f"wasmtime serve, tuned, reused ({label})")
            extra = f", native/tabula {native / t:.2f}x" if native else ""
            defaults = f", /defaults {t / d:.2f}x" if d else ""
            again = f", /reused {t / reused:.2f}x" if reused else ""
            # Server CPU per request, reused over tabula: >= 1.0x means a fresh instance
            # costs the server no more than a reused one.
            mine, theirs = cpu[conns].get(name), cpu[conns].get(f"wasmtime serve, tuned, reused ({label})")
            if reused and mine and theirs:
                again += f" (cpu/req {mine:.1f} against {theirs:.1f} us: {theirs / mine:.2f}x)"
            print(f"  {name:28} c={conns:>4}: /tuned {t / u:.2f}x{defaults}{again}{extra}")
    base = r.get("tabula baseline build (hello)")
    if base:
        print(f"  tabula / baseline build    c={conns:>4}: {r['tabula (hello)'] / base:.2f}x")
PY
rm -f "$RESULTS"

if [ "$COUNTER" = 1 ]; then
    echo
    echo "bench: the counter example against native hyper + redis" >&2
    CONNS=64 THREADS=2 DURATION=$DURATION bash bench/counter.sh 2>/tmp/tabula-counter-bench.log | tail -n +2
fi

if [ "$SPLIT" = 1 ]; then
    echo
    echo "bench: the per-request cost split (cargo bench)" >&2
    cargo bench -q -p tabula --bench instantiate 2>/dev/null | grep -v '^tabula: building\|Finished'
fi

if [ "$POLYGLOT" = 1 ]; then
    echo
    echo "bench: Rust, Python and JavaScript (bench/polyglot.sh)" >&2
    DURATION=$DURATION bash bench/polyglot.sh 2>/dev/null
fi
