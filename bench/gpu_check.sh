#!/usr/bin/env bash
# GPU check in one call: the GPU-marked tests, then each benchmark suite, with the report
# written to OUTDIR (default: ./gpu-report). Run from the repository root on a CUDA machine:
#   bash bench/gpu_check.sh OUTDIR
# Needs torch, triton, pytest and numpy already installed (the GPU machine installs nothing).
# Each suite runs under its own time limit (SUITE_SECONDS, default 80) so that the whole call
# fits a short lease: torch.compile compiles once per case and can take most of that; rows are
# printed as they finish, so a suite cut short still leaves its rows in report.txt (its JSON is
# written only when it completes).
set -uo pipefail
out=${1:-gpu-report}
suite_seconds=${SUITE_SECONDS:-80}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; git rev-parse HEAD; date -u; } \
  > "$out/device.txt" 2>&1
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" || status=1
for op in layer_norm rms_norm attention rotary linear; do
  timeout "$suite_seconds" python -m fastformer bench --op "$op" --json "$out/$op.json" 2>&1 \
    | tee -a "$out/report.txt" || status=1
done
exit $status
