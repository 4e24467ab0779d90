#!/usr/bin/env bash
# Fresh machine -> a trained demo model: set up, compile specs/demo.yaml, train the built-in
# tiny model on word tasks (a few minutes on 2 CPU cores), and report held-out exact match
# before and after training.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf runs/demo  # the demo's own run dir: each demo run starts fresh
.venv/bin/tunegen new --spec specs/demo.yaml --force
.venv/bin/tunegen run generated/demo.py "$@"
