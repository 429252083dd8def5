#!/usr/bin/env bash
# Soak: tabula under sustained load for DURATION seconds (default 600), with its resident
# memory sampled every 10 s. Fresh instances for hello (most traffic) and the Redis-backed
# counter, all the while. Prints the samples and the growth after warm-up, and exits non-zero
# if RSS grew by more than MAX_GROWTH_MIB (default 20) between the first sample after the
# warm-up (the first minute, or half of a shorter run) and the last.
#
#   bench/soak.sh                 # 10 minutes
#   DURATION=120 bench/soak.sh    # a quick look
#
# Needs redis-server and wrk. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
MAX_GROWTH_MIB=${MAX_GROWTH_MIB:-20}
WARMUP=$((DURATION >= 120 ? 60 : DURATION / 2))

source bench/common.sh
require redis-server redis-cli wrk
cargo build --release -q -p tabula --bin tabula
target/release/tabula build examples/hello examples/counter --target-dir target/guests >/tmp/soak-apps.txt 2>/dev/null
hello=$(awk '$1=="hello" {print $3}' /tmp/soak-apps.txt)
counter=$(awk '$1=="counter" {print $3}' /tmp/soak-apps.txt)

PORT=$(free_port)
start_redis
TABULA_LOG=warn background target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" \
    --listen "127.0.0.1:$PORT" --operator-listen off "/hello=$hello" "/counter=$counter" >/dev/null
TABULA=$!
until curl -sf "http://127.0.0.1:$PORT/hello" >/dev/null; do sleep 0.05; done

wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$PORT/hello" >/tmp/soak-hello.txt &
WRK1=$!
wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$PORT/counter" >/tmp/soak-counter.txt &
WRK2=$!

rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$TABULA/status"; }
echo "seconds,rss_mib"
samples=()
for ((t = 0; t <= DURATION; t += 10)); do
    r=$(rss_mib)
    samples+=("$t:$r")
    echo "$t,$r"
    sleep 10
done
wait "$WRK1" "$WRK2" || true

after_warmup=$(printf '%s\n' "${samples[@]}" | awk -F: -v w="$WARMUP" '$1>=w {print $2; exit}')
last=$(printf '%s\n' "${samples[@]}" | tail -1 | cut -d: -f2)
max=$(printf '%s\n' "${samples[@]}" | cut -d: -f2 | sort -n | tail -1)
echo
echo "soak: ${DURATION}s; hello $(awk '/Requests\/sec/ {print $2}' /tmp/soak-hello.txt) req/s, counter $(awk '/Requests\/sec/ {print $2}' /tmp/soak-counter.txt) req/s"
echo "soak: $(awk '/requests in/ {print $1}' /tmp/soak-hello.txt) + $(awk '/requests in/ {print $1}' /tmp/soak-counter.txt) requests, errors: $(grep -h 'Non-2xx\|Socket errors' /tmp/soak-hello.txt /tmp/soak-counter.txt | tr '\n' ' ')"
echo "soak: RSS ${after_warmup} MiB at ${WARMUP} s, ${last} MiB at the end, ${max} MiB at most"
python3 - "$after_warmup" "$last" "$MAX_GROWTH_MIB" <<'PY'
import sys
start, end, bound = map(float, sys.argv[1:])
growth = end - start
print(f"soak: growth after warm-up {growth:+.1f} MiB (bound {bound:.0f} MiB)")
sys.exit(0 if growth <= bound else 1)
PY
