"""The kernel families built on ``tl.dot`` for prefill and training: attention and linear (the
feed-forward GEMMs), as :class:`~fastformer.profiling.catalogue.Variant` lists (see
``catalogue`` for what each holds and how arguments are specialised).
"""

from __future__ import annotations

import importlib
from itertools import product

from fastformer.compile_report import signature_of
from fastformer.profiling.catalogue import (
    Variant,
    divisible_attrs,
    pointer_or_stride,
    unit_strides,
)

# The architectures the matmul kernels choose tiles for apart, as [low, high) compute
# capabilities: before sm_90 (mma.sync) and from sm_90 (wgmma). Each compiles the tiles its
# launches may try (the kernels' ``gpu_tiles``), the first as its default.
ARCH_RANGES = ((0, 90), (90, None))

# --- attention ------------------------------------------------------------------------------

_ATTN_POINTERS = {
    "o32_ptr": "fp32",
    "m_ptr": "fp32",
    "log2l_ptr": "fp32",
    "delta_ptr": "fp32",
    "dmask_ptr": "fp32",
    "mask_ptr": "i1",
    "cu_seqlens_q_ptr": "i32",
    "cu_seqlens_k_ptr": "i32",
}
_ATTN_UNIT = (
    "stride_q_dim",
    "stride_k_dim",
    "stride_v_dim",
    "stride_do_dim",
    "stride_o_dim",
    "stride_dk_dim",
    "stride_dv_dim",
    "stride_dq_dim",
)
_ATTN_FLAGS = dict(
    HAS_DROPOUT=False,
    HAS_WINDOW=False,
    IS_CAUSAL=True,
    BOTTOM_RIGHT=False,
    MASK_KIND=0,
    VARLEN=False,
    DOT_FP32=False,
    IEEE=False,
    BF16_RNE=False,
)
_ALL_FLAGS = dict(
    HAS_DROPOUT=True, HAS_WINDOW=True, BOTTOM_RIGHT=True, MASK_KIND=2, VARLEN=True, MASK_GRAD=True
)
# The forms a launch can take, as (dtype, flags); each compiles every tile the
# autotuner may pick for it (``attention_common.tile_form`` names its tile list). MASK_GRAD
# (the float mask's gradient) is a dq flag: the other kernels ignore it.
ATTENTION_FORMS = {
    "causal bf16": ("bf16", {}),
    "window bf16": ("bf16", dict(IS_CAUSAL=False, HAS_WINDOW=True)),
    "varlen bf16": ("bf16", dict(VARLEN=True, BOTTOM_RIGHT=True)),
    "dropout bf16": ("bf16", dict(HAS_DROPOUT=True)),
    "bool mask bf16": ("bf16", dict(IS_CAUSAL=False, MASK_KIND=1)),
    "float mask+grad bf16": ("bf16", dict(IS_CAUSAL=False, MASK_KIND=2, MASK_GRAD=True)),
    "all flags bf16": ("bf16", _ALL_FLAGS),
    "causal fp32": ("fp32", dict(IEEE=True)),
    "all flags fp32": ("fp32", dict(_ALL_FLAGS, IEEE=True)),
}
# wgmma tiles 64 rows a warpgroup; at head_dim 256 the tiles that avoid spills are too small.
_ATTN_WGMMA_MAX_HEAD_DIM = 128
_ATTN_KERNELS = {
    "fwd": ("attention_fwd", "_attn_fwd_kernel"),
    "dkdv": ("attention_bwd", "_attn_bwd_dkdv_kernel"),
    "dq": ("attention_bwd", "_attn_bwd_dq_kernel"),
}


def attention_form_flags(form: str) -> tuple[str, dict]:
    """(dtype, constexpr flags) of the attention form ``form`` (a key of ``ATTENTION_FORMS``)."""
    dtype, flags = ATTENTION_FORMS[form]
    return dtype, dict(_ATTN_FLAGS, **flags)


