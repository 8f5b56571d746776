"""What ``fastformer profile`` runs: one op at a shape, a fastformer model from a preset, or a
Hugging Face transformers model (a local folder or a tiny configuration built here), each as a
:class:`Target` whose ``step`` runs one forward (and, when asked, one backward).

Inputs are random and made once; every step reuses them. Models run in eval mode (no dropout).
Hugging Face models are put on fastformer's kernels with ``fastformer.optimize`` when it can
take them (what it replaced is kept in the target's notes); otherwise they run eager, and the
notes say so. Models and tiny configurations are small on purpose where the Triton interpreter
runs them (the CPU), and the caller picks the sizes (``batch``, ``seq``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

OPS = ("layer_norm", "rms_norm", "attention", "linear", "gated_linear", "rotary")
# Each op's shape: what the numbers of --shape mean, and the default on a GPU and on the CPU
# (the interpreter: small, so that a step takes seconds, not minutes).
SHAPES = {
    "layer_norm": (("rows", "cols"), (8192, 4096), (64, 256)),
    "rms_norm": (("rows", "cols"), (8192, 4096), (64, 256)),
    "attention": (("batch", "heads", "seq", "head_dim"), (4, 16, 2048, 128), (1, 2, 64, 32)),
    "linear": (("M", "N", "K"), (8192, 4096, 4096), (64, 128, 64)),
    "gated_linear": (("M", "N", "K"), (8192, 4096, 4096), (64, 128, 64)),
    "rotary": (("batch", "seq", "heads", "head_dim"), (4, 2048, 32, 128), (1, 64, 4, 32)),
}
ROPE_BASE = 10000.0  # the rotary op's frequency base (LLaMA's)
# Tiny Hugging Face configurations, built in code (nothing is downloaded): small widths and two
# layers, enough to run every part of each family.
TINY = dict(vocab_size=1000, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, positions=256)
HF_TINY_NAMES = ("bert-tiny", "gpt2-tiny", "llama-tiny", "minilm")
# Field overrides that shrink any fastformer preset the same way (--tiny).
MODEL_TINY = dict(
    vocab_size=TINY["vocab_size"],
    hidden_size=TINY["hidden"],
    n_layers=TINY["layers"],
    n_heads=TINY["heads"],
    ffn_size=TINY["ffn"],
    max_positions=TINY["positions"],
)


@dataclass
class Target:
    """One step to profile. ``module``: the model whose submodules get named ranges, or None.
    ``notes``: lines for the report (what was optimized, what could not be)."""

    name: str
    step: Callable[[], object]
    module: torch.nn.Module | None = None
    notes: list[str] = field(default_factory=list)


def _backward_of(outputs) -> None:
    tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    loss = sum(t.float().sum() for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad)
    loss.backward()


def _stepper(forward: Callable[[], object], backward: bool) -> Callable[[], object]:
    if backward:
        return lambda: _backward_of(forward())

    def step():
        with torch.no_grad():
            return forward()

    return step


def default_shape(op: str, device: torch.device) -> tuple[int, ...]:
    _, gpu, cpu = SHAPES[op]
    return gpu if device.type == "cuda" else cpu


def op_target(op, shape, *, device, dtype, backward=False) -> Target:
    """One call of ``op`` at ``shape`` (see :data:`SHAPES`) on fresh random inputs."""
    import fastformer

    if op not in SHAPES:
        raise ValueError(f"op={op!r} is not one of {', '.join(SHAPES)}")
    names = SHAPES[op][0]
    shape = tuple(shape) if shape else default_shape(op, device)
    if len(shape) != len(names) or min(shape) <= 0:
        raise ValueError(f"--shape {' '.join(map(str, shape))} for {op}: expected positive "
                         f"{' '.join(names)}")  # fmt: skip

    def tensor(*size):
        return torch.randn(size, device=device, dtype=dtype, requires_grad=backward)

    if op in ("layer_norm", "rms_norm"):
        rows, cols = shape
        x, weight, bias = tensor(rows, cols), tensor(cols), tensor(cols)
        if op == "layer_norm":
            forward = lambda: fastformer.layer_norm(x, (cols,), weight, bias)  # noqa: E731
        else:
            forward = lambda: fastformer.rms_norm(x, (cols,), weight)  # noqa: E731
    elif op == "attention":
        batch, heads, seq, head_dim = shape
        q, k, v = (tensor(batch, heads, seq, head_dim) for _ in range(3))
        forward = lambda: fastformer.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    elif op in ("linear", "gated_linear"):
        m, n, k = shape
        x, w, w2, bias = tensor(m, k), tensor(n, k), tensor(n, k), tensor(n)
        if op == "linear":
            forward = lambda: fastformer.linear(x, w, bias, activation="gelu")  # noqa: E731
        else:
            forward = lambda: fastformer.gated_linear(x, w, w2, activation="silu")  # noqa: E731
    else:
        batch, seq, heads, head_dim = shape
        q, k = tensor(batch, seq, heads, head_dim), tensor(batch, seq, heads, head_dim)
        dims = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = 1.0 / ROPE_BASE ** (dims / head_dim)
        forward = lambda: fastformer.apply_rotary(q, k, inv_freq)  # noqa: E731
    label = ", ".join(f"{n}={s}" for n, s in zip(names, shape, strict=True))
    return Target(f"{op} ({label}) {str(dtype).removeprefix('torch.')}",
                  _stepper(forward, backward))  # fmt: skip


def _token_inputs(vocab_size: int, batch: int, seq: int, device) -> dict:
    ids = torch.randint(0, vocab_size, (batch, seq), device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _model_step(model, inputs: dict, backward: bool) -> Callable[[], object]:
    def forward():
        out = model(**inputs)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out[0]

    return _stepper(forward, backward)


def _hf_config(name: str):
    import transformers

    t = TINY
    if name == "bert-tiny":
        return transformers.BertConfig(
            vocab_size=t["vocab_size"], hidden_size=t["hidden"], num_hidden_layers=t["layers"],
            num_attention_heads=t["heads"], intermediate_size=t["ffn"],
            max_position_embeddings=t["positions"],
        )  # fmt: skip
    if name == "gpt2-tiny":
        return transformers.GPT2Config(
            vocab_size=t["vocab_size"], n_embd=t["hidden"], n_layer=t["layers"],
            n_head=t["heads"], n_inner=t["ffn"], n_positions=t["positions"],
        )  # fmt: skip
    return transformers.LlamaConfig(
        vocab_size=t["vocab_size"], hidden_size=t["hidden"], num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"], num_key_value_heads=t["kv_heads"],
        intermediate_size=t["ffn"], max_position_embeddings=t["positions"],
    )  # fmt: skip


def _optimized(model, notes: list[str]):
    """``fastformer.optimize(model)`` when it exists and takes the model; notes say what."""
    try:
        optimize = importlib.import_module("fastformer.integrations").optimize
    except (ImportError, AttributeError) as error:
        notes.append(f"fastformer.optimize is not available ({error}): the model runs eager")
        return model
    try:
        optimize(model)
    except ValueError as error:
        notes.append(f"fastformer.optimize left the model eager: {error}")
        return model
    report = getattr(model, "fastformer_report", None)
    if report is not None:
        notes += report.summary().splitlines()
    return model


def hf_target(name, *, device, dtype, batch, seq, backward=False, optimize=True) -> Target:
    """A transformers model: ``name`` is a local folder (AutoModel.from_pretrained), one of
    :data:`HF_TINY_NAMES` (a tiny config built here; "minilm" is the packaged
    all-MiniLM-L6-v2 when installed), optimized with ``fastformer.optimize``."""
    import transformers

    notes = []
    if name == "minilm":
        from fastformer.integrations.minilm import minilm_folder

        name = minilm_folder()
    if os.path.isdir(name):
        model = transformers.AutoModel.from_pretrained(name, attn_implementation="eager")
    elif name in HF_TINY_NAMES:
        config = _hf_config(name)
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
        notes.append(f"{name}: random weights, {TINY}")
    else:
        raise ValueError(f"--hf {name!r} is neither a folder nor one of {', '.join(HF_TINY_NAMES)}")
    model = model.to(device=device, dtype=dtype).eval()
    if optimize:
        model = _optimized(model, notes)
    inputs = _token_inputs(model.config.vocab_size, batch, seq, device)
    label = f"{type(model).__name__} (batch={batch}, seq={seq}) {str(dtype).removeprefix('torch.')}"
    return Target(label, _model_step(model, inputs, backward), model, notes)


def _parse_overrides(pairs) -> dict:
    overrides = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE")
        for convert in (int, float):
            try:
                overrides[key] = convert(text)
                break
            except ValueError:
                continue
        else:
            lowered = text.lower()
            overrides[key] = {"true": True, "false": False, "none": None}.get(lowered, text)
    return overrides


def model_target(preset, *, device, dtype, batch, seq, tiny=False, overrides=(), backward=False):
    """A ``fastformer.models.Transformer`` from ``preset`` (``--tiny`` shrinks it; ``--set
    FIELD=VALUE`` sets config fields)."""
    try:
        models = importlib.import_module("fastformer.models")
    except ImportError as error:
        raise NotImplementedError(f"fastformer.models is not available here ({error})") from error
    if preset not in models.PRESETS:
        raise ValueError(f"--model {preset!r} is not one of {', '.join(models.PRESETS)}")
    fields = dict(MODEL_TINY) if tiny else {}
    base = models.PRESETS[preset]()
    if tiny and base.n_kv_heads is not None:
        fields["n_kv_heads"] = TINY["kv_heads"]
    fields.update(_parse_overrides(overrides))
    unknown = set(fields) - {f.name for f in dataclasses.fields(base)}
    if unknown:
        raise ValueError(f"--set {sorted(unknown)[0]}: not a TransformerConfig field")
    config = models.TransformerConfig.from_preset(preset, **fields)
    model = models.Transformer(config).to(device=device, dtype=dtype).eval()
    inputs = _token_inputs(config.vocab_size, batch, seq, device)
    if config.is_encoder_decoder:
        inputs["decoder_input_ids"] = inputs["input_ids"]
    label = f"{preset}{' (tiny)' if tiny else ''} (batch={batch}, seq={seq}) " + str(
        dtype
    ).removeprefix("torch.")
    notes = (
        [f"config: {', '.join(f'{k}={v}' for k, v in sorted(fields.items()))}"] if fields else []
    )
    return Target(label, _model_step(model, inputs, backward), model, notes)
