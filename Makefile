# make run   set everything up and start the stack in the foreground (Ctrl-C stops it)
# make test  set everything up and run the suite on Mosquitto and, beside it, its broker-facing
#            part on RabbitMQ (PYTEST_ARGS="-x -k foo" to narrow it, TEST_BROKERS=mosquitto for one)
# make bench a fresh PostgreSQL stack under standard load profiles (BENCH_ARGS="--quick";
#            BROKER=rabbitmq: on a RabbitMQ node, BENCH_ARGS="--cluster": three, one then down)
#
# make cluster  three RabbitMQ nodes on this machine, joined (scripts/rabbitmq-cluster.sh;
#               `make cluster-stop`, `make cluster-status`)
#
# Both work on a fresh Debian machine as root: the virtualenv, the requirements and the
# Debian packages (Mosquitto, or RabbitMQ with BROKER=rabbitmq; PostgreSQL, Redis and
# RabbitMQ for the tests) are installed when missing.

PYTHON := .venv/bin/python
# Touched after a successful install: pip runs again only when requirements.txt is newer.
VENV_STAMP := .venv/.requirements-installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
TEST_BROKERS ?= mosquitto rabbitmq
# mosquitto (the default) or rabbitmq (chatserver/settings.py BROKER): which broker's
# packages `make run` installs. The environment's, else what .env says (ENV_FILE names
# another file; set but empty, none), read by the settings' own parser
# (chatserver/dotenv.py: the standard library only, so the system python3 runs it
# before .venv exists).
ENV_FILE_PATH := $(if $(filter undefined,$(origin ENV_FILE)),.env,$(ENV_FILE))
ifeq ($(origin BROKER),undefined)
BROKER := $(if $(ENV_FILE_PATH),$(shell python3 -c 'import sys; from pathlib import Path; from chatserver.dotenv import parse; f = Path(sys.argv[1]); print(parse(f.read_text()).get("BROKER", "").lower() if f.is_file() else "")' '$(ENV_FILE_PATH)' 2>/dev/null))
endif

.PHONY: venv system-deps system-deps-test run test bench cluster cluster-stop cluster-status clean

venv: $(VENV_STAMP)

# A failed attempt must not leave a half-made .venv that make would take as done.
$(PYTHON):
	bash scripts/system-deps.sh venv
	python3 -m venv .venv || { rm -rf .venv; exit 1; }

# Order-only on the interpreter: creating the venv must not count as "newer".
$(VENV_STAMP): requirements.txt | $(PYTHON)
	$(PYTHON) -m pip install --disable-pip-version-check --no-input -r requirements.txt
	touch $@

system-deps:
	bash scripts/system-deps.sh $(if $(filter rabbitmq,$(BROKER)),rabbitmq,broker) front

system-deps-test:
	bash scripts/system-deps.sh broker front postgres redis rabbitmq

run: venv system-deps
	bash scripts/run.sh

# The whole suite on Mosquitto and, at the same time, on RabbitMQ the tests that talk to a
# broker (the others do the same on either: tests/support/brokers.py); each pass's output
# is printed when it ends (and kept in var/test/). The target fails if either did.
# TEST_BROKERS=mosquitto for one pass only, in the foreground (scripts/test.sh).
export PYTEST_ARGS
test: venv system-deps-test
	@bash scripts/test.sh $(TEST_BROKERS)

# Results are saved under bench/results/ (see bench/run.py).
bench: venv system-deps-test
	$(PYTHON) bench/run.py $(if $(filter rabbitmq,$(BROKER)),--broker rabbitmq) $(BENCH_ARGS)

cluster: venv
	bash scripts/system-deps.sh rabbitmq
	bash scripts/rabbitmq-cluster.sh start

cluster-stop:
	bash scripts/rabbitmq-cluster.sh stop

cluster-status:
	bash scripts/rabbitmq-cluster.sh status

# Removes the default data directory (database, broker state, uploads, secrets).
clean:
	rm -rf var
