#!/usr/bin/env bash
# The main job on the built-in default, on a fresh machine: a smoke two-stage MiSLAS run on
# Fashion-MNIST-LT (Debian's dataset-fashion-mnist), results in runs/demo/metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m mislas.train --dataset fashion_mnist_lt --preset smoke --out runs/demo "$@"
