"""The decode family as :class:`~fastformer.profiling.catalogue.Variant` lists: the split-K
decode attention, its combine kernel and the KV-cache append (see ``catalogue`` for how
arguments are specialised: aligned caches, as models with contiguous caches launch them).

Decode attention forms: bf16 with every candidate of ``GPU_TILES`` at every query tile (16, 32
and ``MAX_BLOCK_M`` rows), writing fp32 partials (the split path); bf16 on
the default tile paged, and writing the bf16 output itself (one split); fp32 inputs with every
candidate of ``FP32_TILES`` at ``MAX_BLOCK_M_FP32`` rows, dense and paged. bf16 products must run
on tensor cores; fp32 ones run on CUDA cores (full precision). The combine kernel at the most
splits a step holds, per head-dim bucket; the append with NeoX and GPT-J rotated keys and as a
plain copy, at LLaMA's heads.
"""

from __future__ import annotations

from fastformer.compile_report import signature_of
from fastformer.profiling.catalogue import Variant, divisible_attrs, unit_strides

_DECODE_UNIT = ("stride_q_dim", "stride_k_dim", "stride_v_dim", "stride_o_dim")
_APPEND_UNIT = ("stride_kn_dim", "stride_vn_dim", "stride_kc_dim", "stride_vc_dim")
# Counts that need not be multiples of 16 (everything else: pointers, strides, head_dim).
_FREE = (
    "n_kv_heads",
    "group_size",
    "seqlen_q",
    "capacity",
    "page_size",
    "n_splits",
    "n_heads",
    "n_tokens",
    "seqlen_new",
    "rotary_half",
)
# Query rows per bf16 tile (block_m_for: 16 to MAX_BLOCK_M, powers of two).
_ROWS = (16, 32, 64)
# (n_kv_heads, head_dim, rotary_half) of the KV-cache append: LLaMA's heads.
_APPEND_SHAPE = (8, 128, 64)


def _attention(kernel, head_dim, tile, block_m, *, dtype, out, paged, default) -> Variant:
    from fastformer.kernels import attention_common

    block_n, warps, stages = tile
    constexprs = dict(
        PAGED=paged,
        DOT_FP32=False,
        IEEE=dtype == "fp32",
        BF16_RNE=False,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=attention_common.block_d(head_dim),
    )
    constexprs.update(unit_strides(kernel, _DECODE_UNIT))
    pointers = {"o_ptr": out, "lse_ptr": "fp32", "seqlens_ptr": "i32", "block_table_ptr": "i32"}
    signature = signature_of(kernel, constexprs, pointers, dtype, float_args=("sm_scale_log2",))
    attrs = divisible_attrs(kernel, signature, lambda name: name in _FREE)
    config = f"d{head_dim} rows {block_m}: {block_n} keys w{warps} s{stages}"
    path = "split" if out == "fp32" else "one split"
    form = f"{'paged' if paged else 'dense'} cache, {path}, {dtype}"
    return Variant(
        "decode",
        kernel.__name__,
        config,
        form,
        kernel,
        signature,
        constexprs,
        attrs,
        warps,
        stages,
        default=default,
        matmul=dtype != "fp32",
    )


def _combine(kernel, head_dim, block_s) -> Variant:
    from fastformer.kernels import attention_common

    block_d = attention_common.block_d(head_dim)
    constexprs = dict(HAS_LSE=True, BF16_RNE=False, BLOCK_S=block_s, BLOCK_D=block_d)
    constexprs.update(unit_strides(kernel, ("stride_o_dim",)))
    pointers = {"o_part_ptr": "fp32", "lse_part_ptr": "fp32", "lse_ptr": "fp32"}
    signature = signature_of(kernel, constexprs, pointers, "bf16")
    attrs = divisible_attrs(kernel, signature, lambda name: name in _FREE)
    return Variant(
        "decode",
        kernel.__name__,
        f"d{head_dim}: {block_s} splits",
        "bf16 out, lse",
        kernel,
        signature,
        constexprs,
        attrs,
        num_warps=None,
        num_stages=None,
    )


def _append(kernel, style, num_warps) -> Variant:
    from fastformer.kernels import kv_cache

    n_heads, head_dim, rotary_half = _APPEND_SHAPE
    rotary = style != "copy"
    block_t, block_h, block_d, block_half, block_pass = kv_cache.append_tiles(
        1, n_heads, head_dim, rotary_half if rotary else 0
    )
    constexprs = dict(
        HAS_ROTARY=rotary,
        HAS_NEW_SEQLENS=False,
        PAGED=False,
        INTERLEAVED=style == "gptj",
        COPY_PASS=False,
        BF16_RNE=False,
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        BLOCK_HALF=block_half,
        BLOCK_PASS=block_pass,
    )
    constexprs.update(unit_strides(kernel, _APPEND_UNIT))
    pointers = {
        "seqlens_ptr": "i32",
        "new_seqlens_ptr": "i32",
        "block_table_ptr": "i32",
        "inv_freq_ptr": "fp32",
    }
    signature = signature_of(
        kernel, constexprs, pointers, "bf16", float_args=("attention_scaling",)
    )
    attrs = divisible_attrs(kernel, signature, lambda name: name in _FREE)
    config = f"{block_t}x{block_h}x{block_d} w{num_warps}"
    form = f"{style if rotary else 'copy'} keys, dense cache, bf16"
    return Variant(
        "decode",
        kernel.__name__,
        config,
        form,
        kernel,
        signature,
        constexprs,
        attrs,
        num_warps,
        num_stages=None,
    )


def decode_variants() -> list[Variant]:
    from fastformer.kernels import attention_common, decode, kv_cache

    assert max(_ROWS) == decode.MAX_BLOCK_M, "rows must reach the tile limit"
    kernel = decode._decode_attn_kernel
    variants = []
    for head_dim, tiles in decode.GPU_TILES.items():
        for block_m in _ROWS:
            for index, tile in enumerate(tiles):
                variants.append(
                    _attention(
                        kernel,
                        head_dim,
                        tile,
                        block_m,
                        dtype="bf16",
                        out="fp32",
                        paged=False,
                        default=index == 0,
                    )
                )
        for out, paged in (("fp32", True), ("bf16", False)):
            variants.append(
                _attention(
                    kernel,
                    head_dim,
                    tiles[0],
                    min(_ROWS),
                    dtype="bf16",
                    out=out,
                    paged=paged,
                    default=True,
                )
            )
    for head_dim, tiles in decode.FP32_TILES.items():
        for paged in (False, True):
            for index, tile in enumerate(tiles):
                variants.append(
                    _attention(
                        kernel,
                        head_dim,
                        tile,
                        decode.MAX_BLOCK_M_FP32,
                        dtype="fp32",
                        out="fp32",
                        paged=paged,
                        default=index == 0,
                    )
                )
    for head_dim in decode.GPU_TILES:
        block_s = max(1, decode.COMBINE_TILE // attention_common.block_d(head_dim))
        variants.append(_combine(decode._decode_combine_kernel, head_dim, block_s))
    for style in ("neox", "gptj", "copy"):
        variants.append(_append(kv_cache._kv_append_kernel, style, kv_cache.NUM_WARPS))
    return variants
