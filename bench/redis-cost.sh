#!/usr/bin/env bash
# What one request of each example costs Redis and tabula: Redis commands per request (from
# `INFO commandstats`, reset before and read after each run), Redis CPU µs per request (the
# commands' own time from commandstats, and the redis-server process's whole CPU from /proc,
# which adds reading and writing the sockets), tabula's CPU µs per request, and req/s per core
# of tabula CPU. Figures for docs/capacity.md.
#
#   bash bench/redis-cost.sh          # DURATION=5s CONNS=16 by default
#
# One `tabula serve --processes 1` and one redis-server on loopback; wrk drives
#   hello     GET /hello                        (no state)
#   counter   POST /counter                     (kv: one increment)
#   cart      GET /cart with a session cookie   (session: read the user and the items)
#   cart-add  POST /cart/add with that cookie   (session: read, then write it back)
# Needs redis-server, redis-cli, wrk and curl (`apt-get install redis-server wrk curl`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require redis-server redis-cli wrk curl python3
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}

cargo build --release -q -p tabula >&2
hello=$(example hello)
counter=$(example counter)
cart=$(example cart)

start_redis
redis_pid=$(redis-cli -p "$REDIS_PORT" info server | awk -F: '/^process_id/ {print $2}' | tr -d '\r')
PORT=$(free_port)
TABULA_LOG=warn background ./target/release/tabula serve --processes 1 \
    --store "redis://127.0.0.1:$REDIS_PORT" --listen "127.0.0.1:$PORT" --operator-listen off \
    --cache-dir off "/hello=$hello" "/counter=$counter" "/cart=$cart" >/dev/null
tabula_pid=$!
until curl -sf "http://127.0.0.1:$PORT/hello" >/dev/null; do sleep 0.05; done

# A logged-in shopper with one item, for the cart runs.
cookie=$(curl -s -o /dev/null -D - -d name=bench "http://127.0.0.1:$PORT/cart/login" |
    awk -F'[:;]' 'tolower($1)=="set-cookie" {gsub(/^ /, "", $2); print $2}')
curl -sf -o /dev/null -H "Cookie: $cookie" -d item=tea "http://127.0.0.1:$PORT/cart/add" || true
work_dir
cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = os.getenv("BODY") or ""
done = function(summary) io.write(string.format("REQUESTS %d\n", summary.requests)) end
EOF
cat >"$work/get.lua" <<'EOF'
done = function(summary) io.write(string.format("REQUESTS %d\n", summary.requests)) end
EOF

# cpu_ticks PID: user + system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '%-9s %9s %12s %10s %14s %14s %12s   %s\n' example req/s "req/s/core" \
    "cmds/req" "redis cmd µs" "redis proc µs" "tabula µs" "commands per request"
run() {
    local name=$1 method=$2 path=$3 body=${4:-} header=()
    [ -n "${5:-}" ] && header=(-H "Cookie: $5")
    redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
    local r0 t0 out
    r0=$(cpu_ticks "$redis_pid"); t0=$(cpu_ticks "$tabula_pid")
    out=$(BODY="$body" wrk -t2 -c"$CONNS" -d"$DURATION" "${header[@]}" \
        -s "$work/$method.lua" "http://127.0.0.1:$PORT$path")
    local r1 t1
    r1=$(cpu_ticks "$redis_pid"); t1=$(cpu_ticks "$tabula_pid")
    local requests rps
    requests=$(awk '/^REQUESTS/ {print $2}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | python3 -c '
import sys
name, requests, rps, rticks, tticks, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
calls = usec = 0
per = []
for line in sys.stdin:
    if not line.startswith("cmdstat_"):
        continue
    cmd, stats = line[len("cmdstat_"):].split(":", 1)
    fields = dict(kv.split("=") for kv in stats.strip().split(","))
    if cmd in ("config", "info"):
        continue
    c = int(fields["calls"]); calls += c; usec += int(fields["usec"])
    per.append((c, cmd))
per.sort(reverse=True)
tabula_us = tticks / hz * 1e6 / requests
detail = " ".join(f"{cmd}={c/requests:.2f}" for c, cmd in per if c / requests >= 0.01) or "-"
print(f"{name:<9} {rps:9.0f} {1e6/tabula_us:12.0f} {calls/requests:10.2f} {usec/requests:14.2f} "
      f"{rticks/hz*1e6/requests:14.2f} {tabula_us:12.1f}   {detail}")
' "$name" "$requests" "$rps" "$((r1 - r0))" "$((t1 - t0))" "$(getconf CLK_TCK)"
}

run hello get /hello
run counter post /counter
run cart get /cart "" "$cookie"
run cart-add post /cart/add "item=x" "$cookie"
echo
echo "wrk -t2 -c$CONNS -d$DURATION; tabula --processes 1 and redis-server on $(nproc) cores, loopback."
echo "req/s/core: requests per second of tabula CPU (its user + system time), so Redis and wrk"
echo "sharing the cores do not count against it. cart-add grows its session by 2 bytes a request."
