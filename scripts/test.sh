#!/usr/bin/env bash
# `make test`: the suite on each broker named (`make test` passes TEST_BROKERS), all at
# once, with PYTEST_ARGS (shell words). One broker: that pass in the foreground.
#
# Several run side by side because they mostly wait (brokers and stacks booting, faults
# timing out, phones reconnecting), not compute: on a 2-core machine the Mosquitto pass
# took 12:07 alone and 13:10 beside the RabbitMQ pass (11:49 alone, 11:53 beside it), so
# the two take 13 minutes instead of 24. Each pass has its own PostgreSQL cluster,
# brokers and servers on ports of its own (tests/support/). Each pass's output goes to
# var/test/<broker>.log and is printed when it ends; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
eval "args=(${PYTEST_ARGS:-})"
if [ $# -eq 0 ]; then
    echo "usage: scripts/test.sh BROKER..." >&2
    exit 2
fi
if [ $# -eq 1 ]; then
    echo "== the suite on $1"
    exec "$python" -m pytest --broker="$1" "${args[@]}"
fi

logs=var/test
mkdir -p "$logs"
# Job control: each pass in a process group of its own, whose SIGINT is not ignored (a
# background job's is, without it), so that Ctrl-C reaches pytest and its teardown stops
# what the pass started.
set -m
brokers=("$@")
pids=()
for broker in "${brokers[@]}"; do
    "$python" -m pytest --broker="$broker" "${args[@]}" >"$logs/$broker.log" 2>&1 &
    pids+=("$!")
    echo "== the suite on $broker: started (output in $logs/$broker.log)"
done
trap 'for pid in "${pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null; done' INT TERM

status=0
for i in "${!brokers[@]}"; do
    # `wait` returns early when a trapped signal comes: wait again until the pass is over.
    while true; do
        wait "${pids[$i]}"
        code=$?
        kill -0 "${pids[$i]}" 2>/dev/null || break
    done
    [ "$code" -eq 0 ] && result=passed || { result="FAILED (exit $code)"; status=1; }
    echo "== the suite on ${brokers[$i]}: $result"
    cat "$logs/${brokers[$i]}.log"
done
exit $status
