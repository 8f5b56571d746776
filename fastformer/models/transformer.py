"""``Transformer``: an encoder, a decoder or an encoder-decoder built from a config.

Structure (submodule names are the state_dict's):

- ``embeddings``: :class:`fastformer.nn.TransformerEmbeddings` (token, learned or sinusoidal
  positions, token types, optional norm); an encoder-decoder shares it between its stacks.
- ``encoder`` and/or ``decoder``: a :class:`TransformerStack` of layers. The stack owns the
  position parts that live in attention: one :class:`RotaryEmbedding` referenced by every
  layer, or one :class:`RelativePositionBias` computed once per call and given to every layer
  as the additive bias (T5: the encoder's bidirectional, the decoder's causal). Pre-LN stacks
  chain the layers' ``(delta, residual)`` pairs (``layer(..., residual=r, stream=True)``) so
  every residual add runs inside a fused norm, the last one inside the final norm.
- ``pooler``: BERT's, built for no task or sequence classification (as transformers does).
- ``head``, by ``task``: "sequence_classification", "token_classification" or "lm" (masked LM
  for an encoder, next-token LM for a decoder, sequence-to-sequence LM for an
  encoder-decoder); the LM head's weight is the token embedding when ``tie_embeddings``.

Hugging Face BERT checkpoints load through a load_state_dict pre-hook that recognises their
keys and converts them (:mod:`fastformer.models.hf_bert`): ``model.load_state_dict(
bert.state_dict())`` works unchanged for ``BertModel`` and the sequence/token classification
and masked-LM variants.

Limits: no KV cache and no generation loop (each call runs the full sequence); token-level and
sequence classification heads for encoder and decoder models only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastformer.models import hf_bert
from fastformer.models.config import TransformerConfig
from fastformer.nn.attention import attention_mask
from fastformer.nn.embeddings import RelativePositionBias, TransformerEmbeddings, make_norm
from fastformer.nn.heads import (
    LanguageModelingHead,
    Pooler,
    SequenceClassificationHead,
    TokenClassificationHead,
)
from fastformer.nn.rotary import RotaryEmbedding
from fastformer.nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer

TASKS = ("sequence_classification", "token_classification", "lm")
# Label value that the losses skip (Hugging Face's convention).
IGNORE_INDEX = -100


@dataclass
class TransformerOutput:
    """What :meth:`Transformer.forward` returns; absent parts are None.

    last_hidden_state: (batch, seq, hidden) of the last stack (the decoder's if any).
    encoder_last_hidden_state: (batch, seq_src, hidden) of an encoder-decoder's encoder.
    pooled: (batch, hidden) from the pooler. logits: the head's. loss: when labels are given.
    """

    last_hidden_state: torch.Tensor
    encoder_last_hidden_state: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class TransformerStack(torch.nn.Module):
    """``n_layers`` layers of one kind, their shared position parts and the final norm.

    Args:
        config: the model's config.
        kind: "encoder" (bidirectional), "causal" (decoder-only layers, no cross-attention) or
            "decoder" (causal, with cross-attention over a memory).
        n_layers: how many layers.
    """

    def __init__(
        self, config: TransformerConfig, kind: str, n_layers: int, device=None, dtype=None
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.kind, self.norm_first = kind, config.norm_first
        self.rotary = None
        if config.position == "rotary":
            self.rotary = RotaryEmbedding(
                config.head_dim, config.max_positions, config.rope_theta, device=device
            )
        self.relative_bias = None
        if config.position == "relative":
            self.relative_bias = RelativePositionBias(
                config.n_heads, config.relative_buckets, config.relative_max_distance,
                bidirectional=kind == "encoder", **factory,
            )  # fmt: skip
        layer_kwargs = dict(
            n_kv_heads=config.n_kv_heads, activation=config.activation, gated=config.gated_ffn,
            norm=config.norm, norm_first=config.norm_first, eps=config.norm_eps,
            dropout=config.dropout, attention_dropout=config.attention_dropout,
            bias=config.bias, fused_qkv=config.fused_qkv, rotary=self.rotary, **factory,
        )  # fmt: skip
        layer_class = TransformerDecoderLayer if kind == "decoder" else TransformerEncoderLayer
        if kind == "causal":
            layer_kwargs["is_causal"] = True
        self.layers = torch.nn.ModuleList(
            layer_class(config.hidden_size, config.n_heads, config.ffn_size, **layer_kwargs)
            for _ in range(n_layers)
        )
        self.final_norm = None
        if config.has_final_norm:
            self.final_norm = make_norm(config.norm, config.hidden_size, config.norm_eps, **factory)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (batch, seq, hidden) -> (batch, seq, hidden); masks bool, True = a real token."""
        bias = None
        if self.relative_bias is not None:
            bias = self.relative_bias(x.shape[1], x.shape[1])  # (1, H, S, S), learned
            if key_padding_mask is not None:  # folded in once here, not once per layer
                bias = attention_mask(key_padding_mask, bias, x.dtype)  # (B, H, S, S)
                key_padding_mask = None
        decoder = self.kind == "decoder"
        if self.norm_first:
            delta, residual = x, None
            for layer in self.layers:
                # Through the module's __call__: its hooks (FSDP2's gather too) run.
                if decoder:
                    delta, residual = layer(
                        delta, memory, key_padding_mask, memory_key_padding_mask, bias,
                        position_ids, residual=residual, stream=True,
                    )  # fmt: skip
                else:
                    delta, residual = layer(
                        delta, key_padding_mask, bias, position_ids, residual=residual, stream=True
                    )
            if self.final_norm is not None:
                return self.final_norm(delta, residual)[0]  # norm(delta + residual)
            return delta + residual
        for layer in self.layers:
            if decoder:
                x = layer(x, memory, key_padding_mask, memory_key_padding_mask, bias, position_ids)
            else:
                x = layer(x, key_padding_mask, bias, position_ids)
        return x if self.final_norm is None else self.final_norm(x)


def _bool_mask(mask: torch.Tensor | None, name: str, ids: torch.Tensor) -> torch.Tensor | None:
    """Hugging Face's attention_mask (1 = token, 0 = padding; int or bool) as a bool mask of
    ``ids``'s (batch, seq) shape."""
    if mask is None:
        return mask
    if mask.shape != ids.shape:  # else an error deep in a layer, or a broadcast that fits
        raise ValueError(
            f"{name}.shape={tuple(mask.shape)}; expected (batch, seq)={tuple(ids.shape)}, "
            "1/True = token"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"{name}.dtype={mask.dtype}; expected bool or integer (1 = token)")
    return mask != 0


class Transformer(torch.nn.Module):
    """A transformer built from a :class:`TransformerConfig`, with an optional task head.

    Args:
        config: the configuration (validated when it was made).
        task: None (hidden states only), "sequence_classification", "token_classification" or
            "lm".
        num_labels: classes of the classification heads.
        pooling: how sequence classification pools without a pooler: "cls", "mean" or "last";
            None = "cls" for encoders, "last" for decoders.
    """

    def __init__(
        self,
        config: TransformerConfig,
        task: str | None = None,
        num_labels: int = 2,
        pooling: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        if task is not None and task not in TASKS:
            raise ValueError(f"task={task!r}; expected None or one of {TASKS}")
        if task in ("sequence_classification", "token_classification"):
            if config.is_encoder_decoder:
                raise NotImplementedError(f"task={task!r} for an encoder-decoder; not supported")
            if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
                raise ValueError(f"num_labels={num_labels!r}; expected a positive int")
        factory = dict(device=device, dtype=dtype)
        self.config, self.task = config, task
        self.embeddings = TransformerEmbeddings(
            config.vocab_size, config.hidden_size, position=config.position,
            max_positions=config.max_positions, type_vocab_size=config.type_vocab_size,
            padding_idx=config.pad_token_id, norm=config.norm if config.embedding_norm else None,
            eps=config.norm_eps, dropout=config.dropout, scale=config.embedding_scale, **factory,
        )  # fmt: skip
        if config.architecture != "decoder":
            self.encoder = TransformerStack(config, "encoder", config.n_layers, **factory)
        if config.architecture == "decoder":
            self.decoder = TransformerStack(config, "causal", config.n_layers, **factory)
        elif config.is_encoder_decoder:
            self.decoder = TransformerStack(config, "decoder", config.decoder_layers, **factory)
        self.pooler = None
        # As in transformers, the token-level heads go without the pooler.
        if config.pooler and config.architecture == "encoder" and task in (None, TASKS[0]):
            self.pooler = Pooler(config.hidden_size, **factory)
        self.head = self._make_head(task, num_labels, pooling, factory)
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(_convert_hf_bert_keys)

    def _make_head(self, task, num_labels, pooling, factory):
        config = self.config
        dropout = config.dropout if config.classifier_dropout is None else config.classifier_dropout
        if task == "sequence_classification":
            if self.pooler is not None:
                pooling = None  # the head takes the pooler's output
            elif pooling is None:
                pooling = "last" if config.is_decoder else "cls"
            return SequenceClassificationHead(
                config.hidden_size, num_labels, pooling=pooling, dropout=dropout, **factory
            )
        if task == "token_classification":
            return TokenClassificationHead(
                config.hidden_size, num_labels, dropout=dropout, **factory
            )
        if task == "lm":
            return LanguageModelingHead(
                config.hidden_size, config.vocab_size,
                transform=config.activation if config.lm_head_transform else None,
                norm=config.norm, eps=config.norm_eps, bias=config.lm_head_bias, **factory,
            )  # fmt: skip
        return None

    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) Linear and Embedding weights, zero biases and padding
        rows, unit norm weights; then the LM head tied to the token embedding if asked."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, torch.nn.Embedding):
                torch.nn.init.normal_(module.weight, 0.0, std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
                module.reset_parameters()
        if isinstance(self.head, LanguageModelingHead) and self.config.tie_embeddings:
            self.head.tie_to(self.embeddings.word_embeddings)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> TransformerOutput:
        """Run the model.

        Args:
            input_ids: (batch, seq) token ids (the source of an encoder-decoder).
            attention_mask: (batch, seq), 1/True = token, 0/False = padding.
            token_type_ids, position_ids: (batch, seq); default 0 and 0..seq-1.
            decoder_input_ids, decoder_attention_mask: an encoder-decoder's target side;
                ``decoder_input_ids`` default to ``labels`` shifted right (pad_token_id first).
            labels: class ids (batch,) for sequence classification, (batch, seq) token ids or
                classes otherwise; -100 is ignored. A decoder's LM labels are its input ids
                (the model shifts them: position t predicts t + 1).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids.shape={tuple(input_ids.shape)}; expected (batch, seq)")
        mask = _bool_mask(attention_mask, "attention_mask", input_ids)
        config = self.config
        hidden = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, S, E)
        out = TransformerOutput(hidden)
        if config.architecture == "encoder":
            hidden = self.encoder(hidden, mask, position_ids)
            if self.pooler is not None:
                out.pooled = self.pooler(hidden, mask)
        elif config.architecture == "decoder":
            hidden = self.decoder(hidden, mask, position_ids)
        else:
            memory = self.encoder(hidden, mask, position_ids)
            out.encoder_last_hidden_state = memory
            if decoder_input_ids is None:
                if labels is None:
                    raise ValueError("an encoder-decoder needs decoder_input_ids or labels")
                decoder_input_ids = self.shift_right(labels)
            target_mask = _bool_mask(
                decoder_attention_mask, "decoder_attention_mask", decoder_input_ids
            )
            target = self.embeddings(decoder_input_ids)
            hidden = self.decoder(target, target_mask, None, memory, mask)
        out.last_hidden_state = hidden
        if self.head is not None:
            out.logits = self._head(hidden, mask, out.pooled)
            if labels is not None:
                out.loss = self._loss(out.logits, labels)
        return out

    def _head(self, hidden, mask, pooled):
        if isinstance(self.head, SequenceClassificationHead):
            return self.head(pooled if self.head.pooling is None else hidden, mask)
        return self.head(hidden)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "lm" and self.config.architecture == "decoder":
            logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )  # fmt: skip

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: pad_token_id (or 0) first, the labels shifted one right,
        ignored positions (-100) as padding."""
        start = self.config.pad_token_id or 0
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == IGNORE_INDEX, start)

    @classmethod
    def from_hf_bert(cls, bert: torch.nn.Module, task: str | None = None, **kwargs) -> Transformer:
        """A copy of a Hugging Face BERT model (``BertModel`` or a task variant): its config
        mapped by :func:`hf_bert.config_from_hf_bert`, its weights loaded; ``task`` defaults
        to the variant's (:func:`hf_bert.task_of`), ``num_labels`` to its config's."""
        state_dict = bert.state_dict()
        has_pooler = any(key.endswith("pooler.dense.weight") for key in state_dict)
        config = hf_bert.config_from_hf_bert(bert.config, pooler=has_pooler)
        if task is None:
            task = hf_bert.task_of(bert)
        if task in ("sequence_classification", "token_classification"):
            kwargs.setdefault("num_labels", bert.config.num_labels)
        weight = next(bert.parameters())
        model = cls(config, task, device=weight.device, dtype=weight.dtype, **kwargs)
        model.load_state_dict(state_dict)
        return model


def _convert_hf_bert_keys(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: Hugging Face BERT keys under ``prefix`` become ours."""
    keys = [key for key in state_dict if key.startswith(prefix)]
    local = {key[len(prefix) :]: state_dict[key] for key in keys}
    if not hf_bert.is_hf_bert_state_dict(local):
        return
    converted = hf_bert.bert_state_dict_from_hf(local, fused_qkv=module.config.fused_qkv)
    for key in keys:
        del state_dict[key]
    state_dict.update({prefix + key: value for key, value in converted.items()})
