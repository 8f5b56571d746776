"""The layer norm suite under pytest-benchmark (see bench/bench_harness.py)."""

from __future__ import annotations

import pytest
from bench_harness import params, run


@pytest.mark.parametrize(("case", "mode", "provider"), params("layer_norm"))
def test_layer_norm(benchmark, case, mode, provider) -> None:
    run(benchmark, case, mode, provider)
