#!/usr/bin/env bash
# The fleet test (tests/all/fleet.rs) with the replicas in containers: three replicas from
# the image (IMAGE, `localhost/tabula` by default: see deploy/ for how it is built) behind
# haproxy, on a three-master Redis Cluster, the counter and cart examples deployed through
# the admin API and under load while one container is killed (SIGKILL) and another started,
# then every container is stopped (SIGTERM) and replaced one by one, with a deploy of a new
# version in the middle. Prints the failed requests of each phase and checks the counts and
# the carts as the test does; exits non-zero when they do not hold.
#
#   bash bench/fleet-containers.sh
#
# Needs podman and runc, redis-server, haproxy, curl and python3; see ../CONTAINERS.md in the
# shared notes for this machine (crun refuses its cgroups: runc is used; podman's default
# ulimits fail: a containers.conf without them is written). The containers use the host's
# network (loopback only) and a read-only root filesystem; the image's entrypoint is tabula.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
require podman runc redis-server redis-cli haproxy curl python3
IMAGE=${IMAGE:-localhost/tabula}
podman image exists "$IMAGE" || {
    echo "bench: no image $IMAGE: build it first (deploy/Containerfile says how)" >&2
    exit 1
}
work_dir
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
export TABULA_ADMIN_TOKEN=bench-token-0123456789abcdef
containers=()
stop_all() {
    for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
    cleanup
}
trap stop_all EXIT

cargo build --release -q -p tabula >&2
counter=$(example counter)
cart=$(example cart)

# A three-master Redis Cluster on loopback.
nodes=()
for i in 0 1 2; do
    while :; do port=$(free_port); [ "$port" -le 55535 ] && break; done
    mkdir -p "$work/redis$i"
    background redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --cluster-enabled yes --cluster-node-timeout 2000 --dir "$work/redis$i" >/dev/null
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
    nodes+=("127.0.0.1:$port")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
for n in "${nodes[@]}"; do
    until redis-cli -p "${n#*:}" cluster info | grep -q cluster_state:ok; do sleep 0.1; done
done
store="redis+cluster://$(IFS=,; echo "${nodes[*]}")"

# Four slots of fixed ports (serving, operator, admin); r3 is empty until r1 is killed.
declare -A port operator admin
for s in 0 1 2 3; do port[$s]=$(free_port); operator[$s]=$(free_port); admin[$s]=$(free_port); done
start() { # start SLOT: a replica container in that slot
    local name="tabula-fleet-$1-$RANDOM"
    podman --runtime runc run -d --name "$name" --network host --read-only \
        -e TABULA_ADMIN_TOKEN -e TABULA_LOG=warn "$IMAGE" serve --store "$store" \
        --listen "127.0.0.1:${port[$1]}" --operator-listen "127.0.0.1:${operator[$1]}" \
        --admin-listen "127.0.0.1:${admin[$1]}" --cache-dir off --shutdown-delay 1 >/dev/null
    containers+=("$name")
    slot_container[$1]=$name
    until curl -sf "http://127.0.0.1:${operator[$1]}/readyz" >/dev/null; do sleep 0.1; done
}
declare -A slot_container
for s in 0 1 2; do start "$s"; done

LB=$(free_port)
cat >"$work/haproxy.cfg" <<EOF
global
    stats socket $work/haproxy.sock mode 600 level admin
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch 1
    # Why only these retries: tests/all/fleet.rs, HAPROXY_CONFIG.
    retry-on conn-failure empty-response
frontend web
    bind 127.0.0.1:$LB
    default_backend fleet
backend fleet
    balance roundrobin
    http-request disable-l7-retry unless METH_GET
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fall 1 rise 2
$(for s in 0 1 2 3; do echo "    server r$s 127.0.0.1:${port[$s]} check port ${operator[$s]}"; done)
EOF
background haproxy -db -f "$work/haproxy.cfg"
status_of() { # status_of SERVER: UP, DOWN, ... as haproxy sees it
    echo "show stat" | python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536): data += chunk
lines = data.decode().splitlines(); head = lines[0].lstrip("# ").split(",")
for l in lines[1:]:
    f = l.split(",")
    if len(f) > 17 and f[0] == "fleet" and f[1] == sys.argv[2]: print(f[head.index("status")])
' "$work/haproxy.sock" "$1"
}
wait_for() { until [[ "$(status_of "$1" 2>/dev/null)" == "$2"* ]]; do sleep 0.05; done; }
for s in 0 1 2; do wait_for "r$s" UP; done

