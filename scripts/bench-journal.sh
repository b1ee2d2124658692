#!/usr/bin/env bash
# Journal drain benchmark, loopback only: how fast a release ingest publishes the jobs it
# journaled while RabbitMQ was away, once RabbitMQ is back.
#   scripts/bench-journal.sh [JOBS]     (default 20000)
# One upload is journaled by an ingest that cannot reach RabbitMQ; its journal entry is copied
# JOBS times; then an ingest that can reach RabbitMQ starts, and the time until the journal is
# empty is printed (start-up included).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-20000}
scripts/services.sh
cargo build --release --locked --bin ingest
run=$(mktemp -d)
queue="vmpipe.bench-journal.$$"
port=18183
cleanup() {
  [ -n "${ingest_pid:-}" ] && kill "$ingest_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
  rabbitmqctl delete_queue "$queue.dead" >/dev/null 2>&1 || true
  rm -rf "$run"
}
trap cleanup EXIT
start_ingest() { # AMQP URL
  VMPIPE_LISTEN=127.0.0.1:$port VMPIPE_STORAGE_DIR="$run" VMPIPE_QUEUE="$queue" \
    VMPIPE_AMQP_URL="$1" RUST_LOG=warn target/release/ingest &
  ingest_pid=$!
  for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.2; done
  kill -0 "$ingest_pid" 2>/dev/null || { echo "ingest did not start (port $port taken?)" >&2; exit 1; }
}
# Nothing listens on port 1: every job is journaled.
start_ingest "amqp://guest:guest@127.0.0.1:1/%2f"
curl -sf -X PUT --data-binary "not really audio" -H "content-type: audio/mpeg" \
  "http://127.0.0.1:$port/bench/journal/message.mp3" -o /dev/null
kill "$ingest_pid"; wait "$ingest_pid" 2>/dev/null || true
entry=$(find "$run" -name '*.json' | head -1)
dir=$(dirname "$entry")
for i in $(seq 2 "$jobs"); do cp "$entry" "$dir/$(printf '%08d' "$i")-$(basename "$entry")"; done
echo "journaled jobs: $(find "$dir" -name '*.json' | wc -l)"
started=$(date +%s%N)
start_ingest "${VMPIPE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
while [ -n "$(find "$dir" -name '*.json' -print -quit)" ]; do sleep 0.02; done
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "journal drained: $jobs jobs in $elapsed_ms ms ($(( jobs * 1000 / elapsed_ms )) jobs/s)"
