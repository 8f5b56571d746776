"""The generation loop on tiny random-weight LLaMA and GPT-2 models (``fastformer.generation``).

- Greedy tokens through fastformer's cache path (after ``fastformer.optimize``: norms and
  feed-forward on the kernels too) equal eager transformers ``generate``, one prompt alone and
  a left- or right-padded batch of prompts of different lengths (each row as its own run).
- The logits of every step are within the tolerance rule of ``fastformer.testing`` against a
  float64 eager copy fed the same tokens (fp32 and bf16).
- Stop tokens end each row; a cache passed in is filled and reused; CUDA-graph capture gives
  the uncaptured tokens (GPU only).

The weights are drawn with ``INIT_RANGE`` (wider than the models' default), so the top two
logits of each step are far apart compared with rounding and greedy choices cannot flip on a
near tie; the test asserts that margin rather than assuming it. About 15 s on two CPU cores.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastformer
from fastformer import testing
from fastformer.generation import Generator, KVCache

transformers = pytest.importorskip("transformers")

VOCAB = 96
INIT_RANGE = 0.2
MAX_NEW = 5
PROMPT_LENGTHS = (3, 7, 5)
# Greedy must not hinge on a near tie: the reference's top-2 logit gap at every step must be
# this many times the largest logit error the tolerance rule allows.
MIN_MARGIN_OVER_BOUND = 4.0


def _llama_config(**overrides):
    fields = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=INIT_RANGE, pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip
    return transformers.LlamaConfig(**{**fields, **overrides})


def _gpt2_config(**overrides):
    fields = dict(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32,
        initializer_range=INIT_RANGE, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return transformers.GPT2Config(**{**fields, **overrides})


CONFIGS = {"llama": _llama_config, "gpt2": _gpt2_config}


def _model(family: str, dtype=torch.float32, **overrides):
    config = CONFIGS[family](**overrides)
    return transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _prompts(lengths=PROMPT_LENGTHS) -> list[torch.Tensor]:
    return [torch.randint(1, VOCAB, (n,)) for n in lengths]  # no pad id inside


def _padded(prompts, side: str):
    """(ids, mask) of ``prompts`` padded with token 0 on ``side``."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        cols = slice(width - len(p), width) if side == "left" else slice(0, len(p))
        ids[b, cols], mask[b, cols] = p, 1
    return ids, mask


def _eager_greedy(model, prompt: torch.Tensor, max_new: int = MAX_NEW) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=max_new,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def _step_logits(model, prompt, new_tokens) -> torch.Tensor:
    """(steps, vocab) logits of ``model`` after the prompt and each new token but the last."""
    sequence = torch.cat([prompt, torch.as_tensor(new_tokens[:-1], dtype=torch.long)])
    with torch.no_grad():
        logits = model(input_ids=sequence[None], use_cache=False).logits[0]  # (S, V)
    return logits[len(prompt) - 1 :]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_single_prompt_matches_transformers(family):
    eager = _model(family)
    fast = fastformer.optimize(copy.deepcopy(eager))
    (prompt,) = _prompts((6,))
    out = Generator(fast).generate(prompt[None], max_new_tokens=MAX_NEW)
    assert out.tokens.shape == (1, MAX_NEW) and out.new_tokens == [MAX_NEW]
    assert out.tokens[0].tolist() == _eager_greedy(eager, prompt)
    assert out.decode_steps == MAX_NEW - 1 and not out.captured


# (family, padding side, dtype): both sides in fp32; bf16 once per family (left, as tokenizers
# pad for generation).
PADDED_CASES = [
    *((family, side, torch.float32) for family in CONFIGS for side in ("left", "right")),
    *((family, "left", torch.bfloat16) for family in CONFIGS),
]


