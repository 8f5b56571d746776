"""Every fastformer kernel with every config a launcher can give it, ready to compile for a GPU.

One :class:`Variant` is one ``@triton.jit`` kernel at one config (tile sizes, warps, stages) and
one form (the constexpr flags and the argument specialisation), with what the test suite holds
it to. The list is what ``fastformer inspect`` reports and what the compile tests check, so the
two cannot drift apart:

- norm: the fused forward and backward at every power-of-two tile width up to their fused
  limits, and the looping kernels for wider rows; LayerNorm with residual, weight and bias (the
  form with the most live values); each with the launcher's aligned sizing (hidden sizes that
  are multiples of 16) and its unaligned one (odd hidden sizes: no alignment known);
- attention: every autotuning candidate a launch may try on each architecture, in every
  head-dim bucket (``gpu_tiles`` of the form's tile list; the first is the default), forward,
  dk/dv and dq, in every form a launch can take (bf16 causal, windowed, packed, dropout, bool
  mask, float mask with its gradient, all flags; fp32 causal and all flags:
  ``catalogue_matmul.ATTENTION_FORMS``); and the dropout-mask kernel;
- linear: every autotuning candidate a launch may try on each architecture (``gpu_tiles`` of
  the kernel, form and compute capability; the first is the default) of the forward (plain GELU;
  gated SiLU storing its pre-activations) and both backward kernels (plain and gated, GELU,
  SiLU and ReLU forms), plus the int64-offset and identity forms, which are compiled but may
  spill (they serve tensors past 2**31 elements only);
- rotary: the launcher's tile (``tile_config``) at LLaMA, GPT-NeoX and small-head shapes, NeoX
  and GPT-J style, forward and backward (conjugate);
- decode: the split-K decode attention at every autotuning candidate of every head-dim bucket
  and precision (bf16 at query tiles of 16 and ``MAX_BLOCK_M`` rows; paged and one-split forms
  on the default tile; fp32 dense and paged), the combine kernel, and the KV-cache append (NeoX
  and GPT-J rotated keys, a plain copy); see ``catalogue_decode``.

Arguments are specialised as Triton's launcher specialises them for contiguous tensors at model
shapes ("aligned"): unit strides are constants, pointers and row strides multiples of 16. The
rotary kernel is also compiled without any alignment known ("unaligned": odd strides), which
must not spill either.

This file holds the variant type, the memory-bound families (norm, rotary) and the registry;
``catalogue_matmul`` holds attention and linear, ``catalogue_decode`` the decode family.
Building the list imports the kernels: to compile them, do it in a process where they are
defined for a GPU (without ``TRITON_INTERPRET``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from fastformer.compile_report import signature_of

OPS = ("norm", "attention", "linear", "rotary", "decode")
DIVISIBILITY = 16  # what Triton's launcher proves of 16-byte aligned pointers and sizes
ALIGNED = "aligned"
UNALIGNED = "unaligned"


@dataclass(frozen=True)
class Variant:
    """One kernel at one config and form, and what it is held to, on the architectures whose
    launches can take it (``capabilities``: tiles are chosen per architecture).

    ``matmul``: the kernel multiplies tiles (``tl.dot``), so it must run on tensor cores
    wherever the architecture has them. ``wgmma``: its tiles are large enough for Hopper's
    warpgroup MMA, which it must then use on sm_90. ``spill_free``: spills fail the tests.
    """

    op: str
    kernel: str
    config: str
    form: str
    fn: object = field(repr=False)
    signature: dict = field(repr=False)
    constexprs: dict = field(repr=False)
    attrs: dict | None = field(repr=False)
    num_warps: int | None  # None: Triton's default, as the launcher passes none
    num_stages: int | None
    default: bool = True
    spill_free: bool = True
    matmul: bool = False
    wgmma: bool = False
    # [low, high) compute capabilities whose launches can take this config (None: no bound).
    capabilities: tuple[int, int | None] = (0, None)

    @property
    def key(self) -> str:
        return f"{self.kernel} [{self.config}] {self.form}"

    def compiles_for(self, capability: int) -> bool:
        low, high = self.capabilities
        return low <= capability and (high is None or capability < high)


def divisible_attrs(kernel, signature: dict[str, str], exclude: Callable[[str], bool]) -> dict:
    """Triton's 16-divisibility attribute on every non-constexpr argument but floats and those
    ``exclude`` names (sizes that need not be multiples of 16)."""
    return {
        (index,): [["tt.divisibility", DIVISIBILITY]]
        for index, name in enumerate(kernel.arg_names)
        if signature[name] not in ("constexpr", "fp32") and not exclude(name)
    }


def unit_strides(kernel, names) -> dict[str, int]:
    """Unit strides as the constants the launcher's specialisation makes them."""
    return {name: 1 for name in names if name in kernel.arg_names}


