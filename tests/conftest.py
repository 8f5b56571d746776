"""Test-suite set-up: the device, Triton's interpreter, seeds, poisoned outputs, GPU markers.

Without a CUDA device the kernels run through Triton's interpreter, which must be switched on
before any kernel is defined: this file does it at collection, before the tests import
fastformer. The tolerance rule lives in ``fastformer.testing`` (shared with the benchmark
runner); the ``check`` fixture applies it.
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from fastformer import testing  # noqa: E402  (after the interpreter switch, on purpose)
from fastformer.kernels import _runtime  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (this machine has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def seed(request):
    """A fixed seed per test, derived from its id: fresh inputs per case, reproducible runs."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    return value


@pytest.fixture(autouse=True)
def poison_outputs():
    """NaN-fill every output buffer the kernels allocate, so unwritten elements fail."""
    previous = _runtime.set_poison_outputs(True)
    yield
    _runtime.set_poison_outputs(previous)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def check():
    """``check(kernel_fn, reference_fn, leaves, ...)``: the tolerance rule, raising on failure."""
    return testing.assert_against_reference