def attention_variant(which, head_dim, tile, form, *, capabilities=(0, None), default=True):
    """The ``which`` kernel ("fwd", "dkdv", "dq") at ``tile`` for the head-dim bucket
    ``head_dim``, in the form ``form``."""
    from fastformer.kernels import attention_common

    module, name = _ATTN_KERNELS[which]
    kernel = getattr(importlib.import_module(f"fastformer.kernels.{module}"), name)
    dtype, flags = attention_form_flags(form)
    mask_grad = flags.pop("MASK_GRAD", False)
    constexprs = dict(
        flags,
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        BLOCK_D=attention_common.block_d(head_dim),
    )
    if which == "dq":
        constexprs["MASK_GRAD"] = mask_grad
    if which == "fwd":  # training with dropout in fp16/bf16 also stores the fp32 output
        constexprs["STORE_O32"] = flags["HAS_DROPOUT"] and dtype != "fp32"
    constexprs.update(unit_strides(kernel, _ATTN_UNIT))
    pointers = dict(_ATTN_POINTERS)
    if flags["MASK_KIND"] == attention_common.MASK_FLOAT:
        pointers["mask_ptr"] = "fp32"
    signature = signature_of(
        kernel,
        constexprs,
        pointers,
        dtype,
        float_args=("sm_scale", "sm_scale_log2", "dropout_p"),
        int64_args=("seed",),
    )
    attrs = divisible_attrs(
        kernel, signature, lambda n: not (pointer_or_stride(n) or n == "head_dim")
    )
    config = f"d{head_dim}: {tile.block_m}x{tile.block_n} w{tile.num_warps} s{tile.num_stages}"
    return Variant(
        "attention",
        kernel.__name__,
        config,
        form,
        kernel,
        signature,
        constexprs,
        attrs,
        tile.num_warps,
        tile.num_stages,
        default=default,
        matmul=dtype != "fp32",  # fp32 products are IEEE: CUDA cores
        wgmma=head_dim <= _ATTN_WGMMA_MAX_HEAD_DIM
        and attention_common.tile_form(**_form_flags(dtype, flags, mask_grad)) == "plain",
        capabilities=capabilities,
    )


def _form_flags(dtype: str, flags: dict, mask_grad: bool) -> dict:
    """``attention_common.tile_form``'s arguments for a form."""
    return dict(
        fp32=dtype == "fp32",
        mask_kind=flags["MASK_KIND"],
        dropout=flags["HAS_DROPOUT"],
        mask_grad=mask_grad,
    )


def attention_variants() -> list[Variant]:
    from fastformer.kernels import attention_common

    variants = []
    for form, which, capabilities in product(ATTENTION_FORMS, _ATTN_KERNELS, ARCH_RANGES):
        dtype, flags = attention_form_flags(form)
        tiles_form = attention_common.tile_form(
            **_form_flags(dtype, flags, flags.get("MASK_GRAD", False))
        )
        for head_dim in attention_common.GPU_TILES[tiles_form][which]:
            tiles = attention_common.gpu_tiles(which, head_dim, capabilities[0], tiles_form)
            for index, tile in enumerate(tiles):
                variants.append(
                    attention_variant(
                        which,
                        head_dim,
                        tile,
                        form,
                        capabilities=capabilities,
                        default=index == 0,
                    )
                )
    kernel = attention_common._dropout_mask_kernel
    block = attention_common.MIN_BLOCK
    constexprs = dict(BLOCK_M=block, BLOCK_N=block)
    signature = signature_of(
        kernel,
        constexprs,
        {"keep_ptr": "i8"},
        "i8",
        float_args=("dropout_p",),
        int64_args=("seed",),
    )
    attrs = divisible_attrs(kernel, signature, lambda name: not pointer_or_stride(name))
    variants.append(
        Variant(
            "attention",
            kernel.__name__,
            f"{block}x{block}",
            "int8 mask",
            kernel,
            signature,
            constexprs,
            attrs,
            num_warps=None,
            num_stages=None,
        )
    )
    return variants


# --- linear ---------------------------------------------------------------------------------

