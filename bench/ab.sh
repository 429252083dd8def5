#!/usr/bin/env bash
# This tabula build against another (BASELINE, e.g. a build from before a change), on one
# example, alternating the two for ROUNDS rounds so that both see the same machine; prints
# each run, then the median and range of each. With APP=counter the store is a Redis, and
# Redis's own time per call (INFO commandstats) is printed too: it is the shared resource.
#
#   BASELINE=/tmp/tabula-old bench/ab.sh                  # hello, 16 and 256 connections
#   BASELINE=/tmp/tabula-old APP=counter CONNS=64 bench/ab.sh
#   BASELINE=target/release/tabula EXTRA="--kv-max-keys 0 --kv-max-bytes 0" APP=counter bench/ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk redis-server redis-cli curl
: "${BASELINE:?set BASELINE to the tabula binary to compare with}"
APP=${APP:-hello}
CONNS=${CONNS:-"16 256"}
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4s}
EXTRA=${EXTRA:-}   # flags for this build only
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula
wasm=$(target/release/tabula build "examples/$APP" --target-dir target/guests 2>/dev/null | cut -f3)
store=memory
if [ "$APP" = counter ]; then
    start_redis
    store="redis://127.0.0.1:$REDIS_PORT"
fi
RESULTS=$(mktemp)
for round in $(seq "$ROUNDS"); do
    for c in $CONNS; do
        for build in this baseline; do
            bin=target/release/tabula
            extra=($EXTRA)
            if [ $build = baseline ]; then bin=$BASELINE; extra=(); fi
            PORT=$(free_port)
            TABULA_LOG=warn background "$bin" serve --store "$store" --operator-listen off \
                --listen "127.0.0.1:$PORT" "${extra[@]}" "/=$wasm" >/dev/null 2>&1
            pid=$!
            until curl -sf "http://127.0.0.1:$PORT/" >/dev/null; do sleep 0.1; done
            [ "$store" = memory ] || redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
            rps=$(wrk -t2 -c"$c" -d"$DURATION" "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}')
            redis=""
            if [ "$store" != memory ]; then
                redis=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
                    awk -F'[:,=]' '/^cmdstat_(incrby|evalsha)/ {printf "%s %sus/call ", $1, $7}')
            fi
            echo "round $round c=$c $build $rps $redis"
            echo "$c $build $rps" >>"$RESULTS"
            kill "$pid"
            wait "$pid" 2>/dev/null || true
        done
    done
done
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    c, build, rps = line.split()
    runs[(int(c), build)].append(float(rps))
for c in sorted({c for c, _ in runs}):
    this, base = runs[(c, "this")], runs[(c, "baseline")]
    print(f"c={c}: this {statistics.median(this):,.0f} req/s ({min(this):,.0f}-{max(this):,.0f}), "
          f"baseline {statistics.median(base):,.0f} ({min(base):,.0f}-{max(base):,.0f}), "
          f"median ratio {statistics.median(this) / statistics.median(base):.2f}x")
PY
rm -f "$RESULTS"
