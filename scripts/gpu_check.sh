#!/bin/bash
# The GPU figures of issue #34 in one call of a lent GPU machine (15 minutes of device time for everything, start
# included): `python3 scripts/benchmark.py gpu` at full size, its log and a summary written under $OUT as they come.
#
# 1. Here, once (the device image has torch but not monai, nibabel, pytorch-ignite, fire, termcolor; Python 3.12,
#    x86-64, no package index there):
#        bash scripts/gpu_check.sh --fetch-wheels        # into .whl/ (ignored by git), about 5 MB
# 2. The device call, from the repository root: command `bash scripts/gpu_check.sh`, carry [".whl"], timeout_s 590.
#    Every step has its own timeout inside that; what finished comes back in $OUT/gpu_check.log and
#    $OUT/summary.txt even where a later step ran out of time.
# 3. The same script on this machine's CPU at tiny size, to test it (a few minutes; tests/test_benchmark.py runs it):
#        GPU_CHECK_TINY=1 OUT=<folder> bash scripts/gpu_check.sh
#    ($PYTHON, default python3, is the interpreter: on the device the image's, which holds torch.)
#
# Then record the last line and its table in docs/benchmarks.md with the device and the date.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
versions=(monai==1.6.1 nibabel==5.4.2 pytorch-ignite==0.5.5 fire==0.7.1 termcolor==3.3.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .git/info && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude; }
  for package in "${versions[@]}"; do  # pure-Python wheels; fire has no wheel on the index, so it is built here
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl "$package" \
      || "$python" -m pip wheel -q --no-deps -w .whl "$package" || { echo "no wheel for $package" >&2; exit 1; }
  done
  ls -l .whl
  exit 0
fi

out=${OUT:?set OUT to the folder the results go to}
mkdir -p "$out"
log=$out/gpu_check.log
summary=$out/summary.txt
say() { echo "$*" | tee -a "$summary"; }

if [ -d .whl ]; then
  timeout 120 "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "gpu_check: the carried wheels did not install"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

say "gpu_check: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$summary" 2>/dev/null \
  || say "nvidia-smi: not available (CPU run)"
timeout 60 "$python" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)" \
  2>&1 | tee -a "$summary" || { say "gpu_check: torch or monai does not import"; exit 1; }

work=$(mktemp -d -t transrisk_gpu_check.XXXXXX)  # fresh: nothing of an earlier run is reused
if [ -n "${GPU_CHECK_TINY:-}" ]; then  # a 32^3 phantom, the tests' tiny network, 2 cases: the script's path, not its figures
  timeout 300 "$python" scripts/make_phantom.py fets --out "$work/phantom" --subjects 4 --shape 32,32,32 >> "$log" 2>&1 \
    || { say "gpu_check: the tiny phantom was not made"; exit 1; }
  arguments=(--phantom "$work/phantom/MICCAI_FeTS2021_TrainingData" --cases 2 --repeats 1 --steps 1 --run_epochs 1
             --overrides '{"network_def#init_filters": 4, "network_def#blocks_down": [1, 2], "network_def#blocks_up": [1], "patch_size": [16, 16, 16], "num_samples": 1, "num_workers": 1}')
  limit=900
else
  arguments=(--cases 4 --repeats 9 --steps 4 --run_epochs 2)
  limit=480
fi
timeout "$limit" "$python" scripts/benchmark.py gpu --work_dir "$work/run" "${arguments[@]}" >> "$log" 2>&1
status=$?
grep -E "^(device|num_workers|  fine-tuning step|  \(a\)|      throughput|\(b\)|gpu:)" "$log" >> "$summary"
if [ $status -ne 0 ]; then
  say "gpu_check: benchmark.py gpu stopped with exit status $status (124: its ${limit} s timeout); the log's end:"
  tail -n 20 "$log" >> "$summary"
  exit $status
fi
tail -n 1 "$log"
