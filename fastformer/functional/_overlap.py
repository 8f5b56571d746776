"""Whether tensors written in place share elements: within one tensor, or between two.

An in-place kernel writes every element once; an element reached by two indices (an expanded,
stride-0 axis, or strides that overlap) or by both of two tensors would be written twice (on a
GPU, by racing programs). The test is exact and costs no device sync for any view of a dense
buffer: a short search over the strides (:func:`_lattice_solution`); only strides that are not
nested fall back to comparing every element's offset on the device.
"""

from __future__ import annotations

import torch

# Steps of the search before it falls back to comparing every element's offset on the device
# (a host sync); nested strides (any view of one dense buffer) take a few steps per axis.
SEARCH_BUDGET = 4096


def _lattice_solution(target, dims, nonzero, budget=SEARCH_BUDGET):
    """Whether ``sum(m * stride) == target`` for integers ``lo <= m <= hi`` per (stride, lo, hi).

    A depth-first search from the largest stride, each step keeping only the ``m`` that the
    smaller strides can still make up; ``nonzero`` excludes the all-zero solution. Returns None
    when the search takes more than ``budget`` steps (strides that are not nested).
    """
    dims = sorted(dims, key=lambda dim: -dim[0])
    reach = [0] * (len(dims) + 1)  # reach[j]: the most dims j.. can add or take away
    for j in range(len(dims) - 1, -1, -1):
        stride, lo, hi = dims[j]
        reach[j] = reach[j + 1] + stride * max(-lo, hi)
    steps = 0

    def search(j, rest, used):
        nonlocal steps
        steps += 1
        if steps > budget:
            raise OverflowError
        if j == len(dims):
            return rest == 0 and (used or not nonzero)
        stride, lo, hi = dims[j]
        low = max(lo, -((reach[j + 1] - rest) // stride))  # ceil((rest - reach) / stride)
        high = min(hi, (rest + reach[j + 1]) // stride)
        return any(search(j + 1, rest - m * stride, used or m != 0) for m in range(low, high + 1))

    try:
        return search(0, target, False)
    except OverflowError:
        return None


def _element_offsets(x):
    offsets = torch.full((), x.storage_offset(), dtype=torch.int64, device=x.device)
    for size, stride in zip(x.shape, x.stride(), strict=True):
        step = torch.arange(size, dtype=torch.int64, device=x.device) * stride
        offsets = offsets.unsqueeze(-1) + step
    return offsets.flatten()


def shares_within(x: torch.Tensor) -> bool:
    """Whether two indices of ``x`` reach the same element."""
    dims = [(stride, 1 - size, size - 1) for size, stride in zip(x.shape, x.stride(), strict=True)]
    if x.numel() > 1 and any(stride == 0 for stride, _, hi in dims if hi > 0):
        return True  # a broadcast (expanded) axis
    dims = [dim for dim in dims if dim[2] > 0]
    shared = _lattice_solution(0, dims, nonzero=True)
    if shared is None:
        offsets = _element_offsets(x)
        shared = bool(offsets.unique().numel() != offsets.numel())
    return shared


def shares_between(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether an element of ``a`` is also an element of ``b``."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    spans = []
    for x in (a, b):
        last = sum((n - 1) * stride for n, stride in zip(x.shape, x.stride(), strict=True))
        spans.append((x.storage_offset(), x.storage_offset() + last))
    if spans[0][1] < spans[1][0] or spans[1][1] < spans[0][0]:
        return False
    shared = None
    if a.stride() == b.stride():
        # a's element i meets b's element l when sum((i - l) * stride) is b's offset minus a's,
        # with -(b's size) < i - l < a's size on every axis.
        dims = [
            (stride, 1 - nb, na - 1)
            for na, nb, stride in zip(a.shape, b.shape, a.stride(), strict=True)
            if na > 1 or nb > 1
        ]
        shared = _lattice_solution(b.storage_offset() - a.storage_offset(), dims, nonzero=False)
    if shared is None:
        shared = bool(torch.isin(_element_offsets(b), _element_offsets(a)).any())
    return shared
