#!/usr/bin/env bash
# The main job on the built-in default, on a fresh machine: a small real study of MiSLAS on
# Fashion-MNIST-LT (Debian's dataset-fashion-mnist) with Ray started in this process: one
# mixup Stage 1 shared by 48 MiSLAS Stage-2 settings proposed by Optuna (the Table 6 setting
# first) in one grouped trial (48 settings per backbone pass), the CE / cRT / LWS / τ-norm
# baselines, the component ablation (Stage-1 mixup x shift BN x LAS, plus uniform label
# smoothing; its plain Stage 1 is the second Stage 1), temperature scaling on every row, then
# the report made from the Parquet results.
# Results: runs/demo/*.parquet; report: runs/demo/report/report.html. Extra arguments go to
# study.run; rerunning resumes the same study (add --name other for a fresh one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m study.run --dataset fashion_mnist_lt --budget smoke \
  --trials 48 --group-size 48 --methods mislas,ce,crt,lws,tau_norm --baseline-mixup on \
  --ablation components --storage runs --name demo --progress \
  --set data.n_max=700 --set data.val_per_class=50 --set stage1.epochs=8 \
  --set stage1.milestones=6,7 "$@"
exec .venv/bin/python -m study.report runs/demo
