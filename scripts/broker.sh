#!/usr/bin/env bash
# The Procfile's `broker`: Mosquitto or a RabbitMQ node, as BROKER says (chatserver/settings.py),
# in the foreground (honcho needs one), from the files `manage.py broker_prepare` wrote
# under DATA_DIR/broker/. SIGTERM stops it cleanly.
#
# RabbitMQ: Debian's start script runs the Erlang VM as the current user (the wrapper in
# /usr/sbin would switch to the `rabbitmq` user and /var/lib/rabbitmq) and turns SIGTERM
# into a clean stop; every port, directory and the Erlang cookie come from node.env.
set -euo pipefail

cd "$(dirname "$0")/.."
: "${DATA_DIR:?DATA_DIR must be set (scripts/run.sh sets it)}"

broker="${BROKER:-mosquitto}"
case "${broker,,}" in
    mosquitto)
        exec mosquitto -c "$DATA_DIR/broker/mosquitto.conf"
        ;;
    rabbitmq)
        node_env="${RABBITMQ_NODE_DIR:-$DATA_DIR/broker/rabbitmq}/node.env"
        [[ -f $node_env ]] || { echo "broker: $node_env missing: run manage.py broker_prepare" >&2; exit 1; }
        # shellcheck source=/dev/null
        . "$node_env"
        set +e
        # The node and its epmd (ERL_EPMD_PORT, ERL_EPMD_ADDRESS from node.env) run in
        # sessions of their own: honcho signals its whole process group, and the node must
        # get its SIGTERM from `stop` below, after the statistics handler is gone, not at
        # once. An epmd already there (another node of this machine) is used as it is;
        # the one a node would start by itself is a daemon that outlives it.
        epmd_pid=
        if ! epmd -names >/dev/null 2>&1; then
            setsid epmd &
            epmd_pid=$!
            for _ in $(seq 50); do
                epmd -names >/dev/null 2>&1 && break
                sleep 0.05
            done
        fi
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server &
        node_pid=$!
        # RabbitMQ 3.10.8's stop waits 5 s on a timeout when the management plugin's
        # statistics handler is still installed (it asks a stopping node for a statistics
        # refresh); removed first (~0.7 s, one rabbitmqctl), the node stops in ~1 s, within
        # honcho's 5 s before SIGKILL. (tests/support/rabbitmq.py does the same.)
        stop() {
            trap '' TERM INT
            /usr/lib/rabbitmq/bin/rabbitmqctl eval \
                'gen_event:delete_handler(rabbit_event, rabbit_mgmt_db_handler, []).' >/dev/null 2>&1
            kill -TERM "$node_pid" 2>/dev/null
            wait "$node_pid"
            [[ -n $epmd_pid ]] && kill "$epmd_pid" 2>/dev/null
            exit 0
        }
        trap stop TERM INT
        wait "$node_pid"
        rc=$?
        # The node exited by itself (a failed boot): its epmd goes too.
        [[ -n $epmd_pid ]] && kill "$epmd_pid" 2>/dev/null
        exit "$rc"
        ;;
    *)
        echo "broker: BROKER must be mosquitto or rabbitmq, got '$broker'" >&2
        exit 2
        ;;
esac
