#!/bin/bash
# A profile of the experiment grid one scenario at a time, on a small machine, so that each part ends with a report
# of its own: `python scripts/reproduce.py run --scenarios <one>` per scenario, in the profile's order, at the lowest
# CPU priority. A killed or stopped part resumes when the script is run again (finished cells are reused); parts
# already reported are checked again and cost nothing but their evaluation of what is new.
#
# Usage (from a checkout; PYTHONPATH is set to it):
#   bash scripts/run_in_parts.sh PROFILE WORK_DIR REPORTS_DIR [WORKERS]
#   e.g. bash scripts/run_in_parts.sh confirm2_40 /work/runs/confirm2_40/work /work/runs/confirm2_40 2
# Beside other work, start it as a session of its own (`setsid nohup bash scripts/run_in_parts.sh ... &`): it then
# lowers its session's CPU weight as well (below).
# SCENARIOS="a b" runs those scenarios, in that order, instead of the profile's. Each part's report goes to
# REPORTS_DIR/report_<scenario>; `python scripts/reproduce.py combine` joins them. $PYTHON (default python) runs it.
set -euo pipefail
profile=$1; work=$2; reports=$3; workers=${4:-2}
checkout=$(cd "$(dirname "$0")/.." && pwd)
cd "$checkout"
export PYTHONPATH=$checkout
python=${PYTHON:-python}
# Under the kernel's autogroups, nice orders processes only within one session; a session of its own (setsid) also
# lowers the session's weight, or the grid takes half the CPU from a CI run beside it (seen: a 15-minute source stage).
if [ "$(ps -o sid= -p $$ | tr -d ' ')" = "$$" ] && [ -w /proc/self/autogroup ]; then echo 19 > /proc/self/autogroup; fi
scenarios=${SCENARIOS:-$("$python" -c "from transrisk_components.experiments import PROFILES; print(' '.join(PROFILES['$profile'].scenarios))")}
echo "=== $profile from $(git rev-parse --short HEAD 2>/dev/null || echo "$checkout"): $scenarios"
for scenario in $scenarios; do
  echo "=== $scenario $(date -u)"
  nice -n 19 "$python" scripts/reproduce.py run --profile "$profile" --work_dir "$work" --workers "$workers" \
    --scenarios "$scenario" --report_dir "$reports/report_$scenario"
done
echo "=== done $(date -u)"
