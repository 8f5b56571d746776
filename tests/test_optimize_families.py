"""``fastformer.optimize`` on every supported family, optimized vs eager, against float64.

Tiny random-weight models (two layers, hidden 32, short sequences, padding on the family's
side, no dropout so that a training-mode run is deterministic) are optimized and compared
with a deep copy running transformers' "eager" attention in the same dtype and with a float64
eager copy of the same (dtype-rounded) weights: the logits of every real token and the gradient
of every parameter, each with ``fastformer.testing.compare`` (error at most 3x eager's plus a
floor), in fp32 and bf16, in training mode; then the logits again in inference mode. The floor
scales with the problem's magnitude, as in ``fastformer.testing``: the largest reference value
among everything compared together (logits and gradients; the inference logits on their own,
so that gradients far larger than the logits do not widen the floor there). The family table
here (``FAMILIES``, ``build``, ``inputs``) is shared with the other optimize tests.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import fastformer
from fastformer import testing

transformers = pytest.importorskip("transformers")

VOCAB = 96
HIDDEN = 32
INNER = 64
LAYERS = 2
HEADS = 2
MAX_POSITIONS = 64
BATCH = 2
SEQ = 8
DECODER_SEQ = 6
PAD_COUNT = 3  # padding tokens in the second row
BIAS_STD = 0.1  # spread of the redrawn biases
NORM_WEIGHT_STD = 0.1  # spread of the redrawn norm weights around 1
NAN = float("nan")

T = transformers
_NO_DROPOUT_BERT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
_BERT_SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=INNER,
    max_position_embeddings=MAX_POSITIONS,
    **_NO_DROPOUT_BERT,
)


@dataclass(frozen=True)
class Family:
    """How to build a tiny model and feed it: ``padding`` is the side the family pads on."""

    build: Callable[[], torch.nn.Module]
    padding: str
    replaced: dict[str, int] = field(default_factory=dict)  # report.counts() after optimize
    encoder_decoder: bool = False


def _t5(**extra):
    config = T.T5Config(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=INNER, num_layers=LAYERS,
        num_heads=HEADS, dropout_rate=0.0, **extra,
    )  # fmt: skip
    return T.T5ForConditionalGeneration(config)


FAMILIES = {
    "bert": Family(
        lambda: T.BertForMaskedLM(T.BertConfig(**_BERT_SIZES)),
        "right",
        {
            "fastformer LayerNorm": 6,
            "fastformer LinearActivation(gelu)": 3,
            "fastformer LinearActivation": 2,
        },
    ),
    "roberta": Family(
        lambda: T.RobertaForMaskedLM(
            T.RobertaConfig(**{**_BERT_SIZES, "max_position_embeddings": MAX_POSITIONS + 2})
        ),
        "right",
        {
            "fastformer LayerNorm": 6,
            "fastformer LinearActivation(gelu)": 2,
            "fastformer LinearActivation": 2,
        },
    ),
    "distilbert": Family(
        lambda: T.DistilBertForMaskedLM(
            T.DistilBertConfig(
                vocab_size=VOCAB,
                dim=HIDDEN,
                n_layers=LAYERS,
                n_heads=HEADS,
                hidden_dim=INNER,
                max_position_embeddings=MAX_POSITIONS,
                dropout=0.0,
                attention_dropout=0.0,
            )  # fmt: skip
        ),
        "right",
        {
            "fastformer LayerNorm": 6,
            "fastformer LinearActivation(gelu)": 2,
            "fastformer LinearActivation": 2,
        },
    ),
    "albert": Family(
        lambda: T.AlbertForMaskedLM(
            T.AlbertConfig(**_BERT_SIZES, embedding_size=HIDDEN // 2, classifier_dropout_prob=0.0)
        ),
        "right",
        {
            "fastformer LayerNorm": 4,
            "fastformer LinearActivation(gelu_tanh)": 1,
            "fastformer LinearActivation": 1,
        },
    ),
    "gpt2": Family(
        lambda: T.GPT2LMHeadModel(
            T.GPT2Config(
                vocab_size=VOCAB,
                n_embd=HIDDEN,
                n_layer=LAYERS,
                n_head=HEADS,
                n_inner=INNER,
                n_positions=MAX_POSITIONS,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        ),
        "right",
        {
            "fastformer LayerNorm": 5,
            "fastformer Conv1DActivation(gelu_tanh)": 2,
            "fastformer Conv1DActivation": 2,
        },
    ),
    "gpt_neox": Family(
        lambda: T.GPTNeoXForCausalLM(
            T.GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=HEADS,
                intermediate_size=INNER,
                max_position_embeddings=MAX_POSITIONS,
                hidden_dropout=0.0,
                attention_dropout=0.0,
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        ),
        "left",
        {
            "fastformer rotary (GPTNeoXRotaryAttention)": 2,
            "fastformer LayerNorm": 5,
            "fastformer LinearActivation(gelu)": 2,
            "fastformer LinearActivation": 2,
        },
    ),
    "llama": Family(
        lambda: T.LlamaForCausalLM(
            T.LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                num_hidden_layers=LAYERS,
                num_attention_heads=2 * HEADS,
                num_key_value_heads=HEADS,
                intermediate_size=INNER,
                max_position_embeddings=MAX_POSITIONS,
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        ),
        "left",
        {
            "fastformer rotary (LlamaRotaryAttention)": 2,
            "fastformer GatedMLP(silu)": 2,
            "fastformer LlamaRMSNorm": 5,
        },
    ),
    "t5": Family(
        _t5,
        "right",
        {
            "fastformer T5RMSNorm": 12,
            "fastformer LinearActivation(relu)": 4,
            "fastformer LinearActivation": 4,
        },
        encoder_decoder=True,
    ),
    "t5-gated-gelu": Family(
        lambda: _t5(feed_forward_proj="gated-gelu"),
        "right",
        {"fastformer T5RMSNorm": 12, "fastformer GatedMLP(gelu_tanh)": 4},
        encoder_decoder=True,
    ),
    "bart": Family(
        lambda: T.BartForConditionalGeneration(
            T.BartConfig(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                encoder_layers=LAYERS,
                decoder_layers=LAYERS,
                encoder_attention_heads=HEADS,
                decoder_attention_heads=HEADS,
                encoder_ffn_dim=INNER,
                decoder_ffn_dim=INNER,
                max_position_embeddings=MAX_POSITIONS,
                dropout=0.0,
                attention_dropout=0.0,
                activation_dropout=0.0,
            )  # fmt: skip
        ),
        "right",
        {
            "fastformer LayerNorm": 12,
            "fastformer LinearActivation(gelu)": 4,
            "fastformer LinearActivation": 4,
        },
        encoder_decoder=True,
    ),
}


def redraw(model: torch.nn.Module) -> torch.nn.Module:
    """Weights at a scale where attention and activations do something (HF's init std 0.02
    gives near-uniform attention and near-linear activations, a weak test)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, param.shape[-1] ** -0.5)
            elif name.endswith("bias"):
                param.normal_(0.0, BIAS_STD)
            else:
                param.normal_(1.0, NORM_WEIGHT_STD)
    return model


