"""Hugging Face BERT into fastformer's :class:`~fastformer.models.Transformer`: config and weights.

How: a key conversion, not mirrored names. fastformer's modules keep their own names (one
fused ``qkv_proj`` per layer where BERT has ``query``, ``key`` and ``value``), and
:func:`bert_state_dict_from_hf` maps a BERT state_dict onto them: q/k/v weights and biases are
concatenated (or renamed for ``fused_qkv=False``), the other keys renamed, the ``bert.`` prefix
of the task variants dropped, non-persistent buffers that older checkpoints saved
(``embeddings.position_ids``, ``embeddings.token_type_ids``) dropped. Keys it does not know are
passed through unchanged, so ``load_state_dict`` reports them as unexpected instead of hiding
them. The Transformer registers a load_state_dict pre-hook that applies this whenever the keys
look like BERT's, so ``model.load_state_dict(bert.state_dict())`` works as it is.

Covered: ``BertModel`` (with or without its pooler), ``BertForSequenceClassification``,
``BertForTokenClassification``, ``BertForMaskedLM``. Not covered (NotImplementedError from
:func:`config_from_hf_bert`): relative position embeddings, BERT as a decoder
(``is_decoder``/``add_cross_attention``). A one-label sequence classifier is a regression in
transformers (MSE loss); fastformer's head computes the same logits, its loss is cross-entropy.
"""

from __future__ import annotations

import re

import torch

from fastformer.models.config import TransformerConfig

# BERT key (without the leading "bert.") -> fastformer key, for the parts outside the layers.
_TOP_LEVEL = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler.dense",
    "classifier": "head.classifier",
    "cls.predictions.transform.dense": "head.dense",
    "cls.predictions.transform.LayerNorm": "head.norm",
    "cls.predictions.decoder": "head.decoder",
}
# Inside encoder.layer.<i>.
_LAYER_PARTS = {
    "attention.output.dense": "self_attn.o_proj",
    "attention.output.LayerNorm": "self_attn_norm",
    "intermediate.dense": "ffn.c_fc",
    "output.dense": "ffn.c_proj",
    "output.LayerNorm": "ffn_norm",
}
_QKV = ("query", "key", "value")
_SEPARATE = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}
_DROPPED = ("embeddings.position_ids", "embeddings.token_type_ids")
_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")
_TASKS = {
    "BertForSequenceClassification": "sequence_classification",
    "BertForTokenClassification": "token_classification",
    "BertForMaskedLM": "lm",
}


def is_hf_bert_state_dict(state_dict) -> bool:
    """Whether the keys are Hugging Face BERT's (BertModel or a ``bert.``-prefixed variant)."""
    return any(
        key.startswith(("encoder.layer.", "bert.", "embeddings.LayerNorm.")) for key in state_dict
    )


def bert_state_dict_from_hf(state_dict, *, fused_qkv: bool = True) -> dict:
    """A Hugging Face BERT state_dict with fastformer's keys (see the module docstring).

    ``fused_qkv`` must match the target model's config. The input is not modified; tensors
    that are only renamed are shared, the fused q/k/v ones are new.
    """
    out, qkv = {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("bert.")
        if key in _DROPPED:
            continue
        if key == "cls.predictions.bias":  # the decoder's bias, saved under both names
            out["head.decoder.bias"] = value
            continue
        match = _LAYER_KEY.fullmatch(key)
        if match:
            index, part, kind = match.groups()
            prefix = f"encoder.layers.{index}"
            name = part.removeprefix("attention.self.")
            if part.startswith("attention.self.") and name in _QKV:
                if fused_qkv:
                    qkv.setdefault((prefix, kind), {})[name] = value
                else:
                    out[f"{prefix}.self_attn.{_SEPARATE[name]}.{kind}"] = value
                continue
            if part in _LAYER_PARTS:
                out[f"{prefix}.{_LAYER_PARTS[part]}.{kind}"] = value
                continue
        module, _, kind = key.rpartition(".")
        if module in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[module]}.{kind}"] = value
            continue
        out[key] = value  # unknown: left for load_state_dict to report
    for (prefix, kind), parts in qkv.items():
        if len(parts) != len(_QKV):
            missing = [name for name in _QKV if name not in parts]
            raise ValueError(f"{prefix} {kind}: the BERT state_dict lacks attention.self.{missing}")
        out[f"{prefix}.self_attn.qkv_proj.{kind}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out


def config_from_hf_bert(bert_config, **overrides) -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``transformers.BertConfig`` (any object with its
    attributes), with ``overrides`` replacing fields (e.g. ``pooler=False``)."""
    position_kind = getattr(bert_config, "position_embedding_type", "absolute") or "absolute"
    if position_kind != "absolute":
        raise NotImplementedError(
            f"BertConfig.position_embedding_type={position_kind!r}; only 'absolute' is supported"
        )
    if getattr(bert_config, "is_decoder", False) or getattr(
        bert_config, "add_cross_attention", False
    ):
        raise NotImplementedError("BERT as a decoder (is_decoder/add_cross_attention)")
    hidden_act = bert_config.hidden_act
    if not isinstance(hidden_act, str):
        raise ValueError(f"BertConfig.hidden_act={hidden_act!r}; expected an activation name")
    fields = dict(
        architecture="encoder",
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        n_layers=bert_config.num_hidden_layers,
        n_heads=bert_config.num_attention_heads,
        ffn_size=bert_config.intermediate_size,
        activation=hidden_act,
        norm="layer",
        norm_first=False,
        norm_eps=bert_config.layer_norm_eps,
        embedding_norm=True,
        position="learned",
        max_positions=bert_config.max_position_embeddings,
        type_vocab_size=bert_config.type_vocab_size,
        dropout=bert_config.hidden_dropout_prob,
        attention_dropout=bert_config.attention_probs_dropout_prob,
        classifier_dropout=getattr(bert_config, "classifier_dropout", None),
        tie_embeddings=getattr(bert_config, "tie_word_embeddings", True),
        pooler=True,
        lm_head_transform=True,
        lm_head_bias=True,
        pad_token_id=bert_config.pad_token_id,
        initializer_range=bert_config.initializer_range,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def task_of(model: torch.nn.Module) -> str | None:
    """fastformer's task name for a Hugging Face BERT class (None for ``BertModel``)."""
    return _TASKS.get(type(model).__name__)
