#!/usr/bin/env bash
# Where a CPU training step goes: `perf record` over the train_speed bench (training steps only),
# the samples grouped by what the code does, as a Markdown table (the README's split).
#
# usage: benches/profile_cpu.sh [train_steps=15] [BIN]
#        BIN: a train_speed binary to profile (default: build the current tree's, release)
# env:   THREADS (default 2, as the comparisons)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-15}
BIN=${2:-}
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
if [[ -z "$BIN" ]]; then
  cargo build --release --bench train_speed >&2
  BIN=$(ls -t target/release/deps/train_speed-* | grep -v '\.d$' | head -1)
fi
data=$(mktemp)
trap 'rm -f "$data"' EXIT
RAYON_NUM_THREADS=${THREADS:-2} perf record -q -o "$data" "$BIN" "$STEPS" 1 2 --bench >/dev/null 2>&1
perf report -i "$data" --no-children --sort symbol --stdio 2>/dev/null |
  awk '/^ +[0-9.]+%/ {
    pct = $1; sub("%", "", pct); $1 = ""; $2 = ""; sym = $0
    if (sym ~ /gemm_f32::microkernel|gemm_basic/) k = "GEMM microkernels (conv, LSTM, dense)"
    else if (sym ~ /gemm_common|gemm_f32|pack/) k = "GEMM packing"
    else if (sym ~ /im2col|col2im|route|pool_max|conv::cpu|winograd/) k = "conv layout: im2col, col2im, pool, gradient routing, Winograd transforms"
    else if (sym ~ /conv2d|conv_transpose|max_pool|pool2d/) k = "Burn conv / pool kernels"
    else if (sym ~ /SpecFromIter|Rng|xoshiro|next_u64/) k = "dropout masks (host RNG)"
    else if (sym ~ /memset|memmove|memcpy|copy_2d|contiguous/) k = "memory fills and copies"
    else if (sym ~ /expm1|expf|tanhf|exp|tanh|sigmoid|unary|binary|scalar_op|zip_apply|macerator|run_vectorized/) k = "element-wise ops (activations, LSTM gates, Adam)"
    else if (sym ~ /\[k\]|_raw_spin|page_fault|clear_page|schedule/) k = "kernel (page faults, scheduling)"
    else if (sym ~ /malloc|free|alloc/) k = "allocator"
    else k = "other"
    share[k] += pct
  }
  END { for (k in share) printf "%.1f\t%s\n", share[k], k }' |
  sort -rn |
  awk -F'\t' 'BEGIN { print "| part of a training step | share of CPU samples |"; print "|---|---|" }
    { printf "| %s | %s %% |\n", $2, $1 }'
