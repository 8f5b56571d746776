"""``TransformerConfig``: what a :class:`fastformer.models.Transformer` is built from.

One dataclass describes encoder-only (BERT), decoder-only (GPT-2, LLaMA) and encoder-decoder
(T5, BART) models: sizes, the feed-forward kind and activation, the norm kind and placement,
the position kind, dropout, weight tying. It is checked when it is made (``__post_init__``,
so also by ``dataclasses.replace``): a bad field raises ValueError naming the field, its value
and what is accepted, before any module is built.

Named presets (:data:`PRESETS`, :meth:`TransformerConfig.from_preset`) give the shapes of
well-known models; they are "style" presets: the structure and sizes of the family, not a
promise that its checkpoints load (BERT's do, through :mod:`fastformer.models.hf_bert`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fastformer.nn.attention import check_heads
from fastformer.nn.embeddings import NORM_KINDS, POSITION_KINDS
from fastformer.nn.feed_forward import HF_ACTIVATIONS

ARCHITECTURES = ("encoder", "decoder", "encoder-decoder")


@dataclass
class TransformerConfig:
    """Fields (defaults: BERT-base).

    architecture: "encoder" (bidirectional), "decoder" (causal, no cross-attention) or
        "encoder-decoder" (a bidirectional encoder, a causal decoder with cross-attention).
    vocab_size, hidden_size, ffn_size: token table rows, model width, feed-forward inner width.
    n_layers: encoder layers (decoder layers of a decoder-only model).
    n_decoder_layers: decoder layers of an encoder-decoder; None = n_layers.
    n_heads, n_kv_heads: query heads and key/value heads (GQA; None = n_heads).
    activation: feed-forward activation ("gelu", "gelu_tanh", "relu", "silu", or a Hugging
        Face name of those). gated_ffn: SwiGLU/GeGLU (needs bias=False).
    norm: "layer" or "rms". norm_first: pre-LN (True) or post-LN. norm_eps: the norms' eps.
    embedding_norm: a norm after the embeddings (BERT, BART).
    final_norm: a norm after the last layer; None = norm_first (pre-LN stacks end with one).
    position: "learned", "sinusoidal", "rotary", "relative" (T5 bias) or "none".
    max_positions: rows of the learned table (and the context rotary scaling refers to).
    type_vocab_size: token-type (segment) rows; 0 = none.
    rope_theta: rotary base. relative_buckets, relative_max_distance: T5 bias buckets.
    bias: biases in attention and feed-forward Linears. fused_qkv: one q/k/v GEMM.
    dropout: hidden dropout (embeddings, each branch, heads). attention_dropout: on the
        attention probabilities. classifier_dropout: the classification heads' (None = dropout).
    tie_embeddings: the LM head's weight is the token embedding.
    pooler: BERT's pooler (dense + tanh of the first token) on encoder outputs.
    lm_head_transform: BERT's masked-LM transform (dense, activation, norm) before the decoder.
    lm_head_bias: a bias in the LM head's decoder.
    embedding_scale: multiplies token embeddings (sqrt(hidden_size) in some encoder-decoders).
    pad_token_id: padding row of the token table (None: none); also the decoder start token
        when an encoder-decoder shifts its labels right.
    initializer_range: std of the normal initialisation of Linear and Embedding weights.
    """

    architecture: str = "encoder"
    vocab_size: int = 30522
    hidden_size: int = 768
    n_layers: int = 12
    n_decoder_layers: int | None = None
    n_heads: int = 12
    n_kv_heads: int | None = None
    ffn_size: int = 3072
    activation: str = "gelu"
    gated_ffn: bool = False
    norm: str = "layer"
    norm_first: bool = False
    norm_eps: float = 1e-12
    embedding_norm: bool = True
    final_norm: bool | None = None
    position: str = "learned"
    max_positions: int = 512
    type_vocab_size: int = 2
    rope_theta: float = 10000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    bias: bool = True
    fused_qkv: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    tie_embeddings: bool = True
    pooler: bool = True
    lm_head_transform: bool = True
    lm_head_bias: bool = True
    embedding_scale: float = 1.0
    pad_token_id: int | None = 0
    initializer_range: float = 0.02

    def __post_init__(self):
        self.validate()

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @property
    def has_final_norm(self) -> bool:
        return self.norm_first if self.final_norm is None else self.final_norm

    @property
    def is_decoder(self) -> bool:
        """Whether the model generates causally (decoder-only or encoder-decoder)."""
        return self.architecture != "encoder"

    @property
    def is_encoder_decoder(self) -> bool:
        return self.architecture == "encoder-decoder"

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TransformerConfig:
        """The preset ``name`` (see :data:`PRESETS`) with some fields replaced."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r}; expected one of {tuple(PRESETS)}")
        return dataclasses.replace(PRESETS[name](), **overrides)

    def validate(self) -> None:
        """ValueError naming the first bad field; called on construction."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r}; expected one of {ARCHITECTURES}")
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "ffn_size"):
            _positive_int(name, getattr(self, name))
        _positive_int("max_positions", self.max_positions)
        for name in ("n_kv_heads", "n_decoder_layers"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.n_decoder_layers is not None and not self.is_encoder_decoder:
            raise ValueError(
                f"n_decoder_layers={self.n_decoder_layers} is for architecture='encoder-decoder'"
                f" (got {self.architecture!r}); use n_layers"
            )
        check_heads(self.hidden_size, self.n_heads, self.kv_heads)
        if self.activation not in HF_ACTIVATIONS:
            raise ValueError(
                f"activation={self.activation!r}; expected one of {tuple(HF_ACTIVATIONS)}"
            )
        if self.gated_ffn and self.bias:
            raise ValueError("gated_ffn=True needs bias=False (the gated kernel has no biases)")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm={self.norm!r}; expected one of {tuple(NORM_KINDS)}")
        if self.position not in POSITION_KINDS:
            raise ValueError(f"position={self.position!r}; expected one of {POSITION_KINDS}")
        _positive_float("norm_eps", self.norm_eps)
        _positive_float("initializer_range", self.initializer_range)
        _positive_float("embedding_scale", self.embedding_scale)
        for name in ("dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name}={value!r}; expected 0 <= {name} < 1")
        if isinstance(self.type_vocab_size, bool) or not isinstance(self.type_vocab_size, int):
            raise ValueError(f"type_vocab_size={self.type_vocab_size!r}; expected an int >= 0")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size={self.type_vocab_size}; expected an int >= 0")
        if self.pad_token_id is not None and not (
            isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size
        ):
            raise ValueError(
                f"pad_token_id={self.pad_token_id!r}; expected None or 0 <= id < "
                f"vocab_size={self.vocab_size}"
            )
        self._validate_positions()

    def _validate_positions(self) -> None:
        if self.position == "rotary":
            _positive_float("rope_theta", self.rope_theta)
            if self.head_dim % 2:
                raise ValueError(
                    f"position='rotary' needs an even head_dim; hidden_size={self.hidden_size} / "
                    f"n_heads={self.n_heads} = {self.head_dim}"
                )
        if self.position == "sinusoidal" and self.hidden_size % 2:
            raise ValueError(
                f"position='sinusoidal' needs an even hidden_size; got {self.hidden_size}"
            )
        if self.position == "relative":
            _positive_int("relative_buckets", self.relative_buckets)
            _positive_int("relative_max_distance", self.relative_max_distance)
            # Encoders split the buckets between directions: the tighter case decides.
            exact = self.relative_buckets // 4
            if exact < 1 or self.relative_max_distance <= exact:
                raise ValueError(
                    f"relative_buckets={self.relative_buckets}, relative_max_distance="
                    f"{self.relative_max_distance}: need relative_buckets >= 4 and "
                    f"relative_max_distance > relative_buckets // 4"
                )


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}; expected a positive int")


def _positive_float(name: str, value) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}; expected a finite number > 0")


# Presets: the shapes of well-known models (from their published configurations).


def bert_base() -> TransformerConfig:
    """BERT-base (uncased): 12 post-LN layers, 768 wide, 12 heads, FFN 3072, GELU, learned
    positions (512), 2 token types, embedding LayerNorm, pooler; the defaults."""
    return TransformerConfig()


def gpt2_small() -> TransformerConfig:
    """GPT-2 small: 12 pre-LN causal layers, 768 wide, 12 heads, FFN 3072, tanh GELU, learned
    positions (1024), final LayerNorm, LM head tied to the token embedding."""
    return TransformerConfig(
        architecture="decoder", vocab_size=50257, norm_first=True, norm_eps=1e-5,
        activation="gelu_tanh", embedding_norm=False, max_positions=1024, type_vocab_size=0,
        attention_dropout=0.1, pooler=False, lm_head_transform=False, lm_head_bias=False,
        pad_token_id=None,
    )  # fmt: skip


def llama() -> TransformerConfig:
    """A LLaMA-style decoder in the shape of SmolLM2-135M: 30 pre-RMSNorm layers, 576 wide,
    9 query and 3 key/value heads (GQA), SwiGLU FFN 1536, rotary (theta 1e5), no biases,
    tied LM head."""
    return TransformerConfig(
        architecture="decoder", vocab_size=49152, hidden_size=576, n_layers=30, n_heads=9,
        n_kv_heads=3, ffn_size=1536, activation="silu", gated_ffn=True, norm="rms",
        norm_first=True, norm_eps=1e-5, embedding_norm=False, position="rotary",
        max_positions=8192, type_vocab_size=0, rope_theta=100000.0, bias=False, dropout=0.0,
        attention_dropout=0.0, pooler=False, lm_head_transform=False, lm_head_bias=False,
        pad_token_id=None,
    )  # fmt: skip


def t5_small() -> TransformerConfig:
    """T5-small style: 6 + 6 pre-RMSNorm layers, 512 wide, 8 heads, ReLU FFN 2048, relative
    position bias (32 buckets, distance 128) per stack, no biases, tied LM head. (T5's own
    attention has no 1/sqrt(head_dim) scale and its tied head rescales; this one has both
    standard.)"""
    return TransformerConfig(
        architecture="encoder-decoder", vocab_size=32128, hidden_size=512, n_layers=6,
        n_heads=8, ffn_size=2048, activation="relu", norm="rms", norm_first=True,
        norm_eps=1e-6, embedding_norm=False, position="relative", type_vocab_size=0,
        bias=False, attention_dropout=0.0, pooler=False, lm_head_transform=False,
        lm_head_bias=False,
    )  # fmt: skip


def bart_base() -> TransformerConfig:
    """BART-base style: 6 + 6 post-LN layers, 768 wide, 12 heads, GELU FFN 3072, learned
    positions (1024) shared by both stacks, embedding LayerNorm, tied LM head."""
    return TransformerConfig(
        architecture="encoder-decoder", vocab_size=50265, n_layers=6, norm_eps=1e-5,
        max_positions=1024, type_vocab_size=0, attention_dropout=0.0, pooler=False,
        lm_head_transform=False, lm_head_bias=False, pad_token_id=1,
    )  # fmt: skip


PRESETS = {
    "bert_base": bert_base,
    "gpt2_small": gpt2_small,
    "llama": llama,
    "t5_small": t5_small,
    "bart_base": bart_base,
}
