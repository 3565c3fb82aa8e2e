#!/usr/bin/env bash
# Runs the whole test suite, starting every real service the tests need first.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Each scripts/services.d/*.sh installs (if missing) and starts one real service, exports the
# variables the tests read, and appends the commands that stop it to `cleanup`.
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c" || true; done' EXIT
for svc in scripts/services.d/*.sh; do
  [ -e "$svc" ] || continue
  echo "== starting service: $svc" >&2
  # shellcheck disable=SC1090
  source "$svc"
done

cargo test --all-targets "$@"
