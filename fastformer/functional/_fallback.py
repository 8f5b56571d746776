"""The opt-in eager fallback: an op given a case its kernels do not handle runs the eager reference.

By default such a case raises (``fastformer.kernels._runtime.Unsupported``: a TypeError for a
float64 input, a RuntimeError for a device the kernels were not defined for, a
NotImplementedError for a head_dim past the limit), before any launch. With the fallback on,
the op runs its eager PyTorch reference (``fastformer.reference``, same signature and result)
instead and warns once per op and reason (:class:`EagerFallbackWarning`, saying why). Bad input
(a wrong shape, an unknown option) still raises either way.

Switch it on for the process with ``FASTFORMER_EAGER_FALLBACK=1`` in the environment, or with
``fastformer.set_eager_fallback(True)``, or for a block with ``with fastformer.eager_fallback():``.

Under torch.compile the switch is read while tracing. A case decided by dtype or shape falls
back with a graph break at the warning (``fullgraph=True`` refuses it, naming the break): a
compiled model never falls back silently. A device the kernels cannot run on is found only when
the kernel op runs, and then raises.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator

import torch

from fastformer.kernels._runtime import Unsupported

ENV_VAR = "FASTFORMER_EAGER_FALLBACK"

_enabled = os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")
_warned: set[tuple[str, str]] = set()


class EagerFallbackWarning(UserWarning):
    """An op ran its eager reference instead of its kernels (once per op and reason)."""


def set_eager_fallback(enabled: bool) -> bool:
    """Turn the eager fallback on or off for the process; returns the previous setting."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    previous, _enabled = _enabled, enabled
    return previous


def eager_fallback_enabled() -> bool:
    """Whether unsupported cases run the eager reference (else they raise)."""
    return _enabled


@contextlib.contextmanager
def eager_fallback(enabled: bool = True) -> Iterator[None]:
    """The fallback on (or off) inside the block, restored after it."""
    previous = set_eager_fallback(enabled)
    try:
        yield
    finally:
        set_eager_fallback(previous)


# A warning cannot be traced: under torch.compile the fallback breaks the graph here (and
# fullgraph=True refuses it), so that a compiled model never falls back silently.
@torch.compiler.disable
def warn_eager(where: str, reason: str, detail: str = "") -> None:
    """Warn (:class:`EagerFallbackWarning`), once per ``where`` and ``reason``, that ``where``
    ran eager PyTorch instead of fastformer's kernels because of ``reason``."""
    key = (where, reason)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"{where}: {reason} is not supported by fastformer's kernels{detail}; running eager "
        "PyTorch instead. This warning is given once per op and reason.",
        EagerFallbackWarning,
        stacklevel=4,
    )


def falls_back_to(reference: Callable) -> Callable:
    """Decorator: the public op, or with the fallback on, ``reference`` (same signature) for
    the cases the op's kernels refuse as :class:`Unsupported`."""

    def decorate(op: Callable) -> Callable:
        @functools.wraps(op)
        def wrapper(*args, **kwargs):
            try:
                return op(*args, **kwargs)
            except Unsupported as error:
                if not _enabled:
                    raise
                detail = f" ({error}; the eager fallback is on)"
                warn_eager(f"fastformer.{op.__name__}", error.reason, detail)
            return reference(*args, **kwargs)

        return wrapper

    return decorate
