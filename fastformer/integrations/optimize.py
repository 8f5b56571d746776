"""``fastformer.optimize(model)``: run a Hugging Face transformers model on fastformer's kernels.

In place, and reversible only by reloading: norms, feed-forward blocks and (LLaMA, GPT-NeoX)
rotary embeddings are replaced by modules that hold the same Parameter objects (nothing is
copied, state_dict keys and every parameter's storage are unchanged, training works), and
attention is switched to the ``"fastformer"`` implementation registered with transformers'
``AttentionInterface`` (``model.set_attn_implementation``). What was replaced and what stayed
eager, with the reason, is returned in an :class:`OptimizeReport` stored as
``model.fastformer_report`` and logged at INFO.

Which modules are recognised is the table in ``families``; what each replacement computes is
documented in ``norms``, ``mlp``, ``rotary`` and ``attention``. Calling ``optimize`` again is a
no-op (already replaced modules are recognised); switches that are False leave their part as it
is (nothing is reverted). A model with nothing to replace raises ValueError before any change.
"""

from __future__ import annotations

import logging

import torch

from fastformer.integrations.attention import ATTENTION_LIMITS, ATTENTION_NAME, register_attention
from fastformer.integrations.families import ATTENTION_FAMILIES
from fastformer.integrations.replace import plan_modules, untouched_counts
from fastformer.integrations.report import OptimizeReport

logger = logging.getLogger(__name__)

SWITCHES = ("attention", "norms", "mlp", "rotary")


def _is_pretrained(model) -> bool:
    return hasattr(model, "set_attn_implementation") and hasattr(model, "config")


def _submodel_configs(model: torch.nn.Module) -> list:
    """The config of every transformers (sub)model (T5's encoder and decoder have their own)."""
    return [m.config for m in model.modules() if _is_pretrained(m)]


def _plan_attention(model, wanted: bool):
    """(what the report says about attention, the action that switches it, or None)."""
    if not _is_pretrained(model):
        return "eager: not a transformers PreTrainedModel (no attention implementation)", None
    configs = _submodel_configs(model)
    if all(c._attn_implementation == ATTENTION_NAME for c in configs):
        return f"{ATTENTION_NAME} (already set)", None
    if not wanted:
        return f"{model.config._attn_implementation} (attention=False)", None
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ATTENTION_FAMILIES:
        return (
            f"{model.config._attn_implementation}: model_type {model_type!r} is not one of the "
            f"families checked with fastformer attention {sorted(ATTENTION_FAMILIES)}",
            None,
        )
    if not type(model)._can_set_attn_implementation():
        return (
            f"{model.config._attn_implementation}: {type(model).__name__} does not route its "
            "attention through transformers' AttentionInterface",
            None,
        )

    def apply() -> None:
        register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
        missed = [
            c.model_type
            for c in _submodel_configs(model)
            if c._attn_implementation != ATTENTION_NAME
        ]
        if missed:
            raise RuntimeError(
                f"set_attn_implementation({ATTENTION_NAME!r}) left submodels {missed} on another "
                "implementation"
            )

    return f"{ATTENTION_NAME} (transformers AttentionInterface)", apply


def optimize(
    model: torch.nn.Module,
    *,
    attention: bool = True,
    norms: bool = True,
    mlp: bool = True,
    rotary: bool = True,
) -> torch.nn.Module:
    """Run ``model`` on fastformer's kernels where they compute the same thing; in place.

    Args:
        model: a transformers ``PreTrainedModel`` (any ``torch.nn.Module`` gets the generic
            replacements: ``nn.LayerNorm``, ``nn.RMSNorm``, Linear + activation in a Sequential).
        attention: switch attention to fastformer's (supported families only).
        norms: replace LayerNorm / RMSNorm modules.
        mlp: fuse feed-forward blocks (Linear + activation epilogue, gated GEMMs).
        rotary: rotate q and k with fastformer's kernel (LLaMA, GPT-NeoX).
    Returns:
        ``model`` itself, with ``model.fastformer_report`` (an :class:`OptimizeReport`).
    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``, or a switch is not a bool.
        ValueError: nothing in ``model`` can run on fastformer (the model is left unchanged).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    switches = dict(attention=attention, norms=norms, mlp=mlp, rotary=rotary)
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name}={value!r} must be a bool")

    plan = plan_modules(model, norms=norms, mlp=mlp, rotary=rotary)
    attention_state, attention_action = _plan_attention(model, attention)
    already_attention = attention_state.startswith(f"{ATTENTION_NAME} (already")
    if not (plan.actions or plan.already or attention_action or already_attention):
        asked = [name for name, value in switches.items() if value] or ["nothing"]
        refused = "; ".join(f"{e.path} ({e.module}): {e.reason}" for e in plan.eager[:5])
        raise ValueError(
            f"fastformer.optimize found nothing to run on fastformer in {type(model).__name__} "
            f"(asked for: {', '.join(asked)}; attention: {attention_state}"
            f"{'; refused: ' + refused if refused else ''}); the model is unchanged"
        )

    for action in plan.actions:
        action.apply()
    if attention_action is not None:
        attention_action()

    uses_fastformer_attention = attention_action is not None or already_attention
    report = OptimizeReport(
        model=type(model).__name__,
        model_type=getattr(getattr(model, "config", None), "model_type", None),
        attention=attention_state,
        replaced=[action.replacement for action in plan.actions] + plan.already,
        eager=plan.eager,
        attention_limits=list(ATTENTION_LIMITS) if uses_fastformer_attention else [],
        untouched=untouched_counts(model),
    )
    model.fastformer_report = report
    logger.info("%s", report.summary())
    return model
