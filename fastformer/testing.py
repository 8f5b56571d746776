"""The one tolerance rule, shared by the test suite and the benchmark runner's correctness check.

A kernel's result passes when, against a float64 reference computed on upcast inputs, its largest
error is at most ``ERROR_FACTOR`` times eager PyTorch's own largest error in the same dtype, plus
a floor of ``FLOOR_ULPS`` units of the dtype's precision times the problem's magnitude: the
largest reference value among all the outputs and gradients compared together, and at least 1
(the floor keeps a result from failing where eager happens to be exact, or where a quantity
cancels to zero from larger terms, as the gradient through a single key does). NaN never passes
where the reference is a number, and a number never passes where the reference is NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# How many times eager PyTorch's error a kernel may have. A fused kernel rounds in other places
# than eager (fp32 statistics, one rounding at the end), hence some slack above 1.
ERROR_FACTOR = 3.0
# Floor in units of the dtype's epsilon, scaled by the reference's largest magnitude.
FLOOR_ULPS = 2.0


@dataclass
class Comparison:
    """What one comparison found; ``ok`` says whether it passes the rule."""

    name: str
    error: float
    eager_error: float
    bound: float
    ok: bool
    reason: str = ""

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.name}: {verdict} {self.reason}error={self.error:.3g} "
            f"eager_error={self.eager_error:.3g} bound={self.bound:.3g}"
        )


def _max_abs(a: torch.Tensor) -> float:
    return a.abs().max().item() if a.numel() else 0.0


def compare(
    name: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    eager: torch.Tensor,
    scale: float = 1.0,
) -> Comparison:
    """Apply the rule to ``actual`` (kernel, its dtype), ``expected`` (float64), ``eager``;
    ``scale`` is the problem's magnitude (the floor uses the larger of it and ``expected``'s)."""
    if actual.shape != expected.shape:
        return Comparison(name, float("inf"), 0.0, 0.0, False, f"shape {tuple(actual.shape)} ")
    actual64, eager64, expected = actual.double(), eager.double(), expected.double()
    nan_expected = torch.isnan(expected)
    if not torch.equal(torch.isnan(actual64), nan_expected):
        return Comparison(name, float("nan"), 0.0, 0.0, False, "NaN where the reference differs ")
    finite = torch.isfinite(expected)
    inf_mismatch = (~finite & ~nan_expected) & (actual64 != expected)
    if inf_mismatch.any():
        return Comparison(name, float("inf"), 0.0, 0.0, False, "inf where the reference differs ")
    diff = (actual64 - expected)[finite]
    eager_diff = (eager64 - expected)[finite]
    error, eager_error = _max_abs(diff), _max_abs(eager_diff)
    scale = max(_max_abs(expected[finite]), scale, 1.0)
    floor = FLOOR_ULPS * torch.finfo(actual.dtype).eps * scale
    bound = ERROR_FACTOR * eager_error + floor
    return Comparison(name, error, eager_error, bound, error <= bound)


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _copy_leaves(leaves: Sequence, dtype: torch.dtype | None) -> list:
    copies = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            copy = leaf.detach().to(dtype) if dtype is not None else leaf.detach().clone()
            copies.append(copy.requires_grad_(leaf.requires_grad))
        else:
            copies.append(leaf)
    return copies


def check_against_reference(
    kernel_fn: Callable,
    reference_fn: Callable,
    leaves: Sequence,
    *,
    grad_output_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> list[Comparison]:
    """Compare ``kernel_fn(*leaves)`` with ``reference_fn`` in float64 and eagerly in the dtype.

    ``leaves`` are tensors (those with ``requires_grad`` get their gradients checked) or other
    arguments passed through. The functions may build views of the leaves; gradients are taken
    with respect to the leaves. ``grad_output_fn(output)`` gives each output's gradient (fresh
    normal values by default); the same values, upcast, feed all three runs.
    """
    kernel_leaves = _copy_leaves(leaves, None)
    ref_leaves = _copy_leaves(leaves, torch.float64)
    eager_leaves = _copy_leaves(leaves, None)
    kernel_out = _as_tuple(kernel_fn(*kernel_leaves))
    ref_out = _as_tuple(reference_fn(*ref_leaves))
    eager_out = _as_tuple(reference_fn(*eager_leaves))

    triples = [
        (f"output[{i}]", k, r, e)
        for i, (k, r, e) in enumerate(zip(kernel_out, ref_out, eager_out, strict=True))
    ]
    grad_index = [i for i, leaf in enumerate(leaves) if getattr(leaf, "requires_grad", False)]
    if grad_index:
        triples += _gradient_triples(
            kernel_out, ref_out, eager_out, kernel_leaves, ref_leaves, eager_leaves,
            grad_index, grad_output_fn, names or [f"arg{i}" for i in range(len(leaves))],
        )  # fmt: skip
    # The problem's magnitude: the largest finite reference value of any output or gradient.
    finite_refs = [r[torch.isfinite(r)] for _, _, r, _ in triples if r is not None]
    scale = max((_max_abs(r) for r in finite_refs), default=1.0)
    results = []
    for name, k, r, e in triples:
        if k is None and r is None and e is None:
            continue  # the leaf takes no part in this call (an unused optional input)
        if k is None or r is None or e is None:
            missing = k is None, r is None, e is None
            results.append(Comparison(name, float("nan"), 0.0, 0.0, False, f"{missing} "))
            continue
        results.append(compare(name, k, r, e, scale))
    return results


def _gradient_triples(
    kernel_out, ref_out, eager_out, kernel_leaves, ref_leaves, eager_leaves,
    grad_index, grad_output_fn, labels,
):  # fmt: skip
    """(name, kernel, float64, eager) gradient triples of the leaves in ``grad_index``."""
    make_grad = grad_output_fn or (lambda out: torch.randn_like(out))
    grad_outs = [make_grad(out.detach()) for out in kernel_out]

    def grads(outputs, inputs):
        selected = [inputs[i] for i in grad_index]
        upcast = [g.to(out.dtype) for g, out in zip(grad_outs, outputs, strict=True)]
        return torch.autograd.grad(outputs, selected, upcast, allow_unused=True)

    return [
        (f"grad {labels[i]}", k, r, e)
        for i, k, r, e in zip(
            grad_index,
            grads(kernel_out, kernel_leaves),
            grads(ref_out, ref_leaves),
            grads(eager_out, eager_leaves),
            strict=True,
        )
    ]


def assert_against_reference(*args, **kwargs) -> list[Comparison]:
    """:func:`check_against_reference`, raising AssertionError listing every failed comparison."""
    results = check_against_reference(*args, **kwargs)
    failed = [str(result) for result in results if not result.ok]
    if failed:
        raise AssertionError("; ".join(failed))
    return results
