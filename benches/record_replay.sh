#!/usr/bin/env bash
# The recorder's figure (issue 10): 20 symbols x 20 levels at a 1 s cadence, 10 minutes of
# market time (real spot diff-depth captures replicated under 20 names) replayed at 10x real
# time by a local Binance, recorded by `binance-ml record --mode websocket` (release build,
# pinned to core 0 with taskset when available) to CSV files, and to PostgreSQL when
# BINANCE_ML_TEST_DATABASE_URI is set (eval "$(bash scripts/postgres.sh)"). Prints wall time,
# CPU time (user+sys, /usr/bin/time -v), peak RSS, missing ticks and whether it kept up.
#
# Usage: bash benches/record_replay.sh [SYMBOLS] [MINUTES] [SPEED] [DEPTH]
set -euo pipefail
cd "$(dirname "$0")/.."

export RECORD_REPLAY_SYMBOLS=${1:-20}
export RECORD_REPLAY_MINUTES=${2:-10}
export RECORD_REPLAY_SPEED=${3:-10}
export RECORD_REPLAY_DEPTH=${4:-20}
export RECORD_REPLAY_BIN=$PWD/target/release/binance-ml
if command -v taskset >/dev/null 2>&1; then
    export RECORD_REPLAY_CPU=0
else
    export RECORD_REPLAY_CPU=
    echo "taskset not found: the recorder is not pinned to one core" >&2
fi
[ -x /usr/bin/time ] || { echo "record_replay.sh needs /usr/bin/time (GNU time)" >&2; exit 1; }

cargo build --release --bin binance-ml >&2
cargo bench --bench record_replay --no-run >&2

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
outputs=(csv)
if [ -n "${BINANCE_ML_TEST_DATABASE_URI:-}" ]; then
    outputs+=(database)
else
    echo "BINANCE_ML_TEST_DATABASE_URI not set: CSV only (eval \"\$(bash scripts/postgres.sh)\" for PostgreSQL)" >&2
fi
for output in "${outputs[@]}"; do
    RECORD_REPLAY_OUTPUT=$output RECORD_REPLAY_OUT=$PWD/target/record_replay/$output \
        cargo bench --bench record_replay -- --bench
done
