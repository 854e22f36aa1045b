#!/usr/bin/env bash
# The prepared GPU check (docs/gpu-check.md): environment, CUDA correctness, speed, the full-size
# Fashion-MNIST-LT replication and a summary, in --budget-min minutes (default 8), results under
# $OUT (or --out DIR), each step's file written as it ends. Runs from any folder; needs only
# torch, torchvision, numpy and this checkout (no Ray, Optuna or pytest).
#   scripts/gpu-check.sh --stage-data             # once, here: Fashion-MNIST into gpu-data/ (ignored)
#   scripts/gpu-check.sh                          # on the lent machine (carry gpu-data)
#   scripts/gpu-check.sh --device cpu --tiny      # the dry mode: every step on tiny sizes
# Uses .venv/bin/python where there is one, else python3 (a lent machine's PyTorch); PYTHON=... overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m benchmarks.gpu_check "$@"
