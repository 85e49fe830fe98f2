#!/usr/bin/env bash
# Make sure RabbitMQ answers on 127.0.0.1:5672 (guest/guest): start it if installed, install it from Debian if not.
set -euo pipefail

answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

wait_for_it() {
  for _ in $(seq 1 120); do
    answers && return 0
    sleep 1  # waiting for an external daemon to boot
  done
  echo "RabbitMQ did not come up on 127.0.0.1:5672 within 120 s" >&2
  return 1
}

answers && exit 0

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is not installed; installing it from Debian" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi

echo "starting RabbitMQ" >&2
rabbitmq-server -detached >/dev/null 2>&1 || true
wait_for_it
command -v rabbitmqctl >/dev/null 2>&1 && rabbitmqctl await_startup >/dev/null 2>&1 || true
