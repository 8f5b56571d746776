"""The decode attention suite under pytest-benchmark (see bench/bench_harness.py)."""

from __future__ import annotations

import pytest
from bench_harness import params, run


@pytest.mark.parametrize(("case", "mode", "provider"), params("decode_attention"))
def test_decode_attention(benchmark, case, mode, provider) -> None:
    run(benchmark, case, mode, provider)
