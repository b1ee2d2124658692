#!/usr/bin/env bash
# The test command: brings up PostgreSQL and RabbitMQ on localhost if needed, then runs every
# test of the workspace (unit tests and the end-to-end tests against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The fault-injection tests run the real binaries as child processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