def pointer_or_stride(name: str) -> bool:
    return name.endswith("_ptr") or name.startswith("stride_")


# --- norm -----------------------------------------------------------------------------------

_NORM_FP32 = ("mean_ptr", "rstd_ptr", "dw_partial_ptr", "db_partial_ptr")
_NORM_UNIT = (
    "stride_x_col",
    "stride_res_col",
    "stride_w_col",
    "stride_b_col",
    "stride_dy_col",
    "stride_dh_col",
)
_NORM_FWD = dict(IS_RMS=False, HAS_RES=True, HAS_WEIGHT=True, HAS_BIAS=True, BF16_RNE=False)
_NORM_BWD = dict(
    IS_RMS=False, HAS_DH=True, HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=True, BF16_RNE=False
)
_NORM_FORM = "LayerNorm+residual bf16"
ODD_WIDTH = "odd width"  # a hidden size that is not a multiple of 16: no alignment known


def _norm_variant(kernel, constexprs, num_warps, config, *, odd_width=False) -> Variant:
    constexprs = dict(constexprs, **unit_strides(kernel, _NORM_UNIT))
    fp32 = {name: "fp32" for name in _NORM_FP32}
    signature = signature_of(kernel, constexprs, fp32, "bf16", float_args=("eps",))
    # Hidden sizes are multiples of 16 in models; row counts need not be.
    attrs = divisible_attrs(
        kernel, signature, lambda name: not (pointer_or_stride(name) or name == "n_cols")
    )
    form = f"{_NORM_FORM} {ODD_WIDTH if odd_width else ALIGNED}"
    return Variant(
        "norm",
        kernel.__name__,
        config,
        form,
        kernel,
        signature,
        constexprs,
        None if odd_width else attrs,
        num_warps,
        num_stages=None,
    )


def _norm_widths(limit: int, aligned: bool) -> list[int]:
    """Every power-of-two tile width up to ``limit``: an aligned width is a multiple of 16."""
    first = DIVISIBILITY if aligned else 1
    return [1 << power for power in range(first.bit_length() - 1, limit.bit_length())]


def norm_variants() -> list[Variant]:
    from fastformer.kernels import norm, norm_sizing

    variants = []
    for aligned, sizing in (
        (True, norm_sizing.ALIGNED_SIZING),
        (False, norm_sizing.UNALIGNED_SIZING),
    ):
        for kernel, flags, limit in (
            (norm._norm_fwd_kernel, _NORM_FWD, norm_sizing.MAX_FUSED_COLS),
            (norm._norm_bwd_kernel, _NORM_BWD, sizing.max_fused_cols_bwd),
        ):
            for n_cols in _norm_widths(limit, aligned):
                block_m, block_n, warps = sizing.fused(n_cols)
                config = f"{n_cols} cols: {block_m}x{block_n} w{warps}"
                blocks = dict(flags, BLOCK_M=block_m, BLOCK_N=block_n)
                variants.append(_norm_variant(kernel, blocks, warps, config, odd_width=not aligned))
        block_n, warps = sizing.long_row_block, sizing.warps(sizing.long_row_block)
        config = f"rows > fused: chunk {block_n} w{warps}"
        for kernel, flags in (
            (norm._norm_fwd_long_row_kernel, _NORM_FWD),
            (norm._norm_bwd_long_row_kernel, _NORM_BWD),
        ):
            constexprs = dict(flags, BLOCK_N=block_n)
            variants.append(_norm_variant(kernel, constexprs, warps, config, odd_width=not aligned))
    return variants


# --- rotary ---------------------------------------------------------------------------------

