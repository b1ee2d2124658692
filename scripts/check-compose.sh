#!/usr/bin/env bash
# Checks docker-compose.yml (run by CI, .ci/run):
# - it is valid (`docker-compose config`), with an access token given;
# - every setting of the code (`cargo run --example setting-names`, from the settings struct)
#   reaches the ingest, worker and api containers, except the few only ingest gets;
# - without VMPIPE_ACCESS_TOKEN it refuses to start: no unauthenticated ingest on the network.
# - the `s3` profile (Garage and its setup) is valid, and the files it mounts exist.
#   scripts/check-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Settings only ingest gets (secrets and certificates the worker does not read).
ingest_only="VMPIPE_ACCESS_TOKEN VMPIPE_BASIC_AUTH VMPIPE_TLS_CERT VMPIPE_TLS_KEY"

fail() {
  echo "check-compose: $*" >&2
  exit 1
}

names=$(cargo run -q --locked -p vmpipe-common --example setting-names)
[ -n "$names" ] || fail "no setting names from the code"

# A .env of this checkout must not decide the outcome: an empty one instead.
empty_env=$(mktemp)
trap 'rm -f "$empty_env"' EXIT

if env -u VMPIPE_ACCESS_TOKEN docker-compose --env-file "$empty_env" config -q 2>/dev/null; then
  fail "docker-compose.yml starts without VMPIPE_ACCESS_TOKEN (an unauthenticated ingest)"
fi

resolved=$(VMPIPE_ACCESS_TOKEN=check docker-compose --env-file "$empty_env" config)
missing=$(printf '%s\n' "$resolved" | python3 -c '
import sys, yaml
names, ingest_only = sys.argv[1].split(), set(sys.argv[2].split())
services = yaml.safe_load(sys.stdin)["services"]
for service in ("ingest", "worker", "api"):
    environment = services[service].get("environment") or {}
    for name in names:
        if name not in environment and not (service != "ingest" and name in ingest_only):
            print(f"{service}: {name}")
' "$names" "$ingest_only")
[ -z "$missing" ] || fail "docker-compose.yml does not pass these settings:
$missing"
echo "check-compose: docker-compose.yml passes all $(wc -w <<<"$names") settings"

# The `s3` profile (Garage and its one-time setup) is valid too, and what it mounts exists.
VMPIPE_ACCESS_TOKEN=check docker-compose --env-file "$empty_env" --profile s3 config -q \
  || fail "the s3 profile is not valid"
for mounted in config/garage.toml scripts/garage-setup.py; do
  [ -f "$mounted" ] || fail "the s3 profile mounts $mounted, which is missing"
done
python3 -m py_compile scripts/garage-setup.py || fail "scripts/garage-setup.py does not compile"
echo "check-compose: the s3 profile is valid"
