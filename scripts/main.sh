#!/usr/bin/env bash
# The main job on the built-in default, on a fresh machine: a smoke study of MiSLAS on
# Fashion-MNIST-LT (Debian's dataset-fashion-mnist) with Ray started in this process, the
# baselines beside it, and the ablation report made from its Parquet results.
# Results: runs/demo/*.parquet; report: runs/demo/report/report.html. Extra arguments go to
# study.run (e.g. --trials 16); rerunning resumes the same study.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m study.run --dataset fashion_mnist_lt --budget smoke --trials 6 \
  --methods mislas,ce,crt,lws,tau_norm --baseline-mixup on --storage runs --name demo \
  --set data.n_max=1000 --set data.val_per_class=100 --set stage1.epochs=12 \
  --set stage1.milestones=8,10 "$@"
exec .venv/bin/python -m study.report runs/demo
