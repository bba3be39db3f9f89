#!/usr/bin/env bash
# Install the Debian packages the project needs, and only those that are missing.
#
#   scripts/system-deps.sh broker front      # Mosquitto and nginx (for `make run`)
#   scripts/system-deps.sh broker front postgres redis rabbitmq  # + PostgreSQL, Redis, RabbitMQ (`make test`)
#   scripts/system-deps.sh rabbitmq          # RabbitMQ and Erlang (`make run BROKER=rabbitmq`)
#   scripts/system-deps.sh make              # make itself (a bare image may lack it)
#   scripts/system-deps.sh venv              # what `python3 -m venv` needs (ensurepip)
#
# Nothing is touched when everything is present. The services these packages ship are
# kept from running: the project starts its own broker, front server and throw-away
# clusters on ports of its choosing, and a system broker on 1883 would collide with `make run`.
set -euo pipefail

# Is a Debian package installed?
installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]
}

# Is any PostgreSQL server installed (Debian keeps them in /usr/lib/postgresql/<ver>)?
have_postgres_server() {
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
for group in "$@"; do
    case "$group" in
        broker)
            # `mosquitto` brings the broker, mosquitto_ctrl and the dynamic-security
            # plugin; `mosquitto-clients` brings mosquitto_pub/_sub for debugging; the
            # compiler and headers build the login guard plugin (broker/login_guard.c,
            # chatserver/brokerconf.py BUILD_PACKAGES).
            for pkg in mosquitto mosquitto-clients gcc libc6-dev mosquitto-dev libmosquitto-dev; do
                installed "$pkg" || missing+=("$pkg")
            done
            ;;
        front)
            # nginx, the front server `make run` starts before granian (front/nginx.conf).
            installed nginx || missing+=(nginx)
            ;;
        postgres)
            have_postgres_server || missing+=(postgresql)
            ;;
        redis)
            # The tests of the Redis path (REDIS_URL) start a throw-away redis-server.
            installed redis-server || missing+=(redis-server)
            ;;
        rabbitmq)
            # RabbitMQ 3.10 (it brings Erlang/OTP 25 and epmd) for BROKER=rabbitmq and the
            # suite's RabbitMQ tests; the project starts its nodes itself
            # (/usr/lib/rabbitmq/bin/rabbitmq-server, chatserver/rabbitconf.py).
            installed rabbitmq-server || missing+=(rabbitmq-server)
            ;;
        make)
            command -v make >/dev/null || missing+=(make)
            ;;
        venv)
            # Debian's python3 lacks ensurepip until python3-venv is installed.
            python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
            ;;
        *)
            echo "system-deps: unknown group '$group' (expected: broker, front, postgres, redis, rabbitmq, make, venv)" >&2
            exit 2
            ;;
    esac
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ((EUID != 0)); then
    echo "system-deps: missing Debian packages: ${missing[*]}" >&2
    echo "system-deps: install them as root: apt-get install ${missing[*]}" >&2
    exit 1
fi

echo "system-deps: installing ${missing[*]}"

# While installing, forbid maintainer scripts to start services (the standard
# policy-rc.d mechanism, honoured by invoke-rc.d and deb-systemd-invoke). Leave an
# existing policy (Docker images ship one) alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# On a machine booted with systemd the units are still enabled (and would start at the
# next boot): disable and stop them. Failures do not matter here.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    for pkg in "${missing[@]}"; do
        case "$pkg" in
            mosquitto) systemctl disable --now mosquitto.service || true ;;
            postgresql) systemctl disable --now postgresql.service || true ;;
            redis-server) systemctl disable --now redis-server.service || true ;;
            # Erlang's epmd comes with a socket unit of its own that would hold port 4369
            # (one command per unit: systemctl gives up on all when one is missing).
            rabbitmq-server)
                for unit in rabbitmq-server.service epmd.socket epmd.service; do
                    systemctl disable --now "$unit" || true
                done
                ;;
        esac
    done
fi
