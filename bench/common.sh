# Shared by the bench scripts: sourced, not run. Checks tools, picks ports, runs Redis, and
# stops everything started through `background` when the script exits.

require() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || {
            echo "bench: $tool is missing: apt-get install redis-server wrk" >&2
            exit 1
        }
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pids=()
work=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$work" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# work_dir: a scratch directory in $work, removed (by cleanup) when the script exits.
work_dir() {
    work=$(mktemp -d)
}

# example NAME: builds examples/NAME for wasm32-wasip2 into target/guests (needs the release
# tabula built) and prints the component's path.
example() {
    ./target/release/tabula build "examples/$1" --target-dir target/guests 2>/dev/null | cut -f3
}

# background CMD...: runs CMD in the background until the script exits; $! is its pid.
background() {
    "$@" &
    pids+=($!)
}

# server_procs PID: PID and its child processes (a tabula server's workers), one per word.
server_procs() {
    echo "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null || true)
}

# start_redis: a throwaway redis-server on a free port, in REDIS_PORT.
start_redis() {
    REDIS_PORT=$(free_port)
    background redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null
    until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done
}

# python_hello: builds bench/python/app.py with componentize-py (installed with pip when
# missing) into target/guests/python/pyhello.wasm, once, and prints that path.
python_hello() {
    local py=target/guests/python
    if [ ! -f "$py/pyhello.wasm" ]; then
        command -v componentize-py >/dev/null || pip install -q componentize-py >&2
        local wit
        wit=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "wasmtime-wasi-http":
        print(os.path.join(os.path.dirname(p["manifest_path"]), "wit"))')
        mkdir -p "$py"
        cp bench/python/app.py "$py/"
        (cd "$py" && componentize-py -d "$wit" -w wasi:http/proxy@0.2.12 componentize app -o pyhello.wasm >/dev/null)
    fi
    echo "$py/pyhello.wasm"
}
