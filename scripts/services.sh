#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ answer on localhost (what the tests and the local run
# need): starts them if they are installed but down, installs them from Debian's packages if
# they are missing (needs root). Does nothing when both already answer.
set -euo pipefail

PG_PORT=5432
AMQP_PORT=5672

log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@"; then return 0; fi
    sleep 1
  done
  log "$name did not come up"; return 1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open $PG_PORT; then return 0; fi
  local fresh=0
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql
    fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ $fresh = 1 ]; then
    # The tests connect as postgres over TCP without a password, as on our machines.
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for PostgreSQL port_open $PG_PORT
}

ensure_rabbitmq() {
  if port_open $AMQP_PORT; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null; then
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  as_root rabbitmqctl await_startup >/dev/null 2>&1 || true
  wait_for RabbitMQ port_open $AMQP_PORT
}

ensure_postgres
ensure_rabbitmq
log "PostgreSQL (127.0.0.1:$PG_PORT) and RabbitMQ (127.0.0.1:$AMQP_PORT) are up"
