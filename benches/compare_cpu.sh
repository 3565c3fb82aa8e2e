#!/usr/bin/env bash
# CPU training speed: PyTorch reference (../shared/bench/torch_bench.py) against binance-ml's
# flex backend on the same cores, interleaved A B A B, and the ratio of medians.
#
# usage: benches/compare_cpu.sh [rounds=3] [train_steps=20] [infer_steps=20] [warmup=3]
# env:   TORCH_VENV (default ~/.cache/binance-ml/torch-venv; created with `pip install torch
#        numpy` from PyPI when missing: a large download), BENCH_DIR (torch_bench.py's folder),
#        THREADS (default 2: the reference pins torch to 2 threads; ours gets the same).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
STEPS=${2:-20}
ISTEPS=${3:-20}
WARM=${4:-3}
THREADS=${THREADS:-2}
TORCH_VENV=${TORCH_VENV:-$HOME/.cache/binance-ml/torch-venv}
BENCH_DIR=${BENCH_DIR:-}
if [[ -z "$BENCH_DIR" ]]; then
  for d in ../shared/bench ../../shared/bench /work/shared/bench; do
    [[ -f "$d/torch_bench.py" ]] && BENCH_DIR=$d && break
  done
fi
[[ -f "$BENCH_DIR/torch_bench.py" ]] || { echo "torch_bench.py not found; set BENCH_DIR" >&2; exit 2; }

if ! "$TORCH_VENV/bin/python" -c 'import torch, numpy' 2>/dev/null; then
  echo "installing torch + numpy into $TORCH_VENV (PyPI; several GB) ..." >&2
  python3 -m venv "$TORCH_VENV"
  "$TORCH_VENV/bin/pip" install -q torch numpy
fi

echo "building the benchmark (release) ..." >&2
cargo build --release --bench train_speed >&2
BIN=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)

# flex uses rayon: give it the same number of threads as torch.set_num_threads(2).
export RAYON_NUM_THREADS=$THREADS

torch_sps=(); ours_sps=(); torch_inf=(); ours_inf=()
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
for r in $(seq 1 "$ROUNDS"); do
  a=$("$TORCH_VENV/bin/python" "$BENCH_DIR/torch_bench.py" "$STEPS" "$ISTEPS" "$WARM" | grep '^RESULT')
  echo "round $r A: $a"
  b=$("$BIN" "$STEPS" "$ISTEPS" "$WARM" --bench | grep '^RESULT')
  echo "round $r B: $b"
  torch_sps+=("$(echo "$a" | field train_sps)"); torch_inf+=("$(echo "$a" | field infer_sps)")
  ours_sps+=("$(echo "$b" | field train_sps)"); ours_inf+=("$(echo "$b" | field infer_sps)")
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ts=$(median "${torch_sps[@]}"); os=$(median "${ours_sps[@]}")
ti=$(median "${torch_inf[@]}"); oi=$(median "${ours_inf[@]}")
echo
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
echo "| implementation | train samples/s | inference samples/s |"
echo "|---|---|---|"
echo "| $("$TORCH_VENV/bin/python" -c 'import torch;print("PyTorch "+torch.__version__)') CPU | $ts | $ti |"
echo "| binance-ml (Burn 0.22.1 flex) | $os | $oi |"
awk -v o="$os" -v t="$ts" -v oi="$oi" -v ti="$ti" \
  'BEGIN { printf "ratio ours/pytorch: train %.2fx, inference %.2fx (medians of '"$ROUNDS"' interleaved rounds)\n", o/t, oi/ti }'
