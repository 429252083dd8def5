#!/usr/bin/env bash
# The dashboard's own cost: hello's req/s with wrk while the dashboard is closed, and while
# it is open and refreshing, alternated within one run (closed/open, then open/closed, ...).
# An open page asks for /ui/api/state every 2 s and nothing else; PAGES curl loops logged in
# with the cookie make exactly those requests, at that rate. Prints each pair and the median
# difference.
#
# On a shared machine wrk's req/s swings by more than the 2% looked for, so the script also
# counts CPU time, which other processes do not disturb: the server's (its workers included)
# and Redis's, idle for IDLE seconds with CPU_PAGES pages open and with none, alternated; and
# the server's CPU per hello request under wrk. The page's share is its CPU per second over
# the CPU a second of hello at full load takes.
#
#   bench/dashboard-cost.sh                        # RUNS=6 DURATION=10s CONNS=64 PAGES=1
#   PAGES=10 bench/dashboard-cost.sh               # ten open pages
#   BASELINE=/tmp/tabula-old bench/dashboard-cost.sh  # also a build from before the
#                                                  # heartbeats carried traffic, same run
#
# Needs wrk, curl and redis-server. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require wrk curl python3 redis-server redis-cli
RUNS=${RUNS:-6}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
PAGES=${PAGES:-1}
CPU_PAGES=${CPU_PAGES:-10}
IDLE=${IDLE:-30}
BASELINE=${BASELINE:-}
REFRESH=2 # seconds: the page's REFRESH_MS
export TABULA_ADMIN_TOKEN=bench-dashboard-token-0123456789
ulimit -n 65536 2>/dev/null || true

start_redis
echo "bench: building (release)" >&2
cargo build --release -q -p tabula --bin tabula
hello=$(target/release/tabula build examples/hello --target-dir target/guests 2>/dev/null | cut -f3)

# start_replica BINARY: a replica with the admin API on the shared Redis, hello deployed.
# Sets PORT and ADMIN.
start_replica() {
    PORT=$(free_port)
    local admin_port
    admin_port=$(free_port)
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    background "$1" serve --store "redis://127.0.0.1:$REDIS_PORT" --listen "127.0.0.1:$PORT" \
        --operator-listen off --admin-listen "127.0.0.1:$admin_port" >/dev/null 2>&1
    ADMIN="http://127.0.0.1:$admin_port"
    SERVER_PID=$!
    until curl -sf "$ADMIN/v1/apps" -H "Authorization: Bearer $TABULA_ADMIN_TOKEN" >/dev/null; do
        sleep 0.1
    done
    "$1" deploy "$hello" --name hello --route /hello --admin-url "$ADMIN" >/dev/null 2>&1
    curl -sf "http://127.0.0.1:$PORT/hello" >/dev/null
}

# open_pages: PAGES logged-in loops asking for the state every REFRESH seconds, as the page
# does, until close_pages. Checks that each answer is the state, not a refusal.
page_pids=()
open_pages() {
    local jar
    for _ in $(seq "$PAGES"); do
        jar=$(mktemp)
        curl -sf -c "$jar" -H 'content-type: application/json' \
            -d "{\"token\":\"$TABULA_ADMIN_TOKEN\"}" "$ADMIN/ui/login" >/dev/null
        (
            while true; do
                curl -sf -b "$jar" "$ADMIN/ui/api/state" | grep -q '"replicas"' \
                    || { echo "bench: the dashboard's state did not answer" >&2; exit 1; }
                sleep "$REFRESH"
            done
        ) &
        page_pids+=($!)
        pids+=($!)
    done
}
close_pages() {
    for p in "${page_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    page_pids=()
}

# rate: hello's req/s over DURATION.
rate() {
    wrk -t2 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$PORT/hello" | awk '/Requests\/sec/ {print $2}'
}

# measure NAME BINARY: RUNS alternated pairs of closed and open, and their median difference.
measure() {
    start_replica "$2"
    rate >/dev/null # warm up
    local closed=() open=() c o
    for run in $(seq "$RUNS"); do
        if ((run % 2)); then
            c=$(rate); open_pages; o=$(rate); close_pages
        else
            open_pages; o=$(rate); close_pages; c=$(rate)
        fi
        closed+=("$c"); open+=("$o")
        printf '%s run %d: closed %s req/s, open %s req/s\n' "$1" "$run" "$c" "$o"
    done
    python3 - "$1" "${closed[*]}" "${open[*]}" <<'EOF'
import statistics, sys
name, closed, opened = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
c, o = statistics.median(closed), statistics.median(opened)
pairs = [100 * (b - a) / a for a, b in zip(closed, opened)]
print(f"{name}: median closed {c:,.0f} req/s, open {o:,.0f} req/s: {100 * (o - c) / c:+.2f}% "
      f"(pairs: {', '.join(f'{p:+.1f}%' for p in pairs)}; median pair {statistics.median(pairs):+.2f}%)")
EOF
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# cpu_ticks PID...: user+system clock ticks of the processes (and their children) so far.
cpu_ticks() {
    local total=0 pid p
    for pid in "$@"; do
        for p in $(server_procs "$pid"); do
            [ -r "/proc/$p/stat" ] || continue
            total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
        done
    done
    echo "$total"
}

# cpu_share: the CPU figures above.
cpu_share() {
    start_replica target/release/tabula
    local redis_pid tck closed=0 open=0 before saved out requests load
    redis_pid=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/process_id/ {print $2+0}')
    tck=$(getconf CLK_TCK)
    for _ in 1 2; do
        before=$(cpu_ticks "$SERVER_PID" "$redis_pid"); sleep "$IDLE"
        closed=$((closed + $(cpu_ticks "$SERVER_PID" "$redis_pid") - before))
        saved=$PAGES; PAGES=$CPU_PAGES; open_pages; PAGES=$saved
        before=$(cpu_ticks "$SERVER_PID" "$redis_pid"); sleep "$IDLE"
        open=$((open + $(cpu_ticks "$SERVER_PID" "$redis_pid") - before))
        close_pages
    done
    before=$(cpu_ticks "$SERVER_PID")
    out=$(wrk -t2 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$PORT/hello")
    load=$(($(cpu_ticks "$SERVER_PID") - before))
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    python3 - "$closed" "$open" "$((2 * IDLE))" "$CPU_PAGES" "$load" "$requests" "$tck" "${DURATION%s}" <<'EOF'
import sys
closed, opened, seconds, pages, load, requests, tck, duration = map(float, sys.argv[1:])
page = (opened - closed) / tck / seconds / pages  # CPU s per s, one page
per_request = load / tck / requests
print(f"cpu: one open page costs {page * 1e3:.2f} ms of CPU per second (server and Redis; "
      f"{(closed / tck / seconds) * 1e3:.1f} ms/s idle without it, {pages:.0f} pages measured); "
      f"hello costs {per_request * 1e6:.1f} µs of server CPU per request, so a page takes what "
      f"{page / per_request:.0f} hello requests per second take: "
      f"{100 * page / (load / tck / duration):.3f}% of the CPU hello used at full load")
EOF
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

echo "bench: hello, wrk -t2 -c$CONNS -d$DURATION, $RUNS alternated pairs, $PAGES open page(s) refreshing every ${REFRESH}s"
measure "tabula" target/release/tabula
cpu_share
if [ -n "$BASELINE" ]; then
    # A build without the dashboard has no /ui: only its closed rate means anything.
    start_replica "$BASELINE"
    rate >/dev/null
    for run in $(seq "$RUNS"); do
        printf 'baseline run %d: %s req/s\n' "$run" "$(rate)"
    done
fi
