#!/usr/bin/env bash
# GPU training and inference speed: binance-ml (tch backend, one CUDA GPU) against PyTorch eager
# (../shared/bench/torch_gpu_bench.py) in the same call, at batch 32 and 256, as ratios.
#
# Two halves, because the GPU machine has a preinstalled PyTorch but no network, and at most
# 64 MiB can be carried to it (ARCHITECTURE.md §3):
#
#   benches/gpu.sh build   here: installs torch==$TORCH_VERSION from PyPI into a venv (several
#                          GB, once), builds the train_speed bench with `--features tch` against
#                          it, and leaves target/gpu-bench/ = {train_speed (stripped),
#                          torch_gpu_bench.py, gpu.sh}
#   benches/gpu.sh run [rounds=3] [train_steps=50] [infer_steps=50] [warmup=5]
#                          on the GPU machine, with target/gpu-bench carried: points
#                          LD_LIBRARY_PATH at that machine's own torch/lib, then alternates
#                          PyTorch and ours (A B A B) at each batch size and prints the medians
#                          and ratios, after a check that the GPU trains the same weights as the
#                          CPU kernels (exit 1 if not). Needs only the carried folder and
#                          `python3 -c 'import torch'`.
#
# env: TORCH_VERSION (build; default 2.11.*, the GPU machine's), TORCH_VENV (build; default
#      ~/.cache/binance-ml/torch-gpu-venv), BENCH_DIR (folder of torch_gpu_bench.py), DEVICE
#      (run; default cuda:0), BATCHES (run; default "32 256").
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
mode=${1:-}
shift || true

build() {
  cd "$HERE/.."
  local version=${TORCH_VERSION:-2.11.*}
  local venv=${TORCH_VENV:-$HOME/.cache/binance-ml/torch-gpu-venv}
  if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "installing torch==$version into $venv (PyPI; several GB) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -U pip  # the venv's own pip can fail on newer metadata
    "$venv/bin/pip" install -q "torch==$version"
  fi
  local bench_dir=${BENCH_DIR:-}
  if [[ -z "$bench_dir" ]]; then
    for d in ../shared/bench ../../shared/bench /work/shared/bench; do
      [[ -f "$d/torch_gpu_bench.py" ]] && bench_dir=$d && break
    done
  fi
  [[ -f "$bench_dir/torch_gpu_bench.py" ]] || { echo "torch_gpu_bench.py not found; set BENCH_DIR" >&2; exit 2; }
  echo "building the benchmark with the tch backend against $("$venv/bin/python" -c 'import torch;print(torch.__version__)') ..." >&2
  VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1 \
    cargo build --release --features tch --bench train_speed >&2
  local bin
  bin=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)
  mkdir -p target/gpu-bench
  cp "$bin" target/gpu-bench/train_speed
  strip target/gpu-bench/train_speed
  cp "$bench_dir/torch_gpu_bench.py" "$HERE/gpu.sh" target/gpu-bench/
  ls -la target/gpu-bench >&2
  echo "carry target/gpu-bench, then run: bash target/gpu-bench/gpu.sh run" >&2
}

run() {
  local rounds=${1:-3} steps=${2:-50} isteps=${3:-50} warm=${4:-5}
  local bin=$HERE/train_speed
  [[ -x "$bin" ]] || bin=$HERE/../target/gpu-bench/train_speed
  [[ -x "$bin" ]] || { echo "no train_speed binary: run 'benches/gpu.sh build' first" >&2; exit 2; }
  local script=${BENCH_DIR:+$BENCH_DIR/torch_gpu_bench.py}
  [[ -n "$script" ]] || script=$HERE/torch_gpu_bench.py
  [[ -f "$script" ]] || script=$HERE/../../shared/bench/torch_gpu_bench.py
  [[ -f "$script" ]] || { echo "torch_gpu_bench.py not found; set BENCH_DIR" >&2; exit 2; }
  local py=${PYTHON:-python3}
  local torch_lib
  torch_lib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  local device=${DEVICE:-cuda:0}
  echo "machine: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), torch $("$py" -c 'import torch;print(torch.__version__)'); $(date -u +%Y-%m-%dT%H:%MZ)"
  field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p"; }
  median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  # First, that the device computes what the CPU kernels do: the same weights trained on the
  # same batches (no dropout) on flex and on the GPU, losses and probabilities compared.
  local checked=0
  "$bin" --batch 32 --backend tch --device "$device" --bench --check || checked=1
  echo "| batch | PyTorch train/s | ours train/s | ratio | PyTorch infer/s | ours infer/s | ratio |"
  echo "|---|---|---|---|---|---|---|"
  for b in ${BATCHES:-32 256}; do
    local ts=() os=() ti=() oi=()
    for r in $(seq 1 "$rounds"); do
      a=$("$py" "$script" "$steps" "$isteps" "$warm" "$b" | grep '^RESULT')
      echo "batch $b round $r A: $a" >&2
      o=$("$bin" "$steps" "$isteps" "$warm" --batch "$b" --backend tch --device "$device" --bench | grep '^RESULT')
      echo "batch $b round $r B: $o" >&2
      ts+=("$(echo "$a" | field train_sps)"); ti+=("$(echo "$a" | field infer_sps)")
      os+=("$(echo "$o" | field train_sps)"); oi+=("$(echo "$o" | field infer_sps)")
    done
    awk -v b="$b" -v ts="$(median "${ts[@]}")" -v os="$(median "${os[@]}")" \
        -v ti="$(median "${ti[@]}")" -v oi="$(median "${oi[@]}")" \
      'BEGIN { printf "| %s | %.0f | %.0f | %.2fx | %.0f | %.0f | %.2fx |\n", b, ts, os, os/ts, ti, oi, oi/ti }'
  done
  # A profile of our step at batch 32, for the README's per-op split.
  "$bin" 5 5 2 --batch 32 --backend tch --device "$device" --bench --profile | grep '^PROFILE' || true
  if [[ $checked != 0 ]]; then
    echo "CHECK FAILED: the GPU path trains another model than the CPU kernels; the ratios above time it anyway" >&2
    exit 1
  fi
}

case "$mode" in
  build) build "$@" ;;
  run) run "$@" ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
