#!/usr/bin/env bash
# The Garage server the object-store tests run (a real S3-compatible store, AGPL-3.0, run as an
# external server only). Prints `export VMPIPE_TEST_GARAGE=…` for `eval` (what scripts/test.sh
# does), installing it first when it is missing:
#
#   scripts/garage.sh        the garage binary of this version, built once into ~/.cargo/bin
#                            (about 20 minutes on 2 cores; later runs reuse it)
#
# A garage of another version already on the PATH is not used: the tests pin the version they
# were checked with. Concurrent runs wait for each other's install (flock).
set -euo pipefail
cd "$(dirname "$0")/.."

version=2.5.0
log() { echo "garage: $*" >&2; }
bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin
garage=$bin_dir/garage

installed() {
  [ -x "$garage" ] && "$garage" --version 2>/dev/null | grep -q "cargo:$version"
}

if ! installed; then
  mkdir -p "$bin_dir"
  exec 9>"$bin_dir/.garage-install.lock"
  flock 9
  if ! installed; then
    log "installing garage $version into $bin_dir (once; about 20 minutes on 2 cores)"
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cargo install garage --locked --version "$version" --target-dir "$build" --root "${CARGO_HOME:-$HOME/.cargo}" >&2
  fi
fi
"$garage" --version >&2
echo "export VMPIPE_TEST_GARAGE=$garage"
