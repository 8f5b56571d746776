"""Every case of the project's list of inputs that broke public kernels (CASES.md, kept beside
the repository, not in it) has a test here that names it: a docstring or comment reading
"CASES <id>" (or "CASES A1 and A8", "CASES F1-F3", "CASES A13/I1"). The ids are listed in this
file, since CI's clean clone has no CASES.md; a test removed with its last mention fails here.

Where each case is checked (first the file with its main test; GPU: full size, GPU only):

    A1  test_attention.py                    A2  test_attention_varlen.py, test_attention.py
    A3  test_attention.py                    A4  test_attention.py
    A5  test_attention_inputs.py, test_norm_edge_cases.py, test_rotary.py, test_linear.py,
        test_gated.py
    A6  test_attention_varlen.py             A7  test_attention.py, test_cases_gaps.py (limit)
    A8  test_attention.py, test_cases_gaps.py (8, 1025; GPU: every length)
    A9  test_attention_inputs.py, test_rotary.py
    A10 test_attention_inputs.py, test_cases_gaps.py (every repeat against float64)
    A11 test_attention_inputs.py (GPU), test_cases_gaps.py (launch grid, CPU)
    A12 test_attention_dropout.py            A13 test_attention_inputs.py, test_compile.py,
                                                 test_rotary_hf.py
    A14 test_cases_gaps.py (refused, naming both head dims)
    N1  test_norm.py                         N2  test_norm.py
    N3  test_norm_edge_cases.py (GPU)        N4  test_norm_edge_cases.py (CPU size, and GPU)
    N5  test_norm_layouts.py                 F1  test_linear.py
    F2  test_linear.py (GPU; the int64 path forced at a small size on CPU)
    F3  test_linear.py, test_gated.py        R1  test_rotary_hf.py
    R2  test_rotary.py, test_rotary_hf.py    R3  test_rotary.py
    I1  test_compile.py, test_rotary_hf.py   I2  test_cases_gaps.py

The fuzz tests (test_fuzz_*.py) add odd layouts, sizes 0 and 1, NaN and inf to all of them.
"""

from __future__ import annotations

import pathlib
import re

import pytest

CASE_IDS = (
    *(f"A{i}" for i in range(1, 15)),
    *(f"N{i}" for i in range(1, 6)),
    *(f"F{i}" for i in range(1, 4)),
    *(f"R{i}" for i in range(1, 4)),
    "I1",
    "I2",
)
TESTS = pathlib.Path(__file__).parent


def _mentions(case_id: str) -> list[str]:
    """'file:line' of each line of a test file (this one aside) that names ``case_id`` after
    the word CASES."""
    pattern = re.compile(rf"\bCASES\b.*\b{case_id}\b")
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == pathlib.Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                found.append(f"{path.name}:{number}")
    return found


def test_case_ids_are_the_whole_list():
    assert len(CASE_IDS) == len(set(CASE_IDS)) == 27


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_every_case_has_a_test_naming_it(case_id):
    assert _mentions(case_id), f"no test under tests/ names 'CASES {case_id}'"


def test_a_mention_is_not_a_longer_id():
    """'CASES A13' is not a mention of A1."""
    assert re.search(r"\bCASES\b.*\bA1\b", "CASES A13/I1") is None
