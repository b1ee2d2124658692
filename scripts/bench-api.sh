#!/usr/bin/env bash
# API benchmark, loopback only: a release `api` over ROWS generated voicemails (default
# 1,000,000; 85% transcribed) in PostgreSQL, in one run:
# 1. list and full-text scenarios (newest, page 21, account-scoped token, account, mailbox,
#    caller, time window, folder, has_transcript, limit=200, q=common…rare words, a phrase):
#    p50/p90/p99/max and requests/s at concurrency 1 and 8;
# 2. audio time to first byte, whole file and Range (206), at concurrency 1 and 8;
# 3. the api's memory (VmRSS, VmHWM) after start and after the load;
# 4. PostgreSQL's plan of every list scenario (`api explain`): execution time, indexes used,
#    SEQ SCAN flagged; all plans in target/bench-api/plans.txt;
# 5. a summary against the targets: list and full-text p99 < 50 ms, audio first byte p99
#    < 20 ms (both at concurrency 1). Missed targets are printed, not failed; wrong answers fail.
#
#   scripts/bench-api.sh [ROWS]     (BENCH_REQUESTS=N per scenario and concurrency, default 500,
#                                   cut short after BENCH_MAX_SECONDS, default 30)
#
# The data lives in the database vmpipe_bench_api (and its audio files in
# target/bench-api/storage) and is kept for the next run: it is generated again only when the
# database does not hold exactly ROWS voicemails of the current generator version, or with
# BENCH_FRESH=1. Generating 1,000,000 rows takes minutes. To remove it:
#   dropdb -h 127.0.0.1 -U postgres vmpipe_bench_api && rm -rf target/bench-api
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked --bin api
cargo bench -p vmpipe-tests --bench api --locked -- "${1:-1000000}"
