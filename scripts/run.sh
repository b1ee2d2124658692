#!/usr/bin/env bash
# Runs the whole pipeline in the foreground without Docker: builds the three binaries, then
# starts ingest, worker and api (the inbox page and HTTP API on VMPIPE_API_LISTEN, by default
# http://127.0.0.1:8081/; a token: target/release/api token create --name me --all-accounts).
# The worker and the api apply the database migrations first. Ctrl-C stops all three.
# Needs PostgreSQL and RabbitMQ on localhost (scripts/services.sh starts them, or installs them;
# it never changes how PostgreSQL authenticates: a fresh one needs a role and
# VMPIPE_DATABASE_URL, which it tells you how to make).
# Settings: VMPIPE_* environment variables, or VMPIPE_CONFIG=file.toml (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin ingest --bin worker --bin api

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
}
trap stop INT TERM EXIT

target/release/worker &
pids+=($!)
target/release/ingest &
pids+=($!)
target/release/api &
pids+=($!)
# Any one exiting (or Ctrl-C) stops the others.
wait -n || true
