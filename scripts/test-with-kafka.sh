#!/usr/bin/env bash
# Run the test suite against a broker of its own: `taskstream kafka up` on a free
# port in its own data dir, pytest with TASKSTREAM_BOOTSTRAP pointing at it, and
# `taskstream kafka down` on every exit path (trap), pass or fail.
# pytest's exit code 5 ("no tests ran") counts as a failure.
set -euo pipefail

VENV=${VENV:-.venv}
DATA_DIR=${KAFKA_DATA_DIR:-$PWD/.ci-build/kafka}
PORT=${KAFKA_PORT:-$("$VENV/bin/python" -c 'from taskstream.localkafka.cluster import free_port_block; print(free_port_block(2))')}

stop_kafka() {
    "$VENV/bin/taskstream" kafka down --data-dir "$DATA_DIR" || true
}
trap stop_kafka EXIT

"$VENV/bin/taskstream" kafka up --port "$PORT" --data-dir "$DATA_DIR" --timeout 180
export TASKSTREAM_BOOTSTRAP="127.0.0.1:$PORT"

set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
