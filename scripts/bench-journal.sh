#!/usr/bin/env bash
# Journal drain benchmark, loopback only: how fast a release ingest publishes the jobs it
# journaled while RabbitMQ was away, once RabbitMQ is back.
#   scripts/bench-journal.sh [JOBS]     (default 20000)
# JOBS jobs are left in the journal directory (as one file each, an earlier version's format:
# ingest takes them in at start); then an ingest that can reach RabbitMQ starts, and the time
# until its journal holds no unconfirmed job is printed (start-up included).
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
# JOBS journaled jobs, as an earlier version left them (one file each): ingest takes them into
# its journal at start and streams them to RabbitMQ as it does any backlog.
dir="$run/journal"
mkdir -p "$dir"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in $(seq 1 "$jobs"); do
  id=$(printf '0190%028x' "$i")
  printf '{"schema_version":1,"job_id":"%s","storage_key":"bench/journal/%d.mp3","account_id":null,"document_id":null,"attachment_name":"%d.mp3","content_type":"audio/mpeg","size_bytes":16,"sha256":null,"received_at":"%s","upload_mode":"raw","kazoo_document":null,"request_id":"bench-%d"}' \
    "$id" "$i" "$i" "$now" "$i" > "$dir/$id.json"
done
echo "journaled jobs: $(find "$dir" -name '*.json' | wc -l)"
started=$(date +%s%N)
start_ingest "${VMPIPE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
until curl -sf "http://127.0.0.1:$port/readyz" | grep -q '"journaled_jobs":0[,}]'; do sleep 0.02; done
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
echo "journal drained: $jobs jobs in $elapsed_ms ms ($(( jobs * 1000 / elapsed_ms )) jobs/s)"
