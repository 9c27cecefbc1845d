#!/bin/bash
# A/B of `python scripts/benchmark.py bundle` (ratios (a) and (b); (c), the safe workflow's runs, left out) between two
# checkouts, back to back, each run from its own checkout with PYTHONPATH set to it.
# Usage: bash scripts/ab_bundle.sh BASE_CHECKOUT NEW_CHECKOUT [ROUNDS]   (run it on an otherwise idle machine)
set -euo pipefail
base=$(cd "$1" && pwd); new=$(cd "$2" && pwd); rounds=${3:-2}
no_safe=$(mktemp --suffix=.json); echo '{"safe_training": null}' > "$no_safe"
for round in $(seq 1 "$rounds"); do
  for dir in "$base" "$new"; do
    cd "$dir"
    echo "=== round $round $dir $(git rev-parse --short HEAD) $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    PYTHONPATH=$dir python scripts/benchmark.py bundle --config_file "[\"bundles/fets/configs/train.json\",\"$no_safe\"]" 2>&1 \
      | grep -E "^(device|fine-tuning|\(a\)|\(b\)|source inference|risk stage|bundle:)"
  done
done
rm -f "$no_safe"
