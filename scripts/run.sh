#!/usr/bin/env bash
# Start the whole stack in the foreground: broker (Mosquitto, or RabbitMQ with
# BROKER=rabbitmq), front server (nginx), granian (the web tier), and the relay, presence
# and push workers (see Procfile).
# Ctrl-C (or SIGTERM) stops all of it. `make run` sets up the virtualenv and the Debian
# packages first; this script only prepares the data directory and the database.
#
# Several stacks can run side by side when each has its own ports and DATA_DIR:
#   HTTP_PORT=8001 MQTT_PORT=1884 MQTT_WS_PORT=9002 DATA_DIR=var2 make run
# (with BROKER=rabbitmq, RABBITMQ_AMQP_PORT, RABBITMQ_MANAGEMENT_PORT, RABBITMQ_DIST_PORT,
# RABBITMQ_EPMD_PORT and BROKER_AUTH_PORT too: .env.example).
set -euo pipefail

cd "$(dirname "$0")/.."

# Values from .env apply only where the environment does not set them already (the same
# rule and parser as the settings: chatserver/dotenv.py).
# ENV_FILE names another file; set but empty, none is read.
if [[ -n ${ENV_FILE-.env} ]]; then
    eval "$(.venv/bin/python -m chatserver.dotenv "${ENV_FILE-.env}")"
fi

export HTTP_PORT="${HTTP_PORT:-8000}"
export MQTT_PORT="${MQTT_PORT:-1883}"
export MQTT_WS_PORT="${MQTT_WS_PORT:-9001}"
export BROKER="${BROKER:-mosquitto}" BROKER_EXTERNAL="${BROKER_EXTERNAL:-off}"
# Absolute, so every process agrees on it whatever its working directory.
DATA_DIR="$(realpath -m "${DATA_DIR:-var}")"
export DATA_DIR
# Python processes write to honcho's pipe: without this their logs arrive late.
export PYTHONUNBUFFERED=1
# Debian installs mosquitto and nginx in /usr/sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

mkdir -p "$DATA_DIR"

.venv/bin/python manage.py migrate --noinput
# Renders $DATA_DIR/broker/mosquitto.conf and provisions the broker's accounts, or with
# BROKER=rabbitmq the node's directory $DATA_DIR/broker/rabbitmq/ (scripts/broker.sh).
# BROKER_EXTERNAL=on: the broker is somebody else's (`make cluster`, hosts of its own):
# neither prepared nor started here.
# One relay per partition (RELAY_PARTITIONS, chatserver/relay.py); RELAY_PROCESSES above it
# adds standbys, each taking over the partition of a relay that dies. An external broker:
# none of the Procfile's `broker` (honcho starts `broker=0` copies of it).
concurrency="relay=${RELAY_PROCESSES:-${RELAY_PARTITIONS:-1}}"
if [[ ${BROKER_EXTERNAL,,} =~ ^(1|true|yes|on)$ ]]; then
    concurrency+=",broker=0"
else
    .venv/bin/python manage.py broker_prepare
fi
# Renders $DATA_DIR/front/nginx.conf (granian's socket goes beside it).
.venv/bin/python manage.py front_prepare >/dev/null

# `-e /dev/null`: honcho would otherwise apply .env over the environment (handled above,
# with the environment winning).
exec .venv/bin/honcho start -f Procfile -e /dev/null -c "$concurrency"
