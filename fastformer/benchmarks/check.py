"""The correctness check a provider passes before it is timed.

The rule is the test suite's, from :mod:`fastformer.testing` (one rule, one place): against a
float64 reference computed by the eager reference on upcast inputs, the provider's max-abs error
on every output, and on every gradient in the backward modes, is at most a small multiple of
eager PyTorch's own error in the same dtype, plus a floor; NaN never passes. This module adapts
it to the runner: keyword inputs, the upstream gradients the timed runs use, outputs poisoned
(NaN-filled) while the provider runs so that an element a kernel never writes fails, and any
exception the provider raises turned into a failed check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fastformer import testing
from fastformer.kernels import _runtime


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _is_leaf(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def leaf_copies(inputs: Mapping[str, object], requires_grad: bool = True) -> dict[str, object]:
    """``inputs`` with each floating-point tensor replaced by a fresh leaf that requires grad
    (or, with ``requires_grad=False``, a fresh tensor that does not)."""
    return {
        name: value.detach().clone().requires_grad_(requires_grad) if _is_leaf(value) else value
        for name, value in inputs.items()
    }


def _positional(fn: Callable[..., object], names: Sequence[str]) -> Callable[..., object]:
    return lambda *values: fn(**dict(zip(names, values, strict=True)))


def check_provider(
    fn: Callable[..., object],
    reference: Callable[..., object],
    inputs: Mapping[str, object],
    grads_out: Sequence[torch.Tensor] | None,
) -> CheckResult:
    """Whether ``fn(**inputs)`` matches ``reference(**inputs)`` under the rule.

    ``grads_out`` are the gradients fed to each output in the backward modes, where every
    floating-point input's gradient is checked too; None checks the outputs alone.
    """
    names = list(inputs)
    with_grads = grads_out is not None
    leaves = [
        value.detach().requires_grad_(with_grads) if _is_leaf(value) else value
        for value in inputs.values()
    ]
    upstream = iter(grads_out or ())
    previous = _runtime.set_poison_outputs(True)
    try:
        results = testing.check_against_reference(
            _positional(fn, names),
            _positional(reference, names),
            leaves,
            grad_output_fn=lambda _output: next(upstream),
            names=names,
        )
    except Exception as error:  # any failure of the provider fails its row, with its message
        return CheckResult(False, f"raised {type(error).__name__}: {error}")
    finally:
        _runtime.set_poison_outputs(previous)
    failed = [str(result) for result in results if not result.ok]
    return CheckResult(not failed, "; ".join(failed) or "ok")
