"""``RotaryEmbedding``: rotary position embeddings as a module, for any position.

The module holds ``inv_freq`` (a non-persistent buffer, as in Hugging Face's rotary modules, so
state_dicts are unaffected) and ``attention_scaling``, and rotates q and k with
:func:`fastformer.functional.apply_rotary`, whose kernel computes cos and sin itself: there is no
cos/sin cache, so no maximum position (``max_position_embeddings`` matters to the dynamic and
YaRN scalings only) and nothing keyed by length.

``inv_freq`` stays fp32 when the module is cast (``.to(torch.bfloat16)``, ``.half()``): angles of
large positions computed from low-precision frequencies are wrong by whole radians, so a cast
recomputes it in fp32 on the module's device; so does ``to_empty()`` after building the module on
the meta device (and ``reset_parameters()``).

Dynamic NTK scaling recomputes ``inv_freq`` for each call from that call's longest position
(a host sync when ``position_ids`` or ``cu_seqlens`` are given), without state: transformers
keeps the largest length seen until the length drops below ``max_position_embeddings``, so
calls between that and the largest length seen can differ from it.
"""

from __future__ import annotations

import torch

from fastformer.functional.rope_scaling import RopeParameters, rope_init
from fastformer.functional.rotary import apply_rotary


class RotaryEmbedding(torch.nn.Module):
    """Rotates q and k by their positions (NeoX style, or GPT-J style with ``interleaved``).

    Args:
        dim: rotary_dim, the number of features rotated per head (even; the rest pass).
        max_position_embeddings: the context the scaling refers to; not a limit.
        base: theta of the frequencies.
        rope_type: "default", "linear", "dynamic", "llama3" or "yarn".
        interleaved: GPT-J pairs (2j, 2j + 1) instead of NeoX's (j, j + dim / 2).
        **scaling: the scaling's parameters, named as in Hugging Face's ``rope_parameters``
            (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings,
            beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor, truncate).
    """

    def __init__(
        self,
        dim: int,
        max_position_embeddings: int = 2048,
        base: float = 10000.0,
        rope_type: str = "default",
        interleaved: bool = False,
        device=None,
        **scaling,
    ):
        super().__init__()
        self.params = RopeParameters(
            head_dim=dim,
            rope_type=rope_type,
            rope_theta=base,
            max_position_embeddings=max_position_embeddings,
            **scaling,
        )
        self.interleaved = interleaved
        inv_freq, self.attention_scaling = rope_init(self.params, device=device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @classmethod
    def from_config(
        cls, config, interleaved: bool = False, device=None, layer_type: str | None = None
    ) -> RotaryEmbedding:
        """From a transformers config: its ``rope_parameters``, head size and partial rotary.

        ``layer_type`` picks the entry of per-layer ``rope_parameters`` (Gemma 3's
        "sliding_attention" or "full_attention"); see :meth:`RopeParameters.from_config`.
        """
        params = RopeParameters.from_config(config, layer_type=layer_type)
        extra = {
            name: getattr(params, name)
            for name in (
                "factor",
                "original_max_position_embeddings",
                "low_freq_factor",
                "high_freq_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "attention_factor",
                "truncate",
            )
        }
        return cls(
            params.rotary_dim,
            params.max_position_embeddings,
            params.rope_theta,
            params.rope_type,
            interleaved,
            device,
            **extra,
        )

    def _apply(self, fn, recurse=True):
        was_meta = self.inv_freq.is_meta
        super()._apply(fn, recurse)
        # A cast gives low-precision frequencies; to_empty() from the meta device gives
        # uninitialised memory: both are recomputed.
        if self.inv_freq.dtype != torch.float32 or (was_meta and not self.inv_freq.is_meta):
            self.reset_parameters()
        return self

    def reset_parameters(self) -> None:
        """Recompute ``inv_freq`` (fp32) on its device, as after meta-device initialisation."""
        self.inv_freq = rope_init(self.params, device=self.inv_freq.device)[0]

    def _inv_freq_for(self, seqlen, position_ids, offset, cu_seqlens) -> torch.Tensor:
        if self.params.rope_type != "dynamic":
            return self.inv_freq
        if cu_seqlens is not None:
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
        elif position_ids is not None:
            longest = int(position_ids.max()) + 1 if position_ids.numel() else 0
        else:
            longest = seqlen
        return rope_init(self.params, seq_len=longest + offset, device=self.inv_freq.device)[0]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        *,
        offset: int = 0,
        cu_seqlens: torch.Tensor | None = None,
        layout: str = "bshd",
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_rot, k_rot)``; arguments as in :func:`fastformer.functional.apply_rotary`."""
        seqlen = q.shape[2] if layout == "bhsd" else q.shape[1] if layout == "bshd" else 0
        inv_freq = self._inv_freq_for(seqlen, position_ids, offset, cu_seqlens)
        return apply_rotary(
            q,
            k,
            inv_freq,
            position_ids=position_ids,
            offset=offset,
            cu_seqlens=cu_seqlens,
            interleaved=self.interleaved,
            layout=layout,
            inplace=inplace,
            attention_scaling=self.attention_scaling,
        )

    def extra_repr(self) -> str:
        params = self.params
        return (
            f"dim={params.head_dim}, rope_type={params.rope_type!r}, base={params.rope_theta}, "
            f"interleaved={self.interleaved}"
        )
