#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: sets itself up first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
