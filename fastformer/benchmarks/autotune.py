"""Which config Triton's autotuner chose for each of fastformer's autotuned kernels.

The kernels (``fastformer/kernels/*``) wrap their ``@triton.jit`` functions in
``triton.autotune``; each such ``Autotuner`` object keeps ``cache``, a dict from the tuning key
(the values of the kernel's ``key`` arguments, then the dtypes of its tensor arguments) to the
winning ``triton.Config``, and ``best_config``, the config of its latest launch. After a run,
:func:`choices` walks the loaded ``fastformer.kernels`` modules for those objects and lists one
:class:`Choice` per (kernel, key). A kernel with a single candidate (under the interpreter,
which cannot benchmark, every kernel has one) is never tuned: Triton fills no cache for it, so
its entry has no key and ``tuned`` False. A kernel that never ran in this process has no entry.

The state is the process's: the command line runs in a fresh one, so there it is the run's.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass

from triton.runtime.autotuner import Autotuner

logger = logging.getLogger(__name__)

KERNELS_PACKAGE = "fastformer.kernels"
# How deep to follow wrappers (``triton.heuristics`` around ``triton.autotune`` and the like).
MAX_WRAPPER_DEPTH = 4


@dataclass(frozen=True)
class Choice:
    """One kernel's config for one tuning key. ``key`` lists the key's values as text (None when
    the kernel has one candidate and was not tuned); ``config`` holds the config's
    meta-parameters (``BLOCK_M`` ...) and ``num_warps``, ``num_stages``, ``num_ctas`` and
    ``maxnreg``."""

    kernel: str
    module: str
    key_names: list[str]
    key: list[str] | None
    config: dict[str, object]
    tuned: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        key = "only candidate, not tuned" if self.key is None else ", ".join(self.key)
        config = ", ".join(f"{name}={value}" for name, value in self.config.items())
        return f"{self.kernel} [{key}] -> {config}"


def _config_dict(config) -> dict[str, object]:
    fields = {name: getattr(config, name, None) for name in ("num_warps", "num_stages")}
    fields.update(
        num_ctas=getattr(config, "num_ctas", None), maxnreg=getattr(config, "maxnreg", None)
    )
    return {**config.kwargs, **fields}


def _autotuners(value, depth: int = 0):
    """The Autotuner objects in ``value`` or in the wrappers around it."""
    if isinstance(value, Autotuner):
        yield value
    elif depth < MAX_WRAPPER_DEPTH and hasattr(value, "fn"):
        yield from _autotuners(value.fn, depth + 1)


def _kernel_name(tuner: Autotuner) -> str:
    base = getattr(tuner, "base_fn", None) or tuner.fn
    return getattr(base, "__name__", repr(base))


def loaded_autotuners() -> list[tuple[str, Autotuner]]:
    """(module name, autotuner) of every autotuned kernel in the loaded fastformer.kernels
    modules, each once."""
    found: dict[int, tuple[str, Autotuner]] = {}
    for name, module in sorted(sys.modules.items()):
        if module is None or not name.startswith(KERNELS_PACKAGE + "."):
            continue
        for value in vars(module).values():
            for tuner in _autotuners(value):
                found.setdefault(id(tuner), (name, tuner))
    return list(found.values())


def choices() -> list[Choice]:
    """The autotuner's choice for every (kernel, key) that ran in this process."""
    result = []
    for module, tuner in loaded_autotuners():
        kernel, key_names = _kernel_name(tuner), list(tuner.keys)
        for key, config in tuner.cache.items():
            result.append(
                Choice(kernel, module, key_names, [str(v) for v in key], _config_dict(config), True)
            )
        best = getattr(tuner, "best_config", None)
        if not tuner.cache and best is not None:
            result.append(Choice(kernel, module, key_names, None, _config_dict(best), False))
    return result


def log_choices(found: list[Choice]) -> None:
    """Log each choice at INFO."""
    for choice in found:
        logger.info("autotune: %s", choice)
