"""``OptimizeReport``: what :func:`fastformer.optimize` replaced and what it left on eager PyTorch.

A report is plain data (dataclasses), stored on the model as ``model.fastformer_report`` and
logged at INFO. Modules left eager are listed one by one where they were candidates (a norm, a
feed-forward block, an attention module) and refused for a reason; other module kinds that have
no fastformer kernel (embeddings, the attention projections, dropout) are counted per kind, so
the report stays short for a 30-layer model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Replacement:
    """One module now running on fastformer's kernels."""

    path: str  # dotted module path in the model ("" for the model itself)
    original: str  # class name before
    replacement: str  # what runs now


@dataclass(frozen=True)
class Eager:
    """One candidate module left on eager PyTorch, and why."""

    path: str
    module: str
    reason: str


@dataclass
class OptimizeReport:
    """What :func:`fastformer.optimize` did to one model.

    ``attention`` says which attention implementation the model now uses; ``attention_limits``
    lists the cases in which the fastformer attention function hands a call to the family's
    eager attention (or refuses it) at run time. ``untouched`` counts, per class name, the
    modules that have no fastformer counterpart.
    """

    model: str
    model_type: str | None
    attention: str
    replaced: list[Replacement] = field(default_factory=list)
    eager: list[Eager] = field(default_factory=list)
    attention_limits: list[str] = field(default_factory=list)
    untouched: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """How many modules were replaced, per replacement kind."""
        return dict(Counter(r.replacement for r in self.replaced))

    def summary(self) -> str:
        """A few lines for a log: counts per replacement, every eager candidate with its reason."""
        lines = [f"fastformer.optimize({self.model}, model_type={self.model_type!r})"]
        lines.append(f"  attention: {self.attention}")
        for kind, n in sorted(self.counts().items()):
            lines.append(f"  replaced x{n}: {kind}")
        for item in self.eager:
            lines.append(f"  eager: {item.path or '<model>'} ({item.module}): {item.reason}")
        if self.untouched:
            kinds = ", ".join(f"{name} x{n}" for name, n in sorted(self.untouched.items()))
            lines.append(f"  no fastformer counterpart (eager): {kinds}")
        for limit in self.attention_limits:
            lines.append(f"  attention falls back to eager when: {limit}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
