#!/usr/bin/env bash
# The test command: brings up PostgreSQL and RabbitMQ on localhost if needed, makes (or reuses)
# the tests' Python venv, Chromium and Garage, then runs every test of the workspace (unit tests and the end-to-end
# tests against the real services).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests connect to PostgreSQL as postgres without a password: a PostgreSQL this installs
# is set up so (it says so); one already there is left as it is.
scripts/services.sh --trust-localhost
# The Whisper transcriber's tests run the real engine: VMPIPE_TEST_PYTHON, a venv with
# hooks/requirements*.txt (made on the first run, about half a minute; reused after), and
# VMPIPE_TEST_WHISPER_MODEL, the tiny.en model that venv carries.
python_env=$(scripts/python-env.sh --test-env)
eval "$python_env"
echo "test.sh: VMPIPE_TEST_PYTHON=$VMPIPE_TEST_PYTHON" >&2
# The inbox page's test drives Debian's Chromium with playwright-core (both installed when
# missing): VMPIPE_TEST_CHROMIUM, VMPIPE_TEST_BROWSER_DIR.
eval "$(scripts/browser-env.sh)"
# The object-store tests run a real Garage (VMPIPE_TEST_GARAGE), built once when missing.
eval "$(scripts/garage.sh)"
# The fault-injection tests run the real binaries as child processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
