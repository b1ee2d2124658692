#!/usr/bin/env bash
# Object-store benchmark, loopback only, in one run:
# 1. uploads through a release ingest into a Garage bucket against the same bodies PUT straight
#    to Garage (16 KiB, 128 KiB, 1 MiB at 16 connections), and ingest's memory during one
#    100 MiB upload;
# 2. 201 → indexed row (median, p99) at full and at half rate, on a bucket and on the file
#    system, one after the other.
#   scripts/bench-s3.sh [SECONDS_PER_RUN] [UPLOADS]     (defaults 3 and 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
eval "$(scripts/garage.sh)"
cargo build --release --locked --bin ingest
cargo bench -p vmpipe-tests --bench s3 --locked -- "${1:-3}"
for storage in s3 fs; do
  cargo bench -p vmpipe-tests --bench pipeline --locked -- "${2:-1000}" "$storage"
done
