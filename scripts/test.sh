#!/usr/bin/env bash
# Runs the whole test suite, starting every real service the tests need first.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Services started by scripts/services.d/*.sh export the variables the tests read.
for svc in scripts/services.d/*.sh; do
  [ -e "$svc" ] || continue
  echo "== starting service: $svc" >&2
  # shellcheck disable=SC1090
  source "$svc"
done

cargo test --all-targets "$@"
