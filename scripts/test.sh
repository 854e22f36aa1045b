#!/usr/bin/env bash
# Runs lint (ruff), types (mypy) and the whole test suite on a fresh machine: sets itself up first (scripts/setup.sh), and
# installs Debian's chromium for the report's rendering test (skipped, with the reason, where
# it cannot be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "[test] installing Debian package chromium (report rendering test)"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "[test] chromium could not be installed; the report rendering test will be skipped"
fi
echo "[test] ruff check (lint, complexity C90, docstrings D; pyproject.toml)"
.venv/bin/ruff check .
echo "[test] mypy (mislas and study strict; pyproject.toml)"
.venv/bin/python -m mypy mislas study
exec .venv/bin/python -m pytest -q "$@"
