"""Named profiler ranges around fastformer's public ops, and a hook that sees each op's arguments.

Every public op runs inside ``torch.profiler.record_function("fastformer::<op>")`` while a
profiler is on, so traces (torch.profiler's Chrome/Perfetto trace, or Nsight Systems under
``torch.autograd.profiler.emit_nvtx``, where record_function ranges become NVTX ranges) show
which op launched which kernels. Ops nested in another op (``scaled_dot_product_attention``
calling ``varlen_attention``) take no second range: one range per public call.

Observers (:func:`observe`) are called with the op's name and its bound arguments at each
outermost call, before it runs; ``fastformer profile`` uses this to count each call's bytes and
FLOPs. Nothing here imports the layers above.

Cost when no profiler and no observer is on: one check of the profiler's state per call; the
op runs unchanged. Code compiled by torch.compile takes no ranges and calls no observers (the
check is skipped while tracing); its traces show the kernel ops themselves
(``fastformer_kernels::<launch>``, see ``fastformer.functional._library``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator

import torch

PREFIX = "fastformer::"

_observers: list[Callable[[str, dict], None]] = []
_state = threading.local()  # .depth: fastformer ops open on this thread


def _profiling() -> bool:
    return bool(_observers) or torch.autograd._profiler_enabled()


@contextlib.contextmanager
def op_range(name: str, arguments: Callable[[], dict]) -> Iterator[None]:
    """Run the body as the op ``name``: inside ``fastformer::<name>`` and seen by observers
    (``arguments()`` gives them its arguments), unless an op is already open on this thread."""
    depth = getattr(_state, "depth", 0)
    if depth or not _profiling():
        yield
        return
    for observer in list(_observers):
        observer(name, arguments())
    _state.depth = depth + 1
    try:
        with torch.profiler.record_function(PREFIX + name):
            yield
    finally:
        _state.depth = depth


def named_op(name: str | Callable[[dict], str]):
    """Decorator: :func:`op_range` around every call of the function, as the op ``name`` (or
    ``name(arguments)`` for a function that serves several ops)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if torch.compiler.is_compiling() or not _profiling():
                return fn(*args, **kwargs)
            arguments = dict(signature.bind(*args, **kwargs).arguments)
            op = name if isinstance(name, str) else name(arguments)
            with op_range(op, lambda: arguments):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


@contextlib.contextmanager
def observe(observer: Callable[[str, dict], None]) -> Iterator[None]:
    """Call ``observer(op_name, arguments)`` at every outermost fastformer op inside the block."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)
