#!/usr/bin/env bash
# Events benchmark, loopback only, release build, in one run:
# 1. 201 -> `voicemail.indexed` at a signed-webhook receiver: median, p99, max, at the peak
#    upload rate (4 clients as fast as they go) and paced at half of it (target: p99 < 1 s);
# 2. the dispatcher's rate to an `amqp` sink: EVENTS events (default 50,000) written into the
#    outbox, fanned out, published persistent with confirms to a durable queue bound to the
#    exchange, and recorded (target: >= 2,000 events/s).
#
#   scripts/bench-events.sh [UPLOADS] [EVENTS]      (defaults 2000 and 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo bench -p vmpipe-tests --bench events --locked -- "${1:-2000}" "events=${2:-50000}"
