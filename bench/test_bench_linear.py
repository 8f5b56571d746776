"""The linear suite under pytest-benchmark (see bench/bench_harness.py)."""

from __future__ import annotations

import pytest
from bench_harness import params, run


@pytest.mark.parametrize(("case", "mode", "provider"), params("linear"))
def test_linear(benchmark, case, mode, provider) -> None:
    run(benchmark, case, mode, provider)
