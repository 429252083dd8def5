#!/usr/bin/env bash
# One replica against three behind haproxy, same run, alternated: hello and counter through
#   direct    wrk -> one replica
#   lb-1      wrk -> haproxy -> one replica
#   lb-3      wrk -> haproxy -> three replicas (round robin)
# and the ratios. On a machine with few cores every replica, haproxy, Redis and wrk share the
# same cores, so this measures what the load balancer and the extra processes cost, not how a
# fleet scales: scaling needs a machine (or cores) per replica.
#
#   bash bench/fleet.sh            # DURATION=5s CONNS=32 ROUNDS=2 by default
#
# Needs redis-server, haproxy, wrk and curl (`apt-get install redis-server haproxy wrk curl`).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require redis-server redis-cli haproxy wrk curl
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-2}

cargo build --release -q -p tabula >&2
hello=$(example hello)
counter=$(example counter)
work_dir

start_redis
ports=()
for i in 0 1 2; do
    port=$(free_port)
    ports+=("$port")
    TABULA_LOG=warn background ./target/release/tabula serve --processes 1 \
        --store "redis://127.0.0.1:$REDIS_PORT" --listen "127.0.0.1:$port" \
        --operator-listen off --cache-dir off "/hello=$hello" "/counter=$counter" >/dev/null
done
for port in "${ports[@]}"; do
    until curl -sf "http://127.0.0.1:$port/hello" >/dev/null; do sleep 0.05; done
done

# haproxy: frontend one_port -> the first replica; frontend three_port -> all three.
ONE=$(free_port); THREE=$(free_port)
cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
frontend one
    bind 127.0.0.1:$ONE
    default_backend one
frontend three
    bind 127.0.0.1:$THREE
    default_backend three
backend one
    server r0 127.0.0.1:${ports[0]}
backend three
    balance roundrobin
    server r0 127.0.0.1:${ports[0]}
    server r1 127.0.0.1:${ports[1]}
    server r2 127.0.0.1:${ports[2]}
EOF
background haproxy -db -f "$work/haproxy.cfg"
until curl -sf "http://127.0.0.1:$THREE/hello" >/dev/null; do sleep 0.05; done

cat >"$work/post.lua" <<'EOF'
wrk.method = "POST"
EOF
rps() { # rps PORT PATH METHOD
    wrk -t2 -c"$CONNS" -d"$DURATION" -s "$work/$3.lua" "http://127.0.0.1:$1$2" |
        awk '/Requests\/sec/ {print $2}'
}
: >"$work/get.lua"
declare -A sum
for round in $(seq "$ROUNDS"); do
    for app in hello counter; do
        method=get; [ "$app" = counter ] && method=post
        for setup in direct lb-1 lb-3; do
            case $setup in
                direct) port=${ports[0]} ;;
                lb-1) port=$ONE ;;
                lb-3) port=$THREE ;;
            esac
            r=$(rps "$port" "/$app" "$method")
            echo "round $round $app $setup: $r req/s" >&2
            sum[$app,$setup]=$(python3 -c "print(${sum[$app,$setup]:-0} + $r)")
        done
    done
done

echo
echo "wrk -t2 -c$CONNS -d$DURATION, $ROUNDS alternated rounds (mean), $(nproc) cores, loopback"
printf '%-8s %10s %10s %10s %12s %12s\n' app direct lb-1 lb-3 "lb-1/direct" "lb-3/lb-1"
for app in hello counter; do
    python3 -c "
d, one, three = (${sum[$app,direct]} / $ROUNDS, ${sum[$app,lb-1]} / $ROUNDS, ${sum[$app,lb-3]} / $ROUNDS)
print(f'{\"$app\":<8} {d:10.0f} {one:10.0f} {three:10.0f} {one / d:12.2f} {three / one:12.2f}')"
done
