#!/usr/bin/env bash
# GPU check in one call, under 8 minutes on an H200: the GPU-marked tests, then the default
# benchmark suites (kernels, decode attention and the KV-cache append among them; models; then
# generation: decode-step tokens/s and prefill of SmolLM2-135M's shape and a 1B LLaMA config),
# everything written into OUTDIR (default: ./gpu-report):
#   report.md      the bench's Markdown report (environment, the targets, e.g. decode attention
#                  at 32k keys against 85% of the copy bandwidth, table, failures, autotune
#                  choices, plots), with the GPU tests' summary appended
#   results.json   every row, the environment (GPU, versions, commit) and the autotune choices
#   results.csv    the rows, one line each
#   plots/*.png    throughput per (op, dtype, mode)
#   device.txt, gpu_tests.log, bench.log   raw output of each step
# Run from the repository root on a CUDA machine:  bash bench/gpu_check.sh OUTDIR
# Needs torch, triton, pytest, numpy, matplotlib and transformers already installed (the GPU
# machine installs nothing; without transformers the models suite prints a note instead).
#
# Time limits (seconds; override through the environment): TESTS_SECONDS for the GPU tests,
# BENCH_SECONDS for the bench, whose own --budget (BENCH_BUDGET) is shared among its suites so
# that every suite gets its turn (decode attention a double share, generation a fivefold one:
# fastformer/benchmarks/command.py's SUITE_WEIGHTS; decode attention runs its target rows first,
# generation compiles transformers' decode step only with 45 s of its share left); when the
# budget is spent, later cases are skipped and listed, and if the hard limit still hits, the
# bench's SIGTERM handler writes what it measured. The 60 s between the budget and the limit
# cover the start-up (peak bandwidth and matmul rate), a case that began before the budget ran
# out (a compile among them) and the writing of the files.
# Defaults: 180 + 270 = 450 s, plus start-up, under the 480 s a call may take. PYTHON picks
# the interpreter (default: python).
set -uo pipefail
out=${1:-gpu-report}
python=${PYTHON:-python}
tests_seconds=${TESTS_SECONDS:-180}
bench_seconds=${BENCH_SECONDS:-270}
bench_budget=${BENCH_BUDGET:-210}
mkdir -p "$out/plots"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
  git rev-parse HEAD
  date -u
} > "$out/device.txt" 2>&1

# 1. The GPU-marked tests (realistic sizes, tensors past 2**31 elements, ...).
timeout --signal=TERM --kill-after=10 "$tests_seconds" \
  "$python" -m pytest -m gpu -q -p no:cacheprovider tests > "$out/gpu_tests.log" 2>&1 || status=1
tail -n 3 "$out/gpu_tests.log"

# 2. The default suites (kernels, then models), one process, one report.
timeout --signal=TERM --kill-after=20 "$bench_seconds" \
  "$python" -m fastformer bench --quiet --budget "$bench_budget" \
    --json "$out/results.json" --csv "$out/results.csv" \
    --markdown "$out/report.md" --plot "$out/plots" > "$out/bench.log" 2>&1 || status=1
tail -n 5 "$out/bench.log"
# The performance targets (also at the top of report.md).
grep '^target: ' "$out/bench.log" || echo "target: none measured (see bench.log)"

# The GPU tests' verdict goes at the end of the report.
{
  echo
  echo "## GPU-marked tests"
  echo
  echo '```'
  tail -n 15 "$out/gpu_tests.log"
  echo '```'
} >> "$out/report.md"
echo "report in $out (status $status)"
exit $status
