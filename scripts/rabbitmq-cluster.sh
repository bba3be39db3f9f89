#!/usr/bin/env bash
# Three RabbitMQ nodes on this machine, joined into one cluster (`make cluster`):
#
#   scripts/rabbitmq-cluster.sh start    prepare, start (in the background) and join them
#   scripts/rabbitmq-cluster.sh status   which are running, and the cluster as node A sees it
#   scripts/rabbitmq-cluster.sh stop     stop them (their data stays under DATA_DIR/cluster/)
#
# Nodes chat-a, chat-b and chat-c @localhost, each from broker/rabbitmq.conf rendered by
# `manage.py broker_prepare` into DATA_DIR/cluster/<node>/ with the same DATA_DIR (so the
# same admin password, Erlang cookie, auth secret and TLS certificate). Node A has the
# stack's ports (MQTT_PORT 1883, MQTT_WS_PORT 9001, MQTT_TLS_PORT 8883, MQTT_WSS_PORT 9443,
# RABBITMQ_AMQP_PORT 5672, RABBITMQ_MANAGEMENT_PORT 15672, RABBITMQ_DIST_PORT 25672), B each
# of them + 1, C + 2; one epmd on RABBITMQ_EPMD_PORT (4369). All below 32768.
#
# They join by the config's classic peer discovery (RABBITMQ_CLUSTER_NODES), no
# rabbitmqctl: A boots first, then B and C side by side join it (nodes booting together
# with none of the others up yet would each form a cluster of their own). Then run the
# stack on it without a broker of its own, as `start` prints:
#   BROKER=rabbitmq BROKER_EXTERNAL=on MQTT_HOST=... RABBITMQ_MANAGEMENT_URL=... make run
# Production on three hosts: README, "Scaling out".
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -n ${ENV_FILE-.env} ]]; then
    eval "$(.venv/bin/python -m chatserver.dotenv "${ENV_FILE-.env}")"
fi
DATA_DIR="$(realpath -m "${DATA_DIR:-var}")"
export DATA_DIR BROKER=rabbitmq ENV_FILE=
CLUSTER_DIR="$DATA_DIR/cluster"
NAMES=(chat-a chat-b chat-c)
MEMBERS="chat-a@localhost,chat-b@localhost,chat-c@localhost"
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
CTL=/usr/lib/rabbitmq/bin/rabbitmqctl
# Debian installs epmd in /usr/bin, the stack's other servers in /usr/sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# The environment `manage.py broker_prepare` renders node $1 (0, 1, 2) from.
node_settings() {
    local i=$1
    echo "MQTT_PORT=$((${MQTT_PORT:-1883} + i)) MQTT_WS_PORT=$((${MQTT_WS_PORT:-9001} + i))" \
        "MQTT_TLS_PORT=$((${MQTT_TLS_PORT:-8883} + i)) MQTT_WSS_PORT=$((${MQTT_WSS_PORT:-9443} + i))" \
        "RABBITMQ_AMQP_PORT=$((${RABBITMQ_AMQP_PORT:-5672} + i))" \
        "RABBITMQ_MANAGEMENT_PORT=$((${RABBITMQ_MANAGEMENT_PORT:-15672} + i))" \
        "RABBITMQ_DIST_PORT=$((${RABBITMQ_DIST_PORT:-25672} + i))" \
        "RABBITMQ_NODENAME=${NAMES[i]}@localhost RABBITMQ_NODE_DIR=$CLUSTER_DIR/${NAMES[i]}" \
        "RABBITMQ_CLUSTER_NODES=$MEMBERS"
}

node_dir() { echo "$CLUSTER_DIR/${NAMES[$1]}"; }

# Run a command with node $1's environment (its name, cookie, epmd).
with_node() {
    local dir
    dir="$(node_dir "$1")"
    shift
    (. "$dir/node.env" && "$@")
}

