#!/usr/bin/env bash
# Preprocessing throughput of binance-ml vs a straightforward pandas/numpy implementation of the
# same features on the same data, measured in one run (A B A B). Needs python3 with numpy and
# pandas (PYTHON=..., default: the MLflow test venv, which has both, else python3).
# Usage: benches/compare_preprocess.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-100000}"
py="${PYTHON:-$PWD/.venv-mlflow/bin/python}"
[ -x "$py" ] || py=python3
data="$(mktemp -d)/book.npz"
cargo bench --bench preprocess_throughput -- "$steps" "$data" | grep RESULT
for round in 1 2; do
  echo "round $round"
  cargo bench --bench preprocess_throughput -- "$steps" | grep RESULT
  "$py" benches/preprocess_pandas.py "$data"
done
