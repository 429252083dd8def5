#!/usr/bin/env bash
# Time-to-ready of a replica joining a fleet: from the start of its process to the first 200
# from its /readyz (every process of it serves every active app), with the componentize-py
# hello (~18 MB) and the Rust examples deployed. Each round starts a new replica with an
# empty compile cache (a new machine), once without the fleet's artifact key (it compiles
# every app, as before shared artifacts) and once with it (it loads what the fleet
# compiled from the store), for --processes 1 and 2, alternated in one run.
#
#   bash bench/join.sh            # ROUNDS=3 PROCESSES="1 2" by default
#
# Redis, the fleet's replica and the joining one all run on this machine: the figures include
# their CPU use, and the ratio is the claim to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require python3 redis-server redis-cli curl
ROUNDS=${ROUNDS:-3}
PROCESSES=${PROCESSES:-"1 2"}

cargo build --release -p tabula >&2
rust=()
for example in hello counter cart greeter ratelimit stateless report; do
    rust+=("$example:$(example "$example")")
done
py=$(python_hello)

export TABULA_ADMIN_TOKEN=bench-token-0123456789abcdef TABULA_LOG=warn
start_redis
work_dir
# The fleet's key, as a mounted Secret would hold it.
head -c 48 /dev/urandom | base64 >"$work/artifact-key"
chmod 600 "$work/artifact-key"
store="redis://127.0.0.1:$REDIS_PORT"

# The fleet: one replica with the admin API and the key, which stores what it compiles.
ADMIN_PORT=$(free_port)
background ./target/release/tabula serve --store "$store" --processes 1 \
    --listen "127.0.0.1:$(free_port)" --operator-listen off --cache-dir "$work/cache-fleet" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --artifact-key-file "$work/artifact-key" \
    >"$work/fleet.log" 2>&1
until curl -s "http://127.0.0.1:$ADMIN_PORT/" >/dev/null 2>&1; do sleep 0.05; done
ADMIN="http://127.0.0.1:$ADMIN_PORT"
for app in "${rust[@]}" "python:$py"; do
    ./target/release/tabula deploy "${app#*:}" --name "${app%%:*}" --admin-url "$ADMIN" >/dev/null
done
echo "deployed: ${#rust[@]} Rust examples and python ($(du -m "$py" | cut -f1) MB);" \
    "artifacts in the store: $(redis-cli -p "$REDIS_PORT" --scan --pattern 'tabula:artifact:*' | grep -vc ':[0-9a-f]*:[0-9]*$') components"

# join MODE PROCESSES ROUND: seconds from a new replica's start to its first /readyz 200;
# MODE `off` runs it without the key, `on` with it. Its compile cache starts empty.
join() {
    local mode=$1 processes=$2 round=$3 port start end pid
    local key=()
    [ "$mode" = on ] && key=(--artifact-key-file "$work/artifact-key")
    port=$(free_port)
    start=$(date +%s.%N)
    ./target/release/tabula serve --store "$store" --processes "$processes" \
        --listen "127.0.0.1:$(free_port)" --operator-listen "127.0.0.1:$port" \
        --cache-dir "$work/cache-$mode-$processes-$round" "${key[@]}" \
        >"$work/join-$mode-$processes-$round.log" 2>&1 &
    pid=$!
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ]; do
        sleep 0.01
    done
    end=$(date +%s.%N)
    kill -TERM "$pid"
    wait "$pid" || true
    python3 -c "print(f'{$end - $start:.2f}')"
}

echo "time to ready of a joining replica, seconds (rounds: $ROUNDS)"
for processes in $PROCESSES; do
    off=(); on=()
    for round in $(seq "$ROUNDS"); do
        off+=("$(join off "$processes" "$round")")
        on+=("$(join on "$processes" "$round")")
    done
    python3 - "$processes" "${off[*]}" "${on[*]}" <<'PY'
import statistics, sys
processes, off, on = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
m_off, m_on = statistics.median(off), statistics.median(on)
print(f"  --processes {processes}: compiling (no key) {' '.join(f'{x:.2f}' for x in off)}"
      f"  sharing (key) {' '.join(f'{x:.2f}' for x in on)}"
      f"  medians {m_off:.2f} / {m_on:.2f} = {m_off / m_on:.1f}x faster")
PY
done
