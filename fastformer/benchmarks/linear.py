"""The feed-forward suite: the fused linear + bias + GELU GEMM and the gated (SwiGLU) GEMM.

On a GPU, bf16, at the first GEMM of BERT-base and GPT-2 (768 -> 3072, + bias + GELU) and the
gate/up GEMM of LLaMA-7B (4096 -> 11008, SwiGLU), with 512, 4096 and 16384 tokens. On the CPU
the kernels run in Triton's interpreter, so the suite shrinks to 64 tokens of 128 -> 256
features: enough to exercise the kernels, the checks and the table.

Providers: eager ``F.linear`` followed by ``F.gelu`` (or ``silu(x @ Wg.T) * (x @ Wu.T)``), the
same under torch.compile, torch._addmm_activation (forward only, where its epilogue computes the
same activation) and fastformer. Each case carries its FLOPs (:func:`counts.gemm_flops`,
``2 * M * N * K`` per product): a GEMM is compute-bound, so the runner reports TFLOP/s and the
fraction of the measured matmul peak, next to GB/s from :func:`counts.linear_fwd_bytes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

import fastformer
from fastformer import reference
from fastformer.benchmarks import counts
from fastformer.benchmarks.runner import (
    ADDMM_ACTIVATION,
    COMPILE,
    EAGER,
    FASTFORMER,
    Case,
    lazy_compile,
)

DEFAULT_DTYPE = torch.bfloat16
# (name, in_features, out_features, gated, activation)
GPU_LAYERS = (
    ("bert_base", 768, 3072, False, "gelu"),
    ("gpt2", 768, 3072, False, "gelu_tanh"),
    ("llama_7b", 4096, 11008, True, "silu"),
)
CPU_LAYERS = (("tiny", 128, 256, False, "gelu"), ("tiny_gated", 128, 256, True, "silu"))
GPU_TOKENS = (512, 4096, 16384)
CPU_TOKENS = (64,)


def _make_inputs(device, generator, *, m, k, n, gated, activation, dtype):
    def randn(*size, scale=1.0):
        return scale * torch.randn(size, dtype=dtype, device=device, generator=generator)

    inputs: dict[str, object] = {"x": randn(m, k)}
    if gated:
        inputs["weight_gate"] = randn(n, k, scale=k**-0.5)
        inputs["weight_up"] = randn(n, k, scale=k**-0.5)
    else:
        inputs["weight"] = randn(n, k, scale=k**-0.5)
        inputs["bias"] = randn(n)
    inputs["activation"] = activation
    return inputs


def _addmm_activation(x, weight, bias, activation):
    """torch._addmm_activation: the GEMM with cuBLASLt's bias + GELU epilogue on CUDA."""
    return torch._addmm_activation(bias, x, weight.t(), use_gelu=activation != "relu")


def _epilogue_gelu(device_type: str) -> str:
    """The GELU that torch._addmm_activation computes: cuBLASLt's epilogue is the tanh form;
    the CPU path computes the exact (erf) one."""
    return "gelu_tanh" if device_type == "cuda" else "gelu"


def linear_case(
    name: str,
    k: int,
    n: int,
    gated: bool,
    activation: str,
    m: int,
    dtype: torch.dtype,
    device_type: str = "cuda",
) -> Case:
    """One layer at ``m`` tokens; its op name is ``linear+<activation>`` or ``gated+<act>``.
    The cuBLASLt-epilogue provider joins where it computes the same activation."""
    ref = reference.gated_linear if gated else reference.linear
    ours = fastformer.gated_linear if gated else fastformer.linear
    providers = {EAGER: ref, COMPILE: lazy_compile(ref), FASTFORMER: ours}
    if not gated and activation in ("relu", _epilogue_gelu(device_type)):
        providers[ADDMM_ACTIVATION] = _addmm_activation
    sizes = dict(elem_bytes=dtype.itemsize, has_bias=not gated, gated=gated)
    return Case(
        op=("gated+" if gated else "linear+") + f"{activation}[{name}]",
        shape=(m, k, n),
        dtype=dtype,
        make_inputs=partial(
            _make_inputs, m=m, k=k, n=n, gated=gated, activation=activation, dtype=dtype
        ),
        reference=ref,
        providers=providers,
        fwd_bytes=counts.linear_fwd_bytes(m, n, k, **sizes),
        bwd_bytes=counts.linear_bwd_bytes(m, n, k, **sizes),
        fwd_flops=_fwd_flops(m, k, n, gated),
        bwd_flops=2 * _fwd_flops(m, k, n, gated),
        forward_only=(ADDMM_ACTIVATION,),  # torch._addmm_activation has no derivative
        x_axis="tokens (M)",  # the suite sweeps tokens; each layer keeps its K and N
        x_value=m,
        variant=f"K={k} N={n}",
    )


def _fwd_flops(m: int, k: int, n: int, gated: bool) -> int:
    """One GEMM per weight in the forward (the backward: two, dx and dweight)."""
    return counts.gemm_flops(m, n, k) * (2 if gated else 1)


def linear_cases(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    tokens: Sequence[int] | None = None,
) -> list[Case]:
    """The suite's cases: every layer at every token count and dtype."""
    on_gpu = device.type == "cuda"
    layers = GPU_LAYERS if on_gpu else CPU_LAYERS
    tokens = tokens if tokens is not None else (GPU_TOKENS if on_gpu else CPU_TOKENS)
    return [
        linear_case(name, k, n, gated, activation, m, dtype, device.type)
        for name, k, n, gated, activation in layers
        for dtype in dtypes
        for m in tokens
    ]
