"""Transformers built from a config: encoder, decoder, encoder-decoder, with task heads.

``TransformerConfig`` (and its presets) describes a model; ``Transformer(config, task)`` builds
it from :mod:`fastformer.nn` parts; :mod:`fastformer.models.hf_bert` maps Hugging Face BERT
configs and state_dicts onto it.
"""

from fastformer.models.config import PRESETS, TransformerConfig
from fastformer.models.hf_bert import bert_state_dict_from_hf, config_from_hf_bert
from fastformer.models.transformer import (
    TASKS,
    Transformer,
    TransformerOutput,
    TransformerStack,
)

__all__ = ["TransformerConfig", "PRESETS", "Transformer", "TransformerOutput", "TransformerStack"]
__all__ += ["TASKS", "bert_state_dict_from_hf", "config_from_hf_bert"]
