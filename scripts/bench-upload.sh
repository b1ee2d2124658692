#!/usr/bin/env bash
# Upload benchmark, loopback only: a release ingest (with its durability: fsync before 201,
# jobs in its journal before 201) against nginx's WebDAV PUT (no fsync), alternately, in one run.
#   scripts/bench-upload.sh [SECONDS_PER_RUN]     (default 3; 3 alternating rounds per case:
#   BENCH_ROUNDS; one case: BENCH_ONLY=raw:128:16)
# nginx is optional (Debian's nginx or nginx-light); without it only ingest is measured.
#
# BENCH_FS=ext4 measures on a fresh journaled ext4, as production disks are: a sparse image
# (BENCH_FS_SIZE, default 8G) made in target/bench-upload/, loop-mounted (root needed) for the
# run, with both servers' files and TMPDIR in it, unmounted and deleted afterwards. By default
# the files go to a temporary directory of whatever file system that is.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin ingest
run=$(mktemp -d)
queue="vmpipe.bench.$$"
image=""
cleanup() {
  [ -n "${ingest_pid:-}" ] && kill "$ingest_pid" 2>/dev/null || true
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rabbitmqctl delete_queue "$queue" >/dev/null 2>&1 || true
  rabbitmqctl delete_queue "$queue.dead" >/dev/null 2>&1 || true
  if [ -n "$image" ]; then
    umount "$run" 2>/dev/null || true
    rm -f "$image"
  fi
  rm -rf "$run"
}
trap cleanup EXIT
case "${BENCH_FS:-}" in
  "") ;;
  ext4)
    mkdir -p target/bench-upload
    image="$PWD/target/bench-upload/fs.$$.img"
    truncate -s "${BENCH_FS_SIZE:-8G}" "$image"
    mkfs.ext4 -q -F "$image"
    mount -o loop "$image" "$run"
    mkdir -p "$run/tmp"
    export TMPDIR="$run/tmp"
    echo "files on a fresh journaled ext4: $(findmnt -no SOURCE,FSTYPE,OPTIONS "$run")"
    ;;
  *) echo "BENCH_FS is ext4 or unset, not ${BENCH_FS}" >&2; exit 2 ;;
esac
VMPIPE_LISTEN=127.0.0.1:18181 VMPIPE_STORAGE_DIR="$run/ingest" VMPIPE_QUEUE="$queue" \
  VMPIPE_MAX_UPLOADS=1024 RUST_LOG=warn target/release/ingest &
ingest_pid=$!
export BENCH_INGEST_PORT=18181 BENCH_INGEST_PID=$ingest_pid
nginx_bin=$(command -v nginx || ls /usr/sbin/nginx 2>/dev/null || true)
if [ -n "$nginx_bin" ]; then
  mkdir -p "$run/nginx/data/dav"
  "$nginx_bin" -p "$run/nginx" -c "$PWD/bench/nginx.conf" -e "$run/nginx/error.log" &
  nginx_pid=$!
  export BENCH_NGINX_PORT=18182 BENCH_NGINX_PID=$nginx_pid
fi
for _ in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:18181/healthz && break; sleep 0.2; done
# Measure our ingest, not something else left listening on the port.
kill -0 "$ingest_pid" 2>/dev/null || { echo "ingest did not start (port 18181 taken?)" >&2; exit 1; }
cargo bench -p vmpipe-tests --bench upload --locked -- "${1:-3}"
