#!/usr/bin/env bash
# The counter example on tabula against a native hyper + Redis server doing the same work,
# side by side: same machine, same Redis, same load (wrk), one invocation. Prints req/s and
# latency for each and their ratio.
#
#   bench/counter.sh            # DURATION=10s CONNS=64 THREADS=2 by default
#
# Needs redis-server and wrk (`apt-get install redis-server wrk`). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}

source bench/common.sh
require redis-server redis-cli wrk

echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula --example native-counter
wasm=$(target/release/tabula build examples/counter --target-dir target/guests 2>/dev/null | cut -f3)

NATIVE_PORT=$(free_port); TABULA_PORT=$(free_port)
start_redis

background target/release/examples/native-counter "127.0.0.1:$NATIVE_PORT" "redis://127.0.0.1:$REDIS_PORT" >/dev/null
TABULA_LOG=warn background target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" \
    --listen "127.0.0.1:$TABULA_PORT" --operator-listen off "/counter=$wasm" >/dev/null
for port in "$NATIVE_PORT" "$TABULA_PORT"; do
    until curl -sf "http://127.0.0.1:$port/counter" >/dev/null; do sleep 0.05; done
done

# run NAME URL -> "req/s p50 p99" on stdout, wrk's report on stderr
run() {
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$2")
    echo "$out" >&2
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    echo "$rps $p50 $p99"
}

echo "bench: native hyper + redis" >&2
read -r n_rps n_p50 n_p99 < <(run native "http://127.0.0.1:$NATIVE_PORT/counter")
echo "bench: tabula, counter example" >&2
read -r t_rps t_p50 t_p99 < <(run tabula "http://127.0.0.1:$TABULA_PORT/counter")

echo
echo "counter: wrk -t$THREADS -c$CONNS -d$DURATION, one Redis, $(nproc) cores"
printf '%-28s %12s %10s %10s\n' server req/s p50 p99
printf '%-28s %12s %10s %10s\n' "native hyper + redis" "$n_rps" "$n_p50" "$n_p99"
printf '%-28s %12s %10s %10s\n' "tabula (counter example)" "$t_rps" "$t_p50" "$t_p99"
python3 -c "print(f'ratio tabula/native: {float(\"$t_rps\")/float(\"$n_rps\"):.2f}x req/s')"
echo "final count: $(redis-cli -p "$REDIS_PORT" get visits) native, $(redis-cli -p "$REDIS_PORT" get "$(redis-cli -p "$REDIS_PORT" --scan --pattern 'tabula:{counter:*}:kv:visits')") tabula"
