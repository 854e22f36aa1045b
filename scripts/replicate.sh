#!/usr/bin/env bash
# The replication of the paper's claims on Fashion-MNIST-LT at the reference's CIFAR recipe
# (docs/replication.md): β = 100, n_max = 300 (740 training images), ResNet-32, Stage 1 of 200
# epochs (multistep with warm-up, lr 0.1, batch 128, wd 2e-4; mixup α = 1 and a plain one),
# Stage 2 of 10 epochs at CIFAR-10-LT β=100's Table 6 row; CE / cRT / LWS / τ-norm each with and
# without mixup, MiSLAS at Table 6 and 48 settings searched on validation, the best one rerun on
# every seed (--confirm-best), the component ablation, temperature scaling on every row; seeds
# 0, 1, 2. About 47 min on a 2-core CPU (measured 2026-12-06, docs/replication.md). Not a test.
# Results: runs/replication/*.parquet; report: runs/replication/report/. Extra arguments go to
# study.run (e.g. --storage DIR); a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
storage=runs
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --storage ] && { j=$((i + 1)); storage=${!j}; }; done
.venv/bin/python -m study.run --dataset fashion_mnist_lt --budget paper --seeds 0,1,2 \
  --trials 48 --group-size 16 --confirm-best --methods mislas,ce,crt,lws,tau_norm --baseline-mixup both \
  --ablation components --storage runs --name replication --progress --set data.n_max=300 "$@"
exec .venv/bin/python -m study.report "$storage/replication"
