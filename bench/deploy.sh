#!/usr/bin/env bash
# Deploy timing: from `tabula deploy` to the first successful response on every replica, for
# examples/hello and a componentize-py hello (~18 MB), cold (first compile) and warm (the
# replicas' compile cache has it); and hello's throughput on one replica while it is
# redeployed every second, against the same replica in a steady state, in one run.
#
#   bash bench/deploy.sh            # DURATION=10s CONNS=64 ROUNDS=3 by default
#
# Two replicas (one with the admin API) on a throwaway Redis, all on this machine: every
# figure includes the other processes' CPU use, and the ratio is the claim to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk python3 redis-server redis-cli curl
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}

cargo build --release -p tabula >&2
hello=$(example hello)
counter=$(example counter)
py=$(python_hello)

export TABULA_ADMIN_TOKEN=bench-token-0123456789abcdef TABULA_LOG=warn
start_redis
work_dir

# replica NAME [ARGS...]: a tabula serve on Redis with its own compile cache; sets PORT_NAME.
replica() {
    local name=$1; shift
    local port; port=$(free_port)
    background ./target/release/tabula serve --store "redis://127.0.0.1:$REDIS_PORT" \
        --listen "127.0.0.1:$port" --operator-listen off --cache-dir "$work/cache-$name" "$@" \
        >"$work/$name.log" 2>&1
    eval "PORT_$name=$port"
    until curl -s "http://127.0.0.1:$port/" >/dev/null 2>&1; do sleep 0.05; done
}
ADMIN_PORT=$(free_port)
replica a --admin-listen "127.0.0.1:$ADMIN_PORT"
replica b
until curl -s "http://127.0.0.1:$ADMIN_PORT/" >/dev/null 2>&1; do sleep 0.05; done
ADMIN="http://127.0.0.1:$ADMIN_PORT"

# deploy_time FILE APP: seconds from the deploy's start to a 200 from both replicas.
deploy_time() {
    local file=$1 app=$2 start end
    start=$(date +%s.%N)
    ./target/release/tabula deploy "$file" --name "$app" --admin-url "$ADMIN" >/dev/null 2>&1 &
    local deployer=$!
    for port in "$PORT_a" "$PORT_b"; do
        until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$app")" = 200 ]; do
            sleep 0.005
        done
    done
    end=$(date +%s.%N)
    wait "$deployer"
    python3 -c "print(f'{$end - $start:.2f}')"
}

echo "deploy to the first 200 on both replicas, seconds (rounds: $ROUNDS)"
for case in "hello:$hello" "python:$py"; do
    label=${case%%:*}; file=${case#*:}
    size=$(du -m "$file" | cut -f1)
    cold=(); warm=()
    for round in $(seq "$ROUNDS"); do
        # A new digest each round for the cold case: the same component with a custom section.
        cold_file="$work/$label-$round.wasm"
        python3 - "$file" "$cold_file" "$round" <<'PY'
import sys
src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
name = b"bench-round"; payload = n.encode()
body = bytes([len(name)]) + name + payload
open(dst, "wb").write(data + bytes([0, len(body)]) + body)
PY
        cold+=("$(deploy_time "$cold_file" "$label-cold-$round")")
        # The same bytes again as another app: both replicas have it in their compile cache.
        warm+=("$(deploy_time "$cold_file" "$label-warm-$round")")
    done
    echo "  $label ($size MB): cold ${cold[*]}  warm ${warm[*]}"
done

echo
echo "hello on replica a, wrk -t2 -c$CONNS -d$DURATION, req/s"
./target/release/tabula deploy "$hello" --name load --admin-url "$ADMIN" >/dev/null 2>&1
url="http://127.0.0.1:$PORT_a/load?name=bench"
# wrk_run: req/s and non-2xx answers of one run, as "RATE ERRORS".
wrk_run() {
    wrk -t2 -c"$CONNS" -d"$DURATION" "$url" | awk '
        /Requests\/sec/ {rate = $2} /Non-2xx/ {errors = $5}
        END {print rate, errors + 0}'
}
read -r steady steady_errors < <(wrk_run)
( end=$((SECONDS + ${DURATION%s})); n=0
  while [ $SECONDS -lt $end ]; do
      file=$([ $((n % 2)) = 0 ] && echo "$counter" || echo "$hello")
      ./target/release/tabula deploy "$file" --name load --admin-url "$ADMIN" >/dev/null 2>&1
      n=$((n + 1)); sleep 1
  done; echo "$n" >"$work/redeploys" ) &
redeployer=$!
read -r during during_errors < <(wrk_run)
wait "$redeployer"
echo "  steady $steady ($steady_errors non-2xx); while redeploying every second" \
     "($(cat "$work/redeploys") deploys): $during ($during_errors non-2xx):" \
     "$(python3 -c "print(f'{$during / $steady:.2f}x')")"
