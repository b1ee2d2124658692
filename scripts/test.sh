#!/usr/bin/env bash
# The test command: brings up PostgreSQL and RabbitMQ on localhost if needed, then runs every
# test of the workspace (unit tests and the end-to-end tests against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests connect to PostgreSQL as postgres without a password: a PostgreSQL this installs
# is set up so (it says so); one already there is left as it is.
scripts/services.sh --trust-localhost
# The PocketSphinx transcriber's test needs the engine (a wheel with its English model).
python3 -c 'import pocketsphinx' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check -r hooks/requirements.txt
# The fault-injection tests run the real binaries as child processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
