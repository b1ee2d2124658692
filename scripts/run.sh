#!/usr/bin/env bash
# Runs the whole pipeline in the foreground without Docker: builds both binaries, then starts
# ingest and worker (the worker applies the database migrations first). Ctrl-C stops both.
# Needs PostgreSQL and RabbitMQ on localhost (scripts/services.sh starts them, or installs them;
# it never changes how PostgreSQL authenticates: a fresh one needs a role and
# VMPIPE_DATABASE_URL, which it tells you how to make).
# Settings: VMPIPE_* environment variables, or VMPIPE_CONFIG=file.toml (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin ingest --bin worker

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
# Either one exiting (or Ctrl-C) stops the other.
wait -n || true
