"""What the hypothesis fuzz files share: settings, the case counter and its report, refusals,
the strategies for sizes and the layouts (views) of fresh leaves.

``counted(*ops)`` wraps a ``@given`` test: after hypothesis has run it, the wrapper asserts how
many cases of each op the run tried (and that some, not all, were refused) and reports the counts
as a ``FuzzCount`` warning, which pytest prints in its warnings summary. The count is taken
inside the test itself, so it holds when ``-n 2`` spreads a file's tests over two workers.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from fastformer import testing

# A bad draw must raise one of these, naming the argument.
REFUSALS = (TypeError, ValueError, NotImplementedError, RuntimeError)
# Cases tried per op, and calls matched / refused (keys "matched", "refused"), in this process.
TRIED: collections.Counter = collections.Counter()


class FuzzCount(UserWarning):
    """How many cases a fuzz test tried (a warning, so that pytest's summary shows it)."""


def fuzz_settings(examples: int):
    """Reproducible: the same ``examples`` cases on every run (derandomized, no database)."""
    return settings(
        derandomize=True,
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )


def counted(*ops: str, minimum: int = 10):
    """Run the hypothesis test, then assert and report how many cases of each op it tried, and
    how many calls were checked against the reference ("matched") and refused."""

    def wrap(given_test):
        def test():
            keys = (*ops, "matched", "refused")
            before = {key: TRIED[key] for key in keys}
            given_test()
            n = {key: TRIED[key] - before[key] for key in keys}
            report = ", ".join(f"{key}: {n[key]}" for key in ops)
            report += f"; calls matched: {n['matched']}, refused: {n['refused']}"
            warnings.warn(FuzzCount(f"cases tried: {report}"), stacklevel=1)
            for op in ops:
                assert n[op] >= minimum, f"{op}: only {n[op]} cases tried"
            assert n["matched"] > 0 and n["refused"] > 0, report

        test.__name__, test.__doc__ = given_test.__name__, given_test.__doc__
        return test

    return wrap


def seed_example(draw) -> None:
    """Seed torch from the drawn data, so that an example's tensors (and the gradients that
    ``fastformer.testing`` draws) are the same when hypothesis replays or shrinks it."""
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))


def check_matches(kernel_fn, reference_fn, leaves, **kwargs):
    """``fastformer.testing``'s rule (raising), counted as a matched call."""
    TRIED["matched"] += 1
    testing.assert_against_reference(kernel_fn, reference_fn, leaves, **kwargs)


def check_refused(call, names):
    """``call()`` raises one of ``REFUSALS`` whose message names one of ``names``."""
    TRIED["refused"] += 1
    with pytest.raises(REFUSALS) as info:
        call()
    message = str(info.value)
    assert any(name in message for name in names), f"{names} not named in {message!r}"


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "step", "offset", "expanded")
SPECIALS = ("none", "none", "none", "nan", "inf")
IDENTITY = lambda t: t  # noqa: E731
# Sizes drawn from lists whose first (simplest) entry is not 0 or 1: hypothesis starts from and
# shrinks towards the simplest draw, and with integers(0, n) a short derandomized run spends
# most of its cases on empty tensors.
sizes = st.sampled_from((2, 3, 1, 0, 4))
positive = st.sampled_from((2, 3, 1, 4))
head_dims = st.sampled_from((4, 3, 1, 0, 6, 2, 5))  # 0 not last: hypothesis favours the ends
window_sides = st.sampled_from((2, -1, 0, 1, 3))


def down_from(top):
    """0 to ``top``, simplest draw ``top`` (a full cache row, every new token)."""
    return st.integers(0, top).map(lambda n: top - n)


def leaf(shape, dtype, layout, special="none", draw=None, scale=1.0):
    """A fresh leaf, and the view function giving the op ``shape`` in ``layout``."""
    shape = list(shape)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2])
        view = lambda t: t.transpose(-1, -2)  # noqa: E731
    elif layout == "step" and shape:
        base = torch.randn(*shape[:-1], 2 * shape[-1])
        view = lambda t: t[..., ::2]  # noqa: E731
    elif layout == "offset" and shape:
        base = torch.randn(shape[0] + 1, *shape[1:])
        view = lambda t: t[1:]  # noqa: E731
    elif layout == "expanded" and shape:
        base = torch.randn(1, *shape[1:])
        view = lambda t: t.expand(*shape)  # noqa: E731
    else:
        base = torch.randn(*shape)
        view = IDENTITY
    base = (base * scale).to(dtype)
    if special != "none" and base.numel():
        index = draw(st.integers(0, base.numel() - 1))
        base.view(-1)[index] = float("nan") if special == "nan" else float("inf")
    return base, view


def spoil(t, bad, dtype):
    """``t`` (already in its layout) on the 'meta' device, with a rank more, or a dtype other
    than ``dtype``."""
    if bad == "device":
        return t.to("meta")
    if bad == "rank":
        return t[None]
    return t.to(torch.float16 if dtype != torch.float16 else torch.float32)


def bad_draws(draw, choices):
    """All the bad kinds of argument in ``choices``, or none of them (a drawn boolean): each kind
    is checked in every case that checks any (hypothesis' stream alone would leave some out)."""
    return choices if draw(st.booleans()) else ()
