"""Which Hugging Face modules fastformer knows, and what each becomes. Data, not logic.

Modules are recognised by their exact class (defining module and name), never by a subclass
or a similar name: a subclass may compute something else. Each entry was written from the
family's modeling file in transformers 5.25 (read, not imported here):

| family | norms | feed-forward | attention | rotary |
|---|---|---|---|---|
| BERT, RoBERTa | LayerNorm | intermediate dense + act fused; output dense | yes | - |
| DistilBERT | LayerNorm | FFN lin1 + act fused; lin2 | yes | - |
| ALBERT | LayerNorm | layer ffn + act fused; ffn_output | yes | - |
| GPT-2 | LayerNorm | MLP c_fc (Conv1D) + act fused; c_proj | yes | - |
| GPT-NeoX | LayerNorm | dense_h_to_4h + act fused; dense_4h_to_h | yes | partial |
| LLaMA | LlamaRMSNorm | gate/up in one gated kernel; down | yes | yes |
| T5 | T5LayerNorm | wi + act fused, wo; gated-gelu: wi_0/wi_1 gated | yes (bias) | - |
| BART | LayerNorm | layer fc1 + act fused; fc2 | yes | - |

Any model: ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` anywhere, and ``nn.Linear`` followed
by a recognised activation inside an ``nn.Sequential`` (the only place where "the activation
takes the Linear's output and nothing else does" is known without reading a forward).
Attention goes through fastformer only for the families above (``ATTENTION_FAMILIES``,
``config.model_type``), whose attention calls were checked against the function's semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastformer.integrations import norms
from fastformer.integrations.rotary import GPTNeoXRotaryAttention, LlamaRotaryAttention

ATTENTION_FAMILIES = frozenset(
    {"bert", "roberta", "distilbert", "albert", "gpt2", "gpt_neox", "llama", "t5", "bart"}
)

TORCH_NORMS = "torch.nn.modules.normalization"
CONV1D = ("transformers.pytorch_utils", "Conv1D")
LINEAR = ("torch.nn.modules.linear", "Linear")


def modeling(family: str, name: str) -> tuple[str, str]:
    """The class key of ``name`` in transformers' modeling file of ``family``."""
    return (f"transformers.models.{family}.modeling_{family}", name)


def class_key(module) -> tuple[str, str]:
    cls = type(module)
    return (cls.__module__, cls.__qualname__)


@dataclass(frozen=True)
class LinearActRule:
    """In the parent, ``activation(linear(x))`` becomes one fused GEMM and ``output`` a plain
    fastformer GEMM. Either part may be absent (None)."""

    linear: str | None
    activation: str | None
    output: str | None


@dataclass(frozen=True)
class GatedRule:
    """The parent computes ``out(dropout(act(gate(x)) * up(x)))`` and is replaced whole."""

    gate: str
    up: str
    out: str
    activation: str
    dropout: str | None = None
    cast_to_out: bool = False  # T5 casts the hidden state to wo's dtype first


@dataclass(frozen=True)
class RotaryRule:
    """In a base model of this class, the modules of class ``attention`` rotate with the
    model's ``rotary`` module; ``mixin`` holds their new forward."""

    rotary: str
    attention: tuple[str, str]
    mixin: type


NORM_RULES = {
    (TORCH_NORMS, "LayerNorm"): norms.LayerNorm,
    (TORCH_NORMS, "RMSNorm"): norms.RMSNorm,
    modeling("llama", "LlamaRMSNorm"): norms.LlamaRMSNorm,
    modeling("t5", "T5LayerNorm"): norms.T5RMSNorm,
}

_BART_LAYER = LinearActRule("fc1", "activation_fn", "fc2")
MLP_RULES = {
    modeling("bert", "BertIntermediate"): LinearActRule("dense", "intermediate_act_fn", None),
    modeling("bert", "BertOutput"): LinearActRule(None, None, "dense"),
    modeling("bert", "BertPredictionHeadTransform"): LinearActRule(
        "dense", "transform_act_fn", None
    ),
    modeling("roberta", "RobertaIntermediate"): LinearActRule("dense", "intermediate_act_fn", None),
    modeling("roberta", "RobertaOutput"): LinearActRule(None, None, "dense"),
    modeling("distilbert", "FFN"): LinearActRule("lin1", "activation", "lin2"),
    modeling("albert", "AlbertLayer"): LinearActRule("ffn", "activation", "ffn_output"),
    modeling("gpt2", "GPT2MLP"): LinearActRule("c_fc", "act", "c_proj"),
    modeling("gpt_neox", "GPTNeoXMLP"): LinearActRule("dense_h_to_4h", "act", "dense_4h_to_h"),
    modeling("t5", "T5DenseActDense"): LinearActRule("wi", "act", "wo"),
    modeling("bart", "BartEncoderLayer"): _BART_LAYER,
    modeling("bart", "BartDecoderLayer"): _BART_LAYER,
    modeling("llama", "LlamaMLP"): GatedRule("gate_proj", "up_proj", "down_proj", "act_fn"),
    modeling("t5", "T5DenseGatedActDense"): GatedRule(
        "wi_0", "wi_1", "wo", "act", dropout="dropout", cast_to_out=True
    ),
}

ROTARY_RULES = {
    modeling("llama", "LlamaModel"): RotaryRule(
        "rotary_emb", modeling("llama", "LlamaAttention"), LlamaRotaryAttention
    ),
    modeling("gpt_neox", "GPTNeoXModel"): RotaryRule(
        "rotary_emb", modeling("gpt_neox", "GPTNeoXAttention"), GPTNeoXRotaryAttention
    ),
}
