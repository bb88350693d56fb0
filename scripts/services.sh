#!/usr/bin/env bash
# Start local RabbitMQ and Redis when they are installed but not listening,
# then wait until both accept connections. Used by `make demo`, `make test`
# and CI. Hosts and ports come from BATCHGATE_RABBITMQ_PORT and
# BATCHGATE_REDIS_PORT (defaults 5672 and 6379), always on 127.0.0.1.
set -euo pipefail

rabbitmq_port=${BATCHGATE_RABBITMQ_PORT:-5672}
redis_port=${BATCHGATE_REDIS_PORT:-6379}
wait_secs=${BATCHGATE_SERVICE_WAIT_SECS:-90}

listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() {
  local name=$1 port=$2 deadline=$((SECONDS + wait_secs))
  until listening "$port"; do
    if ((SECONDS > deadline)); then
      echo "error: $name is not accepting connections on 127.0.0.1:$port after ${wait_secs} s" >&2
      return 1
    fi
    sleep 1
  done
}

if ! listening "$redis_port"; then
  if ! command -v redis-server >/dev/null; then
    echo "error: Redis is not listening on 127.0.0.1:$redis_port and is not installed." >&2
    echo "Install it with: apt-get install redis-server" >&2
    exit 1
  fi
  echo "Starting Redis on 127.0.0.1:$redis_port" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --logfile /tmp/batchgate-redis.log
fi

if ! listening "$rabbitmq_port"; then
  if ! command -v rabbitmq-server >/dev/null; then
    echo "error: RabbitMQ is not listening on 127.0.0.1:$rabbitmq_port and is not installed." >&2
    echo "Install it with: apt-get install rabbitmq-server" >&2
    exit 1
  fi
  echo "Starting RabbitMQ on 127.0.0.1:$rabbitmq_port" >&2
  rabbitmq-server -detached
fi

wait_for Redis "$redis_port"
until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = "PONG" ]; do sleep 0.5; done
wait_for RabbitMQ "$rabbitmq_port"
if command -v rabbitmqctl >/dev/null; then
  # The port opens before the broker accepts AMQP sessions.
  timeout "$wait_secs" rabbitmqctl -q await_startup >/dev/null 2>&1 || true
fi
