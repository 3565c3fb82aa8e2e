#!/usr/bin/env bash
# CPU training speed: the PyTorch and Keras references (../shared/bench/torch_bench.py,
# keras_bench.py) against binance-ml's flex backend on the same cores, interleaved A B C A B C,
# and the ratios of medians.
#
# usage: benches/compare_cpu.sh [rounds=3] [train_steps=20] [infer_steps=20] [warmup=3]
# env:   TORCH_VENV / KERAS_VENV (default ~/.cache/binance-ml/{torch,keras}-venv; created with
#        `pip install torch numpy` / `pip install tensorflow numpy` from PyPI when missing: large
#        downloads), NO_KERAS=1 (leave Keras out), BENCH_DIR (the scripts' folder),
#        THREADS (default 2: the references pin themselves to 2 threads; ours gets the same).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
STEPS=${2:-20}
ISTEPS=${3:-20}
WARM=${4:-3}
THREADS=${THREADS:-2}
TORCH_VENV=${TORCH_VENV:-$HOME/.cache/binance-ml/torch-venv}
KERAS_VENV=${KERAS_VENV:-$HOME/.cache/binance-ml/keras-venv}
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
  # The venv's own pip (23.2 with Python 3.11) failed on torch 2.15's dependencies (a TypeError
  # in its version parser) on 2026-12-07.
  "$TORCH_VENV/bin/pip" install -q -U pip
  "$TORCH_VENV/bin/pip" install -q torch numpy
fi

if [[ -z "${NO_KERAS:-}" ]] && ! "$KERAS_VENV/bin/python" -c 'import tensorflow, numpy' 2>/dev/null; then
  echo "installing tensorflow + numpy into $KERAS_VENV (PyPI; a large download) ..." >&2
  python3 -m venv "$KERAS_VENV"
  "$KERAS_VENV/bin/pip" install -q -U pip  # as above
  "$KERAS_VENV/bin/pip" install -q tensorflow numpy
fi

echo "building the benchmark (release) ..." >&2
cargo build --release --bench train_speed >&2
BIN=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)

# flex uses rayon: give it the same number of threads as torch.set_num_threads(2).
export RAYON_NUM_THREADS=$THREADS

torch_sps=(); ours_sps=(); torch_inf=(); ours_inf=(); keras_sps=(); keras_inf=(); keras_pred=()
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
for r in $(seq 1 "$ROUNDS"); do
  a=$("$TORCH_VENV/bin/python" "$BENCH_DIR/torch_bench.py" "$STEPS" "$ISTEPS" "$WARM" | grep '^RESULT')
  echo "round $r A: $a"
  b=$("$BIN" "$STEPS" "$ISTEPS" "$WARM" --bench | grep '^RESULT')
  echo "round $r B: $b"
  if [[ -z "${NO_KERAS:-}" ]]; then
    c=$("$KERAS_VENV/bin/python" "$BENCH_DIR/keras_bench.py" "$STEPS" "$ISTEPS" "$WARM" 2>/dev/null | grep '^RESULT')
    echo "round $r C: $c"
    keras_sps+=("$(echo "$c" | field train_sps)"); keras_inf+=("$(echo "$c" | field infer_sps)"); keras_pred+=("$(echo "$c" | field predict_sps)")
  fi
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
if [[ -z "${NO_KERAS:-}" ]]; then
  ks=$(median "${keras_sps[@]}"); ki=$(median "${keras_inf[@]}"); kp=$(median "${keras_pred[@]}")
  echo "| $("$KERAS_VENV/bin/python" -c 'import tensorflow as tf;print("Keras / TensorFlow "+tf.__version__)' 2>/dev/null) (train_on_batch; inference: model call, predict) | $ks | $ki (predict: $kp) |"
fi
echo "| binance-ml (Burn 0.22.1 flex) | $os | $oi |"
awk -v o="$os" -v t="$ts" -v oi="$oi" -v ti="$ti" \
  'BEGIN { printf "ratio ours/pytorch: train %.2fx, inference %.2fx (medians of '"$ROUNDS"' interleaved rounds)\n", o/t, oi/ti }'
if [[ -z "${NO_KERAS:-}" ]]; then
  awk -v o="$os" -v k="$ks" -v oi="$oi" -v ki="$ki" \
    -v kp="$kp" 'BEGIN { printf "ratio ours/keras: train %.2fx, inference %.2fx (vs predict %.2fx)\n", o/k, oi/ki, oi/kp }'
fi
