#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Fashion-MNIST from Debian, a .venv with the
# pinned torch build (from this machine's disk), and this package with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian package dataset-fashion-mnist"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "[setup] could not install dataset-fashion-mnist; pass --data-root to your own copy"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.mislas-setup-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing ${TORCH_PINS[*]} and the mislas package (a few minutes the first time)"
  "$VENV/bin/pip" install -q "${TORCH_PINS[@]}"
  # The constraint keeps every later resolution on the torch build installed above.
  printf '%s\n' "${TORCH_PINS[@]}" > "$VENV/torch-constraints.txt"
  "$VENV/bin/pip" install -q -c "$VENV/torch-constraints.txt" -e ".[test]"
  rm -f "$VENV"/.mislas-setup-*
  touch "$stamp"
fi
