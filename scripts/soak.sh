#!/usr/bin/env bash
# Soak test: uploads voicemails through the release binaries while cutting the broker and
# killing the worker at random, then checks storage, queue and index agree.
#   scripts/soak.sh [UPLOADS] [SECONDS] [RATE]   (default 3000 uploads at 60/s, 600 s budget;
#   loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin ingest --bin worker
cargo bench -p vmpipe-tests --bench soak --locked -- "$@"
