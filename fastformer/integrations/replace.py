"""Plan, then apply, the module replacements of :func:`fastformer.optimize`.

Planning walks the model once and builds a list of actions (closures) and a list of candidates
left eager with their reasons, changing nothing; applying runs the actions. So a model with
nothing to replace is refused before any change, and a refused candidate never leaves a
half-replaced block behind.

Every replacement shares the original Parameter objects (see ``norms`` and ``mlp``); a module
is replaced by assigning the new one to its parent's attribute (``setattr``), or, for rotary
attention, by giving the same module object a subclass (``rotary``). Modules with hooks
(accelerate's offloading ``_hf_hook``, user forward/backward hooks) or parametrizations are
left eager: replacing them would drop the hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.utils import parametrize

from fastformer.integrations import families
from fastformer.integrations.mlp import (
    Conv1DActivation,
    FastformerModule,
    GatedMLP,
    LinearActivation,
    activation_name,
)
from fastformer.integrations.report import Eager, Replacement
from fastformer.integrations.rotary import swap_to_rotary
from fastformer.nn import norm as ffnn

GATED_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
# Class-name endings of modules that look like norms or feed-forward blocks: when their class
# is not in the table they are listed as left eager, so an unknown family's report says so.
NORM_SUFFIXES = ("Norm", "LayerNorm", "RMSNorm")
MLP_SUFFIXES = ("MLP", "FeedForward", "FFN", "Intermediate")


@dataclass
class Action:
    replacement: Replacement
    apply: Callable[[], None]


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    eager: list[Eager] = field(default_factory=list)
    already: list[Replacement] = field(default_factory=list)

    def refuse(self, path: str, module: torch.nn.Module, reason: str) -> None:
        self.eager.append(Eager(path, type(module).__name__, reason))

    def add(self, path: str, module, replacement: str, apply: Callable[[], None]) -> None:
        self.actions.append(Action(Replacement(path, type(module).__name__, replacement), apply))


def is_fastformer(module: torch.nn.Module) -> bool:
    return isinstance(module, (FastformerModule, ffnn.LayerNorm, ffnn.RMSNorm))


def _hook_reason(module: torch.nn.Module) -> str | None:
    if hasattr(module, "_hf_hook"):
        return "has an accelerate hook (device map / offload); replacing it would drop the hook"
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
        return "has forward/backward hooks; replacing it would drop them"
    if parametrize.is_parametrized(module):
        return "has parametrizations (e.g. weight norm)"
    return None


def _child_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _setter(parent: torch.nn.Module, name: str, make: Callable[[], torch.nn.Module]):
    return lambda: setattr(parent, name, make())


def _plan_norm(plan: Plan, root, path: str, module, norm_cls) -> None:
    reason = _hook_reason(module)
    if reason:
        plan.refuse(path, module, reason)
        return
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path)
    plan.add(
        path,
        module,
        f"fastformer {norm_cls.__qualname__}",
        _setter(parent, name, lambda: norm_cls.from_module(module)),
    )


def _linear_kind(module) -> str | None:
    key = families.class_key(module)
    if key == families.LINEAR:
        return "linear"
    if key == families.CONV1D:
        return "conv1d"
    return None


def _fused(module, activation: str | None) -> torch.nn.Module:
    if _linear_kind(module) == "conv1d":
        return Conv1DActivation(module, activation)
    return LinearActivation.from_linear(module, activation)


def _fuse_setter(module, linear_name: str, act_name: str, fused: torch.nn.Module):
    def apply() -> None:
        setattr(module, linear_name, fused)
        setattr(module, act_name, torch.nn.Identity())

    return apply


def _plan_linear_act(plan: Plan, path: str, module, rule: families.LinearActRule) -> None:
    # A part whose Linear is already a fastformer module was done by an earlier call.
    parts = [name for name in (rule.linear, rule.output) if name]
    done = {name for name in parts if is_fastformer(getattr(module, name, None))}
    linear = rule.linear if rule.linear not in done else None
    output = rule.output if rule.output not in done else None
    names = [name for name in (linear, rule.activation if linear else None, output) if name]
    children = {name: getattr(module, name, None) for name in names}
    for name in (linear, output):
        if name and (children[name] is None or _linear_kind(children[name]) is None):
            plan.refuse(path, module, f"{name} is not an nn.Linear / Conv1D")
            return
    for name, child in children.items():
        reason = _hook_reason(child)
        if reason:
            plan.refuse(_child_path(path, name), child, reason)
            return
    if linear:
        activation = activation_name(children[rule.activation])
        if activation is None:
            kind = type(children[rule.activation]).__name__
            plan.refuse(path, module, f"activation {kind} has no fused form")
            return
        fused = _fused(children[linear], activation)
        plan.add(
            _child_path(path, linear),
            children[linear],
            f"fastformer {type(fused).__name__}({activation})",
            _fuse_setter(module, linear, rule.activation, fused),
        )
    if output:
        out = _fused(children[output], None)
        plan.add(
            _child_path(path, output),
            children[output],
            f"fastformer {type(out).__name__}",
            _setter(module, output, lambda: out),
        )


def _plan_gated(plan: Plan, root, path: str, module, rule: families.GatedRule) -> None:
    names = (rule.gate, rule.up, rule.out)
    children = [getattr(module, name, None) for name in names]
    if any(child is None or _linear_kind(child) != "linear" for child in children):
        plan.refuse(path, module, f"{names} are not all nn.Linear")
        return
    if children[0].bias is not None or children[1].bias is not None:
        plan.refuse(path, module, "gate/up projections have biases; the gated kernel has none")
        return
    activation = activation_name(getattr(module, rule.activation))
    if activation not in GATED_ACTIVATIONS:
        kind = type(getattr(module, rule.activation)).__name__
        plan.refuse(path, module, f"activation {kind} has no gated form")
        return
    for item in (module, children[2]):
        reason = _hook_reason(item)
        if reason:
            plan.refuse(path, item, reason)
            return
    dropout = getattr(module, rule.dropout) if rule.dropout else None

    def make() -> GatedMLP:
        out = LinearActivation.from_linear(children[2], None)
        extra = [dropout] if dropout is not None else []
        gated = GatedMLP(
            names, [children[0], children[1], out, *extra], activation, rule.cast_to_out
        )
        return gated.train(module.training)

    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path)
    plan.add(path, module, f"fastformer GatedMLP({activation})", _setter(parent, name, make))


def _plan_sequential(plan: Plan, path: str, module: torch.nn.Sequential) -> None:
    """Generic: Linear followed by a recognised activation, inside an nn.Sequential."""
    names = list(module._modules)
    for first, second in zip(names, names[1:], strict=False):
        linear, act = module._modules[first], module._modules[second]
        activation = activation_name(act) if act is not None else None
        if _linear_kind(linear) != "linear" or activation is None:
            continue
        if _hook_reason(linear) or _hook_reason(act):
            plan.refuse(_child_path(path, first), linear, _hook_reason(linear) or _hook_reason(act))
            continue
        plan.add(
            _child_path(path, first),
            linear,
            f"fastformer LinearActivation({activation})",
            _sequential_setter(module, first, second, linear, activation),
        )


def _sequential_setter(module, first, second, linear, activation):
    def apply() -> None:
        module._modules[first] = LinearActivation.from_linear(linear, activation)
        module._modules[second] = torch.nn.Identity()

    return apply


def _plan_rotary(plan: Plan, path: str, module, rule: families.RotaryRule) -> None:
    rotary = getattr(module, rule.rotary, None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        plan.refuse(path, module, f"no rotary module with inv_freq at .{rule.rotary}")
        return
    for sub_path, sub in module.named_modules(prefix=path):
        if families.class_key(sub) == rule.attention:
            plan.add(
                sub_path,
                sub,
                f"fastformer rotary ({rule.mixin.__name__})",
                lambda sub=sub: swap_to_rotary(sub, rotary, rule.mixin),
            )


def plan_modules(model: torch.nn.Module, *, norms: bool, mlp: bool, rotary: bool) -> Plan:
    """The replacements for ``model`` under these switches, and the candidates left eager."""
    plan = Plan()
    inside_fastformer: list[str] = []  # paths of modules already replaced (their parts are too)
    for path, module in model.named_modules():
        key = families.class_key(module)
        if any(path.startswith(f"{outer}.") for outer in inside_fastformer):
            continue
        if is_fastformer(module):
            plan.already.append(Replacement(path, type(module).__name__, "already fastformer"))
            inside_fastformer.append(path)
        elif norms and key in families.NORM_RULES:
            _plan_norm(plan, model, path, module, families.NORM_RULES[key])
        elif mlp and key in families.MLP_RULES:
            rule = families.MLP_RULES[key]
            if isinstance(rule, families.GatedRule):
                _plan_gated(plan, model, path, module, rule)
            else:
                _plan_linear_act(plan, path, module, rule)
        elif mlp and isinstance(module, torch.nn.Sequential):
            _plan_sequential(plan, path, module)
        elif (norms and type(module).__name__.endswith(NORM_SUFFIXES)) or (
            mlp and type(module).__name__.endswith(MLP_SUFFIXES)
        ):
            plan.refuse(path, module, "class not in fastformer's table (its forward is unknown)")
        if rotary and key in families.ROTARY_RULES:
            _plan_rotary(plan, path, module, families.ROTARY_RULES[key])
    return plan


def untouched_counts(model: torch.nn.Module) -> dict[str, int]:
    """Modules with their own Parameters that still run eager, counted per class name. A gated
    MLP's gate and up projections run inside its kernel, so they are not counted."""
    owned = {
        id(getattr(module, name))
        for module in model.modules()
        if isinstance(module, GatedMLP)
        for name in (module.gate_name, module.up_name)
    }
    counts: dict[str, int] = {}
    for module in model.modules():
        if id(module) in owned or is_fastformer(module):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        name = type(module).__name__
        counts[name] = counts.get(name, 0) + 1
    return counts
