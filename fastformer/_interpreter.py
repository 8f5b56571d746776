"""Which way fastformer's kernels were defined in this process: for a GPU, or under Triton's
interpreter (``TRITON_INTERPRET=1`` when the kernel modules were imported). The commands check it
before switching the interpreter on (``bench``, ``profile``, ``generate`` without a GPU) or off
(``inspect``), since a kernel module cannot be defined twice in one process."""

from __future__ import annotations

import sys


def kernels_defined(interpreted: bool) -> bool:
    """Whether any of fastformer's kernels is already defined under the interpreter
    (``interpreted=True``) or for a GPU (``False``)."""
    from triton.runtime import JITFunction
    from triton.runtime.interpreter import InterpretedFunction

    kind = InterpretedFunction if interpreted else JITFunction
    return any(
        isinstance(value, kind)
        for name, module in list(sys.modules.items())
        if name.startswith("fastformer.kernels.") and module is not None
        for value in vars(module).values()
    )
