"""The norm suite: LayerNorm and RMSNorm, each alone and fused with the residual add.

On a GPU: 4096 rows (a batch of tokens) of 1024 to 16384 features, in bf16, the widths of
models from BERT-large to the largest LLaMAs. On the CPU the kernels run in Triton's
interpreter (a 64 x 1024 forward takes about 0.1 s), so the suite shrinks to 64 rows of 256
and 1024 features: enough to exercise the kernels, the checks and the table, in about 30 s on
two cores.

Weights (and LayerNorm's bias) are in the input's dtype, as in a model cast to bf16. Liger's
norms join the plain cases where liger_kernel imports (:mod:`fastformer.benchmarks.external`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

import fastformer
from fastformer import reference
from fastformer.benchmarks import counts, external
from fastformer.benchmarks.runner import COMPILE, EAGER, FASTFORMER, LIGER, Case, lazy_compile

OPS = ("layer_norm", "rms_norm")
GPU_ROWS = 4096
GPU_COLS = (1024, 4096, 8192, 16384)
CPU_ROWS = 64
CPU_COLS = (256, 1024)
DEFAULT_DTYPE = torch.bfloat16
LAYER_NORM_EPS = 1e-5
# Weights near one and biases near zero, as in a trained model, but never exactly either.
WEIGHT_SPREAD = 0.1
BIAS_SPREAD = 0.1

_FASTFORMER_OPS = {"layer_norm": fastformer.layer_norm, "rms_norm": fastformer.rms_norm}
_REFERENCE_OPS = {"layer_norm": reference.layer_norm, "rms_norm": reference.rms_norm}


def default_shapes(device: torch.device) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return [(GPU_ROWS, cols) for cols in GPU_COLS]
    return [(CPU_ROWS, cols) for cols in CPU_COLS]


def _make_inputs(
    device: torch.device,
    generator: torch.Generator,
    *,
    op: str,
    shape: tuple[int, int],
    dtype: torch.dtype,
    has_residual: bool,
) -> dict[str, object]:
    def randn(size):
        return torch.randn(size, dtype=dtype, device=device, generator=generator)

    n_cols = shape[-1]
    inputs: dict[str, object] = {
        "x": randn(shape),
        "normalized_shape": (n_cols,),
        "weight": 1 + WEIGHT_SPREAD * randn(n_cols),
    }
    if op == "layer_norm":
        inputs["bias"] = BIAS_SPREAD * randn(n_cols)
        inputs["eps"] = LAYER_NORM_EPS
    if has_residual:
        inputs["residual"] = randn(shape)
    return inputs


def norm_case(op: str, shape: tuple[int, int], dtype: torch.dtype, has_residual: bool) -> Case:
    """One norm case; its name is ``op``, with ``+residual`` for the fused residual add."""
    if op not in OPS:
        raise ValueError(f"op={op!r} is not one of {OPS}")
    n_rows, n_cols = shape
    elem_bytes = dtype.itemsize
    sizes = dict(
        elem_bytes=elem_bytes,
        has_residual=has_residual,
        has_weight=True,
        has_bias=op == "layer_norm",
    )
    ref = _REFERENCE_OPS[op]
    providers = {EAGER: ref, COMPILE: lazy_compile(ref), FASTFORMER: _FASTFORMER_OPS[op]}
    liger = None if has_residual else external.liger_norm(op)
    if liger is not None:
        providers[LIGER] = liger
    return Case(
        op=op + ("+residual" if has_residual else ""),
        shape=(n_rows, n_cols),
        dtype=dtype,
        make_inputs=partial(
            _make_inputs, op=op, shape=shape, dtype=dtype, has_residual=has_residual
        ),
        reference=ref,
        providers=providers,
        fwd_bytes=counts.norm_fwd_bytes(n_rows, n_cols, **sizes),
        bwd_bytes=counts.norm_bwd_bytes(n_rows, n_cols, **sizes),
        x_axis="hidden size",
        x_value=n_cols,
        variant=f"{n_rows} rows",
    )


def norm_cases(
    device: torch.device,
    ops: Sequence[str] = OPS,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    shapes: Sequence[tuple[int, int]] | None = None,
    residual: Sequence[bool] = (False, True),
) -> list[Case]:
    """The suite's cases: every op, with and without the residual, at every shape and dtype."""
    shapes = default_shapes(device) if shapes is None else shapes
    return [
        norm_case(op, tuple(shape), dtype, has_residual)
        for op in ops
        for has_residual in residual
        for dtype in dtypes
        for shape in shapes
    ]
