#!/usr/bin/env bash
# Peak memory of a release ingest and worker under concurrent uploads whose KAZOO document is
# a large JSON array (see tests/benches/hostile.rs).
#   scripts/bench-hostile.sh [UPLOADS_AT_ONCE]     (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin ingest --bin worker
TEST_LOG=error cargo bench -p vmpipe-tests --bench hostile --locked -- "${1:-64}"
