#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ answer on localhost (what the tests and the local run
# need): starts them if they are installed but down, installs them from Debian's packages if
# they are missing (needs root). Does nothing when both already answer.
#
#   scripts/services.sh [--trust-localhost]
#
# --trust-localhost (the test path: scripts/test.sh, CI): on a PostgreSQL this script has just
# installed, let every local user connect over 127.0.0.1 and ::1 as any role without a password
# (`trust` in pg_hba.conf), as the tests do. It says so, and it never touches a PostgreSQL that
# was there before. Without it, a fresh PostgreSQL keeps Debian's password authentication.
set -euo pipefail

trust_localhost=0
for arg in "$@"; do
  case $arg in
    --trust-localhost) trust_localhost=1 ;;
    *) echo "usage: $0 [--trust-localhost]" >&2; exit 2 ;;
  esac
done

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
  local hba=/etc/postgresql/$version/main/pg_hba.conf
  if [ $fresh = 1 ] && [ $trust_localhost = 1 ]; then
    # The tests connect as postgres over TCP without a password.
    log "test setup: $hba now trusts every connection from 127.0.0.1 and ::1 (any role, no password);"
    log "  (the file before: $hba.before-vmpipe; put it back and reload PostgreSQL to undo)"
    as_root cp "$hba" "$hba.before-vmpipe"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  elif [ $fresh = 1 ]; then
    log "PostgreSQL $version was just installed with password authentication (unchanged)."
    log "  Give vmpipe a role and a database, and name them in VMPIPE_DATABASE_URL, e.g.:"
    log "  sudo -u postgres createuser --pwprompt vmpipe && sudo -u postgres createdb -O vmpipe vmpipe"
    log "  export VMPIPE_DATABASE_URL=postgres://vmpipe:PASSWORD@127.0.0.1:5432/vmpipe"
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
