"""The command line must not import Triton before it decides on the interpreter: Triton's own
jit helpers (``tl.sum``, ...) are defined for the GPU or the interpreter when ``triton`` is first
imported, so an early import makes every interpreted kernel fail on a machine without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_command_line_imports_no_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys, fastformer.cli; print(sorted(m for m in sys.modules if 'triton' in m))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
