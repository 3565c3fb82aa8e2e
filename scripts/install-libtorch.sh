#!/usr/bin/env bash
# Install libtorch for the `tch` feature from PyPI's torch wheel (which carries libtorch and,
# on Linux x86_64, the CUDA libraries: several GB) into a venv, then print what to export.
#
# usage: scripts/install-libtorch.sh [venv_dir=~/.cache/binance-ml/libtorch-venv] [torch_version=2.9.0]
# burn-tch 0.22 builds tch 0.22, which expects libtorch 2.9. Another version (e.g. a GPU
# machine's preinstalled 2.11) works with LIBTORCH_BYPASS_VERSION_CHECK=1.
set -euo pipefail
VENV=${1:-$HOME/.cache/binance-ml/libtorch-venv}
VERSION=${2:-2.9.0}

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install "torch==$VERSION"
fi
LIB=$("$VENV/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)

cat <<EOS
# libtorch $VERSION is in $LIB. To build and run with the tch backend:
export VIRTUAL_ENV=$VENV
export PATH=$VENV/bin:\$PATH
export LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH=$LIB\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
# then: cargo build --release --features tch
#       binance-ml train --backend tch --device cpu    (or --device cuda:0)
EOS