_LINEAR_UNIT = ("stride_x_k", "stride_w_k", "stride_w_up_k", "stride_b_n", "stride_dy_n")
_LINEAR_FWD = dict(ACTIVATION="gelu", IS_GATED=False, HAS_BIAS=True, STORE_PRE=False)
_PLAIN_GELU = dict(ACTIVATION="gelu", IS_GATED=False)
_GATED_SILU = dict(ACTIVATION="silu", IS_GATED=True)
_GATED_GELU = dict(ACTIVATION="gelu", IS_GATED=True)
# (form, kernel attribute, flags, spill-free): the forms the compile test holds to no spills (the
# SwiGLU and GELU forms, and those of every form and activation, compiled once for sm_80 and
# sm_90, that spilled on some tile), then the int64-offset and identity forms, compiled on the
# default tile only.
_LINEAR_FORMS = (
    ("gelu+bias", "_linear_fwd_kernel", _LINEAR_FWD, True),
    (
        "gated silu, stores pre",
        "_linear_fwd_kernel",
        dict(_LINEAR_FWD, **_GATED_SILU, HAS_BIAS=False, STORE_PRE=True),
        True,
    ),
    ("gelu", "_linear_bwd_dx_kernel", _PLAIN_GELU, True),
    ("gated silu", "_linear_bwd_dx_kernel", _GATED_SILU, True),
    ("gated gelu", "_linear_bwd_dx_kernel", _GATED_GELU, True),
    ("gated silu", "_linear_bwd_dw_kernel", dict(_GATED_SILU, COMPUTE_DB=False), True),
    ("gated gelu", "_linear_bwd_dw_kernel", dict(_GATED_GELU, COMPUTE_DB=False), True),
    ("gelu, db", "_linear_bwd_dw_kernel", dict(_PLAIN_GELU, COMPUTE_DB=True), True),
    ("gelu", "_linear_bwd_dw_kernel", dict(_PLAIN_GELU, COMPUTE_DB=False), True),
    ("relu", "_linear_bwd_dw_kernel", dict(_PLAIN_GELU, ACTIVATION="relu", COMPUTE_DB=False), True),
    (
        "int64 gated gelu",
        "_linear_fwd_kernel",
        dict(_LINEAR_FWD, IS_GATED=True, HAS_BIAS=False, INT64_OFFSETS=True),
        False,
    ),
    (
        "int64 identity",
        "_linear_bwd_dx_kernel",
        dict(ACTIVATION=None, IS_GATED=False, INT64_OFFSETS=True),
        False,
    ),
    (
        "int64 identity, db",
        "_linear_bwd_dw_kernel",
        dict(ACTIVATION=None, IS_GATED=False, COMPUTE_DB=True, INT64_OFFSETS=True),
        False,
    ),
)  # fmt: skip
# A warpgroup's wgmma covers 64 rows: forward tiles of 64 rows or more must use it.
_WGMMA_MIN_ROWS = 64


def linear_variants() -> list[Variant]:
    from fastformer.kernels import linear

    variants = []
    for (form, name, flags, spill_free), capabilities in product(_LINEAR_FORMS, ARCH_RANGES):
        kernel = getattr(linear, name)
        tiles = linear.gpu_tiles(name, flags.get("IS_GATED", False), capabilities[0])
        for index, tile in enumerate(tiles if spill_free else tiles[:1]):
            constexprs = dict(
                dict(INT64_OFFSETS=False),
                **flags,
                DOT_FP32=False,
                INPUT_PRECISION="tf32",
                BF16_RNE=False,
                BLOCK_M=tile.block_m,
                BLOCK_N=tile.block_n,
                BLOCK_K=tile.block_k,
            )
            constexprs.update(unit_strides(kernel, _LINEAR_UNIT))
            signature = signature_of(kernel, constexprs, {}, "bf16")
            # The row strides (inner/outer) of folded leading dims need not be multiples of 16.
            attrs = divisible_attrs(kernel, signature, lambda n: "inner" in n or "outer" in n)
            config = (
                f"{tile.block_m}x{tile.block_n}x{tile.block_k} w{tile.num_warps} s{tile.num_stages}"
            )
            forward = name == "_linear_fwd_kernel"
            variants.append(
                Variant(
                    "linear",
                    name,
                    config,
                    f"{form} bf16",
                    kernel,
                    signature,
                    constexprs,
                    attrs,
                    tile.num_warps,
                    tile.num_stages,
                    default=index == 0,
                    spill_free=spill_free,
                    matmul=True,
                    wgmma=forward and tile.block_m >= _WGMMA_MIN_ROWS,
                    capabilities=capabilities,
                )
            )
    return variants