deploy() { ./target/release/tabula deploy --admin-url "http://127.0.0.1:${admin[$1]}" "${@:2}"; }
deploy 0 "$counter" --name counter --route /counter >&2
deploy 0 "$cart" --name cart --route /cart >&2

# The load: clients recording every answer, with the phase in $work/phase.
echo steady >"$work/phase"
python3 - "$LB" "$work" <<'EOF' &
import http.client, json, re, sys, threading, time
lb, work = sys.argv[1], sys.argv[2]
stop, failures, counts, baskets = threading.Event(), [], [], []
phase = lambda: open(f"{work}/phase").read().strip()
order = ["steady", "kill", "rolling"]
def call(conn, method, path, body="", cookie=None):
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if cookie: headers["cookie"] = cookie
    conn.request(method, path, body, headers)
    r = conn.getresponse()
    return r.status, r.getheader("set-cookie"), r.read().decode()
def failed(started, what):
    failures.append((max(started, phase(), key=order.index), what))
def counter():
    conn = http.client.HTTPConnection("127.0.0.1", int(lb), timeout=10)
    while not stop.is_set():
        p = phase()
        try:
            status, _, body = call(conn, "POST", "/counter")
            if status == 200: counts.append(int(body))
            else: failed(p, f"POST /counter: {status}")
        except Exception as e:
            failed(p, f"POST /counter: {e!r}"); conn.close()
def shopper(i):
    conn = http.client.HTTPConnection("127.0.0.1", int(lb), timeout=10)
    _, cookie, _ = call(conn, "POST", "/cart/login", f"name=shopper{i}")
    cookie = cookie.split(";")[0]
    basket = {"cookie": cookie, "confirmed": [], "unsure": []}; baskets.append(basket)
    n = 0
    while not stop.is_set():
        p, item = phase(), f"item-{i}-{n}"; n += 1
        try:
            status, _, _ = call(conn, "POST", "/cart/add", f"item={item}", cookie)
            (basket["confirmed"] if status == 303 else basket["unsure"]).append(item)
            if status != 303: failed(p, f"POST /cart/add: {status}")
        except Exception as e:
            basket["unsure"].append(item); failed(p, f"POST /cart/add: {e!r}"); conn.close()
threads = [threading.Thread(target=counter) for _ in range(3)]
threads += [threading.Thread(target=shopper, args=(i,)) for i in range(3)]
for t in threads: t.start()
while phase() != "done": time.sleep(0.05)
stop.set()
for t in threads: t.join()
conn = http.client.HTTPConnection("127.0.0.1", int(lb), timeout=10)
total = int(call(conn, "GET", "/counter/value")[2])
ok = len(set(counts)) == len(counts)
for phase_name in order:
    print(f"{phase_name}: {sum(1 for p, _ in failures if p == phase_name)} failed requests")
killed_counts = sum(1 for p, w in failures if p == "kill" and w.startswith("POST /counter"))
print(f"counter at {total}; {len(counts)} increments got a 200; {total - len(counts)} ran without one "
      f"({killed_counts} increments failed during the kill)")
ok &= 0 <= total - len(counts) <= killed_counts
ok &= not any(p in ("steady", "rolling") for p, _ in failures)
for b in baskets:
    page = call(conn, "GET", "/cart", cookie=b["cookie"])[2]
    listed = re.findall(r"<li>(.*?)</li>", page)
    kept = [i for i in listed if i in b["confirmed"]]
    strays = [i for i in listed if i not in b["confirmed"] and i not in b["unsure"]]
    ok &= kept == b["confirmed"] and not strays
    print(f"{b['cookie'][:24]}…: {len(b['confirmed'])} confirmed items, {len(kept)} listed, {len(strays)} strays")
print("fleet in containers: " + ("counts exact, carts whole, rolling update clean" if ok else "FAILED"))
sys.exit(0 if ok else 1)
EOF
load=$!
sleep 2

echo kill >"$work/phase"
podman kill -s KILL "${slot_container[1]}" >/dev/null
start 3
wait_for r1 DOWN
wait_for r3 UP
sleep 1

echo rolling >"$work/phase"
for s in 0 2 3; do
    podman stop -t 30 "${slot_container[$s]}" >/dev/null # SIGTERM, then drain
    start "$s"
    wait_for "r$s" UP
    if [ "$s" = 0 ]; then
        deploy 0 "$counter" --name counter --route /counter --var release=2 -m mid-roll >&2
    fi
    sleep 0.3
done
echo done >"$work/phase"
wait "$load"