running() {
    local pid_file
    pid_file="$(node_dir "$1")/server.pid"
    [[ -f $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_node() {
    local i=$1 dir
    dir="$(node_dir "$i")"
    if running "$i"; then
        echo "${NAMES[i]}: already running"
        return
    fi
    # Its own session: a Ctrl-C in this terminal does not reach it. (`exec setsid` keeps
    # the pid: the start script's, which turns SIGTERM into a clean stop.)
    (. "$dir/node.env" && exec setsid "$SERVER") >>"$dir/server.out" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
    echo "${NAMES[i]}: starting (log: $dir/log/${NAMES[i]}@localhost.log)"
}

await_node() {
    # await_startup gives up at once on a node epmd does not know yet: wait for that first.
    local n
    for n in $(seq 600); do
        running "$1" || break
        with_node "$1" epmd -names 2>/dev/null | grep -q "^name ${NAMES[$1]} " && break
        sleep 0.1
    done
    if ! running "$1" || ! with_node "$1" "$CTL" -q await_startup --timeout 120 >/dev/null; then
        echo "${NAMES[$1]} did not start; the end of its log:" >&2
        tail -20 "$(node_dir "$1")/log/${NAMES[$1]}@localhost.log" >&2 || tail -20 "$(node_dir "$1")/server.out" >&2
        exit 1
    fi
}

start() {
    [[ -x $SERVER ]] || { echo "RabbitMQ is not installed: bash scripts/system-deps.sh rabbitmq" >&2; exit 1; }
    # Base ports closer than 3 apart would give two nodes one port: refuse before starting.
    local clash
    clash="$(for i in 0 1 2; do node_settings "$i" | grep -o '_PORT=[0-9]*' | cut -d= -f2; done; echo "${RABBITMQ_EPMD_PORT:-4369}")"
    clash="$(sort <<<"$clash" | uniq -d)"
    [[ -z $clash ]] || { echo "the nodes' ports collide ($(echo $clash)): keep the base ports 3 apart" >&2; exit 2; }
    mkdir -p "$CLUSTER_DIR"
    for i in 0 1 2; do
        # shellcheck disable=SC2046
        env $(node_settings "$i") .venv/bin/python manage.py broker_prepare >/dev/null
    done
    # One epmd for the three, in a session of its own, stopped by `stop`.
    if ! with_node 0 epmd -names >/dev/null 2>&1; then
        (. "$(node_dir 0)/node.env" && exec setsid epmd) >"$CLUSTER_DIR/epmd.out" 2>&1 </dev/null &
        echo $! >"$CLUSTER_DIR/epmd.pid"
    fi
    start_node 0
    await_node 0
    # A restart of the whole cluster: the nodes after the first wait about 100 s in their
    # vhost's recovery before they serve (measured on 3.10.8, started one by one or side
    # by side alike; a fresh cluster, or one node restarted, takes seconds).
    start_node 1
    start_node 2
    await_node 1
    await_node 2
    status
    local urls=() hosts=()
    for i in 0 1 2; do
        urls+=("http://127.0.0.1:$((${RABBITMQ_MANAGEMENT_PORT:-15672} + i))")
        hosts+=("127.0.0.1:$((${MQTT_PORT:-1883} + i))")
    done
    echo
    echo "The stack on this cluster (phones get node A's MQTT ports; the server's processes every node's"
    echo "MQTT listener and management API, each tried in turn):"
    echo "  BROKER=rabbitmq BROKER_EXTERNAL=on MQTT_PORT=${MQTT_PORT:-1883} MQTT_HOST=$(IFS=,; echo "${hosts[*]}")" \
        "RABBITMQ_MANAGEMENT_URL=$(IFS=,; echo "${urls[*]}") make run"
}

status() {
    for i in 0 1 2; do
        if running "$i"; then
            echo "${NAMES[i]}: running (pid $(cat "$(node_dir "$i")/server.pid")), $(node_settings "$i" | grep -o 'MQTT_PORT=[0-9]*')"
        else
            echo "${NAMES[i]}: stopped"
        fi
    done
    for i in 0 1 2; do
        if running "$i"; then
            echo "running in ${NAMES[i]}'s cluster: $(with_node "$i" "$CTL" -q cluster_status --formatter json 2>/dev/null |
                .venv/bin/python -c 'import json, sys; print(" ".join(json.load(sys.stdin)["running_nodes"]))')"
            return
        fi
    done
}

stop() {
    local pids=()
    for i in 2 1 0; do
        running "$i" || continue
        # Without the management plugin's statistics handler the stop takes ~1 s, not ~6 s
        # (a 5 s timeout in 3.10.8's shutdown: scripts/broker.sh).
        with_node "$i" "$CTL" -q eval \
            'gen_event:delete_handler(rabbit_event, rabbit_mgmt_db_handler, []).' >/dev/null 2>&1 || true
        pid="$(cat "$(node_dir "$i")/server.pid")"
        kill -TERM "$pid"
        pids+=("$pid")
        echo "${NAMES[i]}: stopping"
    done
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    done
    if [[ -f $CLUSTER_DIR/epmd.pid ]]; then
        kill "$(cat "$CLUSTER_DIR/epmd.pid")" 2>/dev/null || true
        rm -f "$CLUSTER_DIR/epmd.pid"
    fi
    rm -f "$CLUSTER_DIR"/*/server.pid
    echo "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
