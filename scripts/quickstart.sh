#!/usr/bin/env bash
# The headline from a fresh clone in one command: a virtual environment (.venv, made once), transrisk in it, then
# safe transfer on the built-in FeTS phantom (bundles/fets/models/model.pt and eval/transfer_report.png).
#
#   bash scripts/quickstart.sh                                   # torch from the default index (CUDA build on Linux)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/quickstart.sh   # the CPU build
#   bash scripts/quickstart.sh --max_epochs 20                   # arguments go to `monai.bundle run training`
#
# The tests, likewise in one command: bash .ci/run
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install --quiet -e .
python -m monai.bundle run training --config_file bundles/fets/configs/train.json "$@"
