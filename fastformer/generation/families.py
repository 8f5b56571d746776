"""How the generation loop runs the layers of a Hugging Face causal LM: one adapter per family.

An adapter reads a ``transformers`` model's modules (never a copy of its weights) and gives the
loop four things: the cache's shape (:class:`~fastformer.generation.cache.CacheSpec`) and the
rotary frequencies, ``embed(ids, positions)``, ``layer(index, hidden, attend)`` and
``logits(hidden)``. A layer calls the model's own modules for everything except attention:
norms, the q/k/v/o projections and the feed-forward block, in the family's order with its
residuals. Those modules are eager PyTorch, or fastformer's kernels after
:func:`fastformer.optimize` (which replaces the norms and feed-forward blocks in place); either
way the loop computes what the model's forward computes. Attention itself is the loop's
``attend(index, q, k, v, scale)``: rotary, the KV-cache append and fastformer's prefill or
decode attention.

Families (``config.model_type``), written from transformers 5.25's modeling files:

- ``llama`` (LLaMA 1-3, SmolLM2, TinyLlama, ...): RMSNorm, q/k/v/o Linear (biases allowed),
  GQA, RoPE with a static ``inv_freq`` (default, linear, llama3, YaRN types; the dynamic and
  LongRoPE types change ``inv_freq`` with the length and are refused), gated MLP.
- ``gpt2``: learned positions (at most ``n_positions``), LayerNorm, fused ``c_attn`` Conv1D
  split into q/k/v, no rotary, MLP; the per-layer ``scaling`` of the attention module
  (``scale_attn_weights``, ``scale_attn_by_inverse_layer_idx``) is honoured. Cross-attention
  is refused.

Anything else raises NotImplementedError naming the supported families.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastformer.generation.cache import CacheSpec

# attend(layer_index, q (B, S, H, D), k (B, S, Hkv, D), v (B, S, Hkv, D), scale) -> (B, S, H, D)
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

# RoPE types whose inv_freq depends on the sequence length (transformers' dynamic_rope_update).
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class Family:
    """Base adapter. Attributes set by subclasses: ``spec``, ``n_heads``, ``vocab_size``,
    ``inv_freq`` ((rotary_dim // 2,) fp32 or None), ``attention_scaling``, ``max_positions``
    (learned positions' limit, or None)."""

    name = "base"
    spec: CacheSpec
    n_heads: int
    vocab_size: int
    inv_freq: torch.Tensor | None = None
    attention_scaling: float = 1.0
    max_positions: int | None = None

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids, positions (B, S) int64 -> hidden (B, S, E)."""
        raise NotImplementedError

    def layer(self, index: int, hidden: torch.Tensor, attend: Attend) -> torch.Tensor:
        """hidden (B, S, E) -> (B, S, E) through decoder layer ``index``."""
        raise NotImplementedError

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., E) of the last layer -> (..., vocab) through the final norm and head."""
        raise NotImplementedError

    def _heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        return x.view(*x.shape[:-1], n_heads, self.spec.head_dim)  # (B, S, heads, D)


class LlamaFamily(Family):
    name = "llama"

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        base = model.model
        self.layers = base.layers
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if any(kind in rope_type for kind in LENGTH_DEPENDENT_ROPE):
            raise NotImplementedError(
                f"rope_type={rope_type!r}: its frequencies change with the sequence length; the "
                "generation loop supports RoPE types with fixed frequencies (default, linear, "
                "llama3, yarn)"
            )
        attention = self.layers[0].self_attn
        self.spec = CacheSpec(
            n_layers=len(self.layers),
            n_kv_heads=config.num_key_value_heads,
            head_dim=attention.head_dim,
        )
        self.n_heads = config.num_attention_heads
        self.vocab_size = config.vocab_size
        rotary = base.rotary_emb
        self.rotary = rotary
        self.attention_scaling = float(rotary.attention_scaling)

    @property
    def inv_freq(self) -> torch.Tensor:
        # Read live (as the integration's rotary does): the model's .to() moves the buffer.
        return self.rotary.inv_freq.float()

    def embed(self, ids, positions):
        return self.model.model.embed_tokens(ids)  # (B, S, E)

    def layer(self, index, hidden, attend):
        layer = self.layers[index]
        attention = layer.self_attn
        x = layer.input_layernorm(hidden)
        q = self._heads(attention.q_proj(x), self.n_heads)  # (B, S, H, D)
        k = self._heads(attention.k_proj(x), self.spec.n_kv_heads)  # (B, S, Hkv, D)
        v = self._heads(attention.v_proj(x), self.spec.n_kv_heads)  # (B, S, Hkv, D)
        out = attend(index, q, k, v, attention.scaling).flatten(2)  # (B, S, H * D)
        hidden = hidden + attention.o_proj(out)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def logits(self, hidden):
        return self.model.lm_head(self.model.model.norm(hidden))


class GPT2Family(Family):
    name = "gpt2"

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        config = model.config
        if getattr(config, "add_cross_attention", False):
            raise NotImplementedError(
                "GPT-2 with add_cross_attention=True: the generation loop runs decoder-only models"
            )
        self.transformer = model.transformer
        self.layers = self.transformer.h
        self.n_heads = config.num_attention_heads
        self.spec = CacheSpec(
            n_layers=len(self.layers),
            n_kv_heads=self.n_heads,
            head_dim=config.hidden_size // self.n_heads,
        )
        self.vocab_size = config.vocab_size
        self.max_positions = self.transformer.wpe.num_embeddings

    def embed(self, ids, positions):
        transformer = self.transformer
        return transformer.drop(transformer.wte(ids) + transformer.wpe(positions))  # (B, S, E)

    def layer(self, index, hidden, attend):
        block = self.layers[index]
        attention = block.attn
        width = attention.split_size
        q, k, v = attention.c_attn(block.ln_1(hidden)).split(width, dim=2)  # (B, S, E) each
        q, k, v = (self._heads(t, self.n_heads) for t in (q, k, v))  # (B, S, H, D)
        out = attend(index, q, k, v, attention.scaling).flatten(2)  # (B, S, E)
        hidden = hidden + attention.resid_dropout(attention.c_proj(out))
        return hidden + block.mlp(block.ln_2(hidden))

    def logits(self, hidden):
        return self.model.lm_head(self.transformer.ln_f(hidden))


FAMILIES = {"llama": LlamaFamily, "gpt2": GPT2Family}


def family_of(model: torch.nn.Module) -> Family:
    """The adapter for ``model`` (a transformers causal LM of a supported family)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise NotImplementedError(
            f"model_type={model_type!r} ({type(model).__name__}); the generation loop supports "
            f"{sorted(FAMILIES)} causal LMs"
        )
    if not hasattr(model, "lm_head"):
        raise NotImplementedError(
            f"{type(model).__name__} has no lm_head; pass the causal LM (e.g. "
            "LlamaForCausalLM, GPT2LMHeadModel), not the base model"
        )
    return FAMILIES[model_type](model)
