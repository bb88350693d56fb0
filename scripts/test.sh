#!/usr/bin/env bash
# Run the whole test suite against the local RabbitMQ and Redis.
#
# The suite runs in a RabbitMQ vhost of its own, created here and deleted on
# exit, so nothing is left on the broker even when a test fails. Each test
# also uses its own queue names and Redis key prefix and removes them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

if ! python3 -c 'import pika' 2>/dev/null; then
  echo "Installing the Python AMQP client pika for the contract test" >&2
  python3 -m pip install --quiet --disable-pip-version-check pika
fi
if ! python3 -c 'import jsonschema' 2>/dev/null; then
  echo "Installing the Python package jsonschema for the ledger export test" >&2
  python3 -m pip install --quiet --disable-pip-version-check jsonschema
fi

vhost="batchgate-test-$(date +%s)-$$"
rabbitmqctl -q add_vhost "$vhost" >/dev/null
trap 'rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true' EXIT
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
export BATCHGATE_TEST_BROKER_URL="amqp://guest:guest@127.0.0.1:5672/$vhost"

# Crash points let tests abort the worker at exact steps; release builds leave them out.
cargo build --workspace --bins --features batchgate-worker/crash-points
cargo test --workspace --no-fail-fast -- --test-threads "${BATCHGATE_TEST_THREADS:-4}"