def build(name: str) -> torch.nn.Module:
    return redraw(FAMILIES[name].build())


def inputs(name: str) -> tuple[dict, torch.Tensor]:
    """Model keyword arguments, and the (batch, seq) mask of logits rows that are real tokens."""
    family = FAMILIES[name]
    ids = torch.randint(3, VOCAB, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    if family.padding == "left":
        mask[1, :PAD_COUNT] = 0
    else:
        mask[1, SEQ - PAD_COUNT :] = 0
    kwargs = dict(input_ids=ids, attention_mask=mask)
    if family.encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(3, VOCAB, (BATCH, DECODER_SEQ))
        return kwargs, torch.ones(BATCH, DECODER_SEQ, dtype=torch.bool)
    return kwargs, mask.bool()


def reference_inputs(name: str, kwargs: dict) -> dict:
    """``kwargs`` for the float64 eager reference.

    LLaMA's and GPT-NeoX's eager attention take the softmax in fp32: transformers' float64 mask
    value (float64's min) becomes -inf there, and a left-padding row that sees no key becomes
    NaN (and its NaN reaches every gradient through 0 * NaN). The reference gets the same
    causal-and-padding mask as a 4-D float64 mask filled with fp32's min, which is what the
    fp32 eager run adds, so such rows stay finite.
    """
    if FAMILIES[name].padding != "left":
        return kwargs
    padding = kwargs["attention_mask"].bool()  # (B, S)
    seq = padding.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None, None] & padding[:, None, None, :]  # (B, 1, S, S)
    mask = torch.zeros(allowed.shape, dtype=torch.float64)
    return {**kwargs, "attention_mask": mask.masked_fill(~allowed, torch.finfo(torch.float32).min)}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _logits_and_grads(model, kwargs, grad_out):
    """The logits, and the gradient of ``sum(logits * grad_out)`` for every named parameter."""
    logits = model(**kwargs).logits
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(logits, params, grad_out.to(logits.dtype), allow_unused=True)
    return logits.detach(), dict(zip(names, grads, strict=True))