_ROTARY_CONSTEXPRS = (
    "HAS_POSITION_IDS",
    "INTERLEAVED",
    "CONJUGATE",
    "COPY_PASS",
    "BF16_RNE",
    "BLOCK_T",
    "BLOCK_H",
    "BLOCK_HALF",
    "BLOCK_PASS",
)
_ROTARY_IO = ("q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr")
# Scalars that are counts or positions, never assumed multiples of 16.
_ROTARY_FREE = ("attention_scaling", "offset", "n_tokens", "n_heads_q", "n_heads_k", "seqlen")
_ROTARY_FLAGS = dict(HAS_POSITION_IDS=True, INTERLEAVED=False, CONJUGATE=False, BF16_RNE=False)
# name -> (dtype, (n_tokens, max_heads, rotary_half, n_pass), flags): the launcher's tiles
# (kernels.rotary.tile_config) at the benchmark's shapes and a small-head one.
ROTARY_SHAPES = {
    "llama bf16": ("bf16", (4096, 32, 64, 0), _ROTARY_FLAGS),
    "llama gptj bf16": ("bf16", (4096, 32, 64, 0), {**_ROTARY_FLAGS, "INTERLEAVED": True}),
    "neox20b fp16 bwd": ("fp16", (4096, 64, 12, 72), {**_ROTARY_FLAGS, "CONJUGATE": True}),
    "small heads fp32": ("fp32", (64, 4, 4, 8), {**_ROTARY_FLAGS, "INTERLEAVED": True}),
}


def _rotary_signature(kernel, dtype: str) -> dict[str, str]:
    signature = {}
    for name in kernel.arg_names:
        if name in _ROTARY_CONSTEXPRS:
            signature[name] = "constexpr"
        elif name in _ROTARY_IO:
            signature[name] = "*" + dtype
        elif name == "inv_freq_ptr":
            signature[name] = "*fp32"
        elif name == "pos_ptr":
            signature[name] = "*i64"
        elif name == "attention_scaling":
            signature[name] = "fp32"
        else:
            signature[name] = "i64" if name.startswith("stride") or name == "offset" else "i32"
    return signature


def rotary_variants() -> list[Variant]:
    from fastformer.kernels import rotary

    kernel = rotary._rotary_fwd_kernel
    variants = []
    for form, (dtype, shape, flags) in ROTARY_SHAPES.items():
        block_t, block_h, block_half, block_pass = rotary.tile_config(*shape)
        constexprs = dict(
            flags,
            COPY_PASS=shape[3] > 0,
            BLOCK_T=block_t,
            BLOCK_H=block_h,
            BLOCK_HALF=block_half,
            BLOCK_PASS=block_pass,
        )
        config = f"{block_t}x{block_h}x{block_half}+{block_pass} w{rotary.NUM_WARPS}"
        signature = _rotary_signature(kernel, dtype)
        # Unaligned: nothing known about the strides; aligned: contiguous heads of 16-byte
        # multiples (unit feature strides, everything else but counts divisible by 16).
        variants.append(
            Variant(
                "rotary",
                kernel.__name__,
                config,
                f"{form} {UNALIGNED}",
                kernel,
                signature,
                constexprs,
                None,
                rotary.NUM_WARPS,
                num_stages=None,
            )
        )
        unit = {name for name in signature if name.startswith("stride") and name.endswith("_dim")}
        aligned_constexprs = dict(constexprs, **dict.fromkeys(unit, 1))
        aligned_signature = {n: "constexpr" if n in unit else s for n, s in signature.items()}
        attrs = divisible_attrs(kernel, aligned_signature, lambda name: name in _ROTARY_FREE)
        variants.append(
            Variant(
                "rotary",
                kernel.__name__,
                config,
                f"{form} {ALIGNED}",
                kernel,
                aligned_signature,
                aligned_constexprs,
                attrs,
                rotary.NUM_WARPS,
                num_stages=None,
            )
        )
    return variants


def _lazy(module: str, name: str):
    def build() -> list[Variant]:
        return getattr(importlib.import_module(f"fastformer.profiling.{module}"), name)()

    return build


_BUILDERS = {
    "norm": norm_variants,
    "attention": _lazy("catalogue_matmul", "attention_variants"),
    "linear": _lazy("catalogue_matmul", "linear_variants"),
    "rotary": rotary_variants,
    "decode": _lazy("catalogue_decode", "decode_variants"),
}


def variants(ops=None) -> list[Variant]:
    """Every variant of the kernel families ``ops`` (default: all of ``OPS``), in their order."""
    ops = OPS if ops is None else tuple(ops)
    unknown = [op for op in ops if op not in _BUILDERS]
    if unknown:
        raise ValueError(f"op={unknown[0]!r} is not one of {', '.join(OPS)}")
    return [variant for op in ops for variant in _BUILDERS[op]()]
