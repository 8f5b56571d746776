#!/usr/bin/env bash
# GPU check in one call: the GPU-marked tests, then the default benchmark suite, with the report
# written to OUTDIR (default: ./gpu-report). Run from the repository root on a CUDA machine:
#   bash bench/gpu_check.sh OUTDIR
# Needs torch, triton, pytest and numpy already installed (the GPU machine installs nothing).
set -uo pipefail
out=${1:-gpu-report}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; git rev-parse HEAD; date -u; } \
  > "$out/device.txt" 2>&1
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$out/gpu_tests.log" || status=1
python -m fastformer bench --json "$out/results.json" --csv "$out/results.csv" 2>&1 \
  | tee "$out/report.txt" || status=1
exit $status