def _three_models(name: str, dtype: torch.dtype):
    """(optimized, eager in dtype, eager in float64), all from the same dtype-rounded weights."""
    base = build(name).to(dtype)
    eager = copy.deepcopy(base)
    eager.set_attn_implementation("eager")
    reference = copy.deepcopy(eager).double()
    return fastformer.optimize(base), eager, reference


def _compare_all(actual: dict, expected: dict, eager: dict) -> list[str]:
    """Every tensor through the tolerance rule, its floor scaled by the problem's magnitude
    (the largest finite reference value among all of them, as ``check_against_reference``
    takes it, not each tensor's own); returns the failures as text."""
    finite = [want[want.isfinite()] for want in expected.values() if want is not None]
    scale = max((want.abs().max().item() for want in finite if want.numel()), default=1.0)
    failures = []
    for key, want in expected.items():
        got, base = actual[key], eager[key]
        if want is None or got is None or base is None:
            if not (want is None and got is None and base is None):
                failures.append(f"{key}: gradient None in {(got is None, want is None)}")
            continue
        result = testing.compare(key, got, want, base, scale)
        if not result.ok:
            failures.append(str(result))
    return failures


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("name", FAMILIES)
def test_optimized_matches_eager(name, dtype):
    fast, eager, reference = _three_models(name, dtype)
    assert fast.fastformer_report.counts() == FAMILIES[name].replaced
    assert fast.fastformer_report.eager == []
    kwargs, real = inputs(name)
    # Only real tokens carry a gradient: padding rows that see no key differ by design.
    grad_out = torch.randn(*real.shape, VOCAB) * real[..., None]

    runs = {"fast": fast, "eager": eager, "reference": reference}
    results = {}
    for label, model in runs.items():
        model_kwargs = reference_inputs(name, kwargs) if label == "reference" else kwargs
        results[label] = _logits_and_grads(model.train(), model_kwargs, grad_out)
    (fast_logits, fast_grads), (eager_logits, eager_grads), (ref_logits, ref_grads) = (
        results["fast"], results["eager"], results["reference"]
    )  # fmt: skip
    failures = _compare_all(
        {"logits": fast_logits[real], **fast_grads},
        {"logits": ref_logits[real], **ref_grads},
        {"logits": eager_logits[real], **eager_grads},
    )
    assert all(g is not None for g in fast_grads.values()), "a parameter got no gradient"

    # Inference mode: same logits without autograd.
    with torch.no_grad():
        inference = {
            label: model.eval()(
                **(reference_inputs(name, kwargs) if label == "reference" else kwargs)
            ).logits[real]
            for label, model in runs.items()
        }
    failures += _compare_all(
        *({"eval logits": inference[label]} for label in ("fast", "reference", "eager"))
    )
    assert not failures, f"{name} {dtype}: " + "; ".join(failures)


def test_compare_all_scales_every_floor_by_the_largest_reference_value():
    """A gradient of magnitude 1 next to one of magnitude 100: its floor is 2 ulps of 100, not
    of 1 (its own magnitude gave t5-gated-gelu floors up to 30x tighter at seed 1); NaN
    reference values take no part in the scale."""
    eps = torch.finfo(torch.float32).eps
    small = torch.ones(4)
    expected = {"big": torch.full((4,), 100.0), "small": small, "nan": torch.tensor([NAN])}
    actual = {**expected, "small": small + 50 * eps}  # 50 ulps of 1, within 2 ulps of 100
    assert _compare_all(actual, expected, expected) == []
    del actual["big"], expected["big"]
    failures = _compare_all(actual, expected, expected)
    assert [failure.split(":")[0] for failure in failures] == ["small"]