@pytest.mark.parametrize(
    "family, side, dtype",
    PADDED_CASES,
    ids=[f"{f}-{s}-{str(d).removeprefix('torch.')}" for f, s, d in PADDED_CASES],
)
def test_padded_batch_rows_match_their_own_runs_and_float64_logits(family, side, dtype):
    eager = _model(family, dtype)
    reference = copy.deepcopy(eager).double()
    fast = fastformer.optimize(copy.deepcopy(eager))
    prompts = _prompts()
    ids, mask = _padded(prompts, side)
    out = Generator(fast).generate(ids, mask, max_new_tokens=MAX_NEW, return_logits=True)
    assert out.prompt_lengths == list(PROMPT_LENGTHS)
    assert len(out.logits) == MAX_NEW
    for b, prompt in enumerate(prompts):
        tokens = out.tokens[b].tolist()
        if dtype == torch.float32:
            assert tokens == _eager_greedy(eager, prompt), f"row {b}"
        actual = torch.stack([step[b] for step in out.logits])  # (steps, V)
        expected = _step_logits(reference, prompt, tokens)
        result = testing.compare(
            f"row {b} logits", actual, expected, _step_logits(eager, prompt, tokens)
        )
        assert result.ok, str(result)
        if dtype == torch.float32:
            top2 = expected.topk(2, dim=-1).values
            margin = (top2[:, 0] - top2[:, 1]).min().item()
            assert margin > MIN_MARGIN_OVER_BOUND * result.bound, (margin, str(result))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stop_tokens_end_each_row(family):
    model = fastformer.optimize(_model(family))
    generator = Generator(model)
    ids, mask = _padded(_prompts(), "left")
    free = generator.generate(ids, mask, max_new_tokens=MAX_NEW).tokens  # (3, MAX_NEW)
    stop_step = 2
    stop = free[0, stop_step].item()  # row 0 stops at its third token
    stops_at = [
        next((t for t in range(MAX_NEW) if free[b, t].item() == stop), None)
        for b in range(free.shape[0])
    ]
    pad = next(t for t in range(VOCAB) if t != stop)
    out = generator.generate(
        ids, mask, max_new_tokens=MAX_NEW, stop_token_ids=[stop], pad_token_id=pad
    )
    for b, at in enumerate(stops_at):
        if at is None:
            assert out.tokens[b].tolist() == free[b].tolist() and out.new_tokens[b] == MAX_NEW
        else:
            assert out.tokens[b, : at + 1].tolist() == free[b, : at + 1].tolist()
            assert (out.tokens[b, at + 1 :] == pad).all(), out.tokens[b]
            assert out.new_tokens[b] == at + 1
    # Every row stopping ends the loop early: each row's first token as the stop set.
    firsts = free[:, 0].tolist()
    early = generator.generate(ids, mask, max_new_tokens=MAX_NEW, stop_token_ids=firsts)
    assert early.tokens.shape == (3, 1) and early.new_tokens == [1, 1, 1]
    assert early.decode_steps == 0


def test_given_cache_is_filled_and_reused():
    model = _model("llama")
    generator = Generator(model)
    prompts = _prompts((4, 6))
    ids, mask = _padded(prompts, "left")
    cache = generator.allocate_cache(batch=2, capacity=6 + MAX_NEW)
    first = generator.generate(ids, mask, max_new_tokens=MAX_NEW, cache=cache)
    # Every token but the last went through the cache.
    assert cache.lengths.tolist() == [n + MAX_NEW - 1 for n in (4, 6)]
    again = generator.generate(ids, mask, max_new_tokens=MAX_NEW, cache=cache)
    assert torch.equal(first.tokens, again.tokens)
    own = generator.generate(ids, mask, max_new_tokens=MAX_NEW)  # the generator's own cache
    assert torch.equal(first.tokens, own.tokens)


def test_one_shot_generate_function():
    model = _model("gpt2")
    (prompt,) = _prompts((4,))
    out = fastformer.generation.generate(model, prompt[None], max_new_tokens=3)
    assert out.tokens[0].tolist() == _eager_greedy(model, prompt, 3)
    assert out.tokens_per_second > 0 and out.decode_tokens_per_second > 0


def test_streamer_gets_prompt_then_each_step():
    class Recorder:
        def __init__(self):
            self.calls, self.ended = [], False

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.ended = True

    model = _model("llama")
    (prompt,) = _prompts((4,))
    recorder = Recorder()
    out = Generator(model).generate(prompt[None], max_new_tokens=3, streamer=recorder)
    assert recorder.calls[0] == [prompt.tolist()]
    assert recorder.calls[1:] == [[t] for t in out.tokens[0].tolist()]
    assert recorder.ended


def test_kv_cache_allocation():
    spec = fastformer.generation.CacheSpec(n_layers=3, n_kv_heads=2, head_dim=8)
    cache = KVCache.allocate(spec, 2, 10, dtype=torch.float16, device="cpu")
    assert cache.keys.shape == (3, 2, 2, 10, 8) and cache.values.shape == cache.keys.shape
    assert cache.dtype == torch.float16 and cache.capacity == 10 and cache.batch == 2
    assert cache.lengths.dtype == torch.int32 and cache.lengths.tolist() == [0, 0]
    assert not cache.keys.any()
    k, v = cache.layer(1)
    assert k.shape == (2, 2, 10, 8) and k.data_ptr() == cache.keys[1].data_ptr()


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_decode_gives_the_uncaptured_tokens(family, dtype):
    model = fastformer.optimize(_model(family, dtype).cuda())
    prompts = [p.cuda() for p in _prompts()]
    ids, mask = (t.cuda() for t in _padded(prompts, "left"))
    plain = Generator(model, cuda_graph=False).generate(ids, mask, max_new_tokens=8)
    graphed_generator = Generator(model, cuda_graph=True)
    graphed = graphed_generator.generate(ids, mask, max_new_tokens=8)
    assert graphed.captured and not plain.captured
    assert torch.equal(graphed.tokens, plain.tokens)
    again = graphed_generator.generate(ids, mask, max_new_tokens=8)  # replays the same graph
    assert again.captured and again.capture_seconds == 0.0
    assert torch.equal(again.tokens, plain.tokens)
