"""Sampling (``fastformer.generation.sampling``) and sampling through the generation loop.

- top-k and top-p filters against a direct computation (a Python loop over the sorted
  probabilities) and against transformers' own logits warpers, on fixed logits with ties and
  mass boundaries placed on purpose;
- a seed gives the same tokens (sampler and loop), another seed other tokens, and the global
  RNG is left alone; top-k=1 sampling equals greedy; draws follow the filtered distribution;
- every rejection of SamplingConfig, the filters and Sampler. About 5 s on two CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastformer
from fastformer.generation import Generator, Sampler, SamplingConfig, filter_top_k, filter_top_p

transformers = pytest.importorskip("transformers")

VOCAB = 64
DRAWS = 20000
# Largest allowed gap between empirical and true probability over DRAWS draws (about 5 sigma
# of the worst case p=0.5: 5 * sqrt(0.25 / 20000) = 0.018).
FREQUENCY_TOLERANCE = 0.02


def _direct_top_p_keep(row: torch.Tensor, top_p: float) -> set[int]:
    """Tokens kept by top-p, computed token by token: most likely first, a token is kept while
    the mass of the tokens kept before it is below ``top_p``."""
    probs = torch.softmax(row.double(), dim=-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        if kept and mass >= top_p:
            break
        kept.add(i)
        mass += probs[i]
    return kept


def _kept(filtered: torch.Tensor) -> list[set[int]]:
    return [set(torch.isfinite(row).nonzero().flatten().tolist()) for row in filtered]


def test_top_p_matches_a_direct_computation_and_transformers():
    # Row 0: probabilities 0.5, 0.3, 0.2 and five of zero;
    # row 1: random; row 2: one dominant token.
    fixed = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    rows = torch.full((3, 8), -1e4)
    rows[0, [5, 1, 3]] = fixed
    rows[1] = torch.randn(8) * 2
    rows[2] = torch.tensor([9.0, 0, 0, 0, 0, 0, 0, 0])
    for top_p in (0.1, 0.45, 0.6, 0.75, 0.9, 0.99):
        ours = _kept(filter_top_p(rows, top_p))
        assert ours == [_direct_top_p_keep(row, top_p) for row in rows], top_p
        warper = transformers.TopPLogitsWarper(top_p)
        theirs = _kept(warper(None, rows.clone()))
        assert ours == theirs, top_p
    # 0.49 is reached by the first token (0.5) alone; 0.51 needs the second; 1.0 keeps all,
    # even tokens of zero probability.
    assert _kept(filter_top_p(rows[:1], 0.49)) == [{5}]
    assert _kept(filter_top_p(rows[:1], 0.51)) == [{5, 1}]
    assert _kept(filter_top_p(rows[:1], 1.0)) == [set(range(8))]


def test_top_k_matches_a_direct_computation_and_transformers():
    logits = torch.randn(4, VOCAB)
    logits[0, [3, 9]] = 10.0  # a tie at the top
    logits[1, [4, 7, 11]] = torch.tensor([5.0, 4.0, 4.0])  # a tie at the 2nd value
    for k in (1, 2, 5, VOCAB, VOCAB + 10):
        ours = _kept(filter_top_k(logits, k))
        direct = []
        for row in logits.tolist():
            kth = sorted(row, reverse=True)[min(k, VOCAB) - 1]
            direct.append({i for i, x in enumerate(row) if x >= kth})
        assert ours == direct, k
        assert ours == _kept(transformers.TopKLogitsWarper(min(k, VOCAB))(None, logits.clone()))
    assert _kept(filter_top_k(logits, 1))[0] == {3, 9}
    assert _kept(filter_top_k(logits, 2))[1] == {4, 7, 11}


def test_filters_do_not_write_their_input():
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    filter_top_k(logits, 3)
    filter_top_p(logits, 0.5)
    Sampler(SamplingConfig(temperature=0.7, top_k=5, top_p=0.9, seed=1), "cpu")(logits)
    assert torch.equal(logits, before)


def test_scores_apply_temperature_then_top_k_then_top_p():
    logits = torch.randn(3, VOCAB)
    config = SamplingConfig(temperature=0.5, top_k=10, top_p=0.8, seed=0)
    expected = filter_top_p(filter_top_k(logits / 0.5, 10), 0.8)
    assert torch.equal(Sampler(config, "cpu").scores(logits), expected)


def test_same_seed_same_tokens_and_global_rng_untouched():
    logits = torch.randn(4, VOCAB)
    config = SamplingConfig(temperature=1.0, seed=1234)
    state = torch.get_rng_state()
    first = Sampler(config, "cpu")
    draws = [first(logits) for _ in range(5)]
    second = Sampler(config, "cpu")
    assert all(torch.equal(a, second(logits)) for a in draws)
    assert torch.equal(torch.get_rng_state(), state)
    other = Sampler(SamplingConfig(temperature=1.0, seed=4321), "cpu")
    assert any(not torch.equal(a, other(logits)) for a in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # the stream advances


def test_draws_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]])
    config = SamplingConfig(temperature=0.8, top_k=4, top_p=0.9, seed=7)
    sampler = Sampler(config, "cpu")
    probs = torch.softmax(sampler.scores(logits), dim=-1)[0]
    draws = sampler(logits.expand(DRAWS, -1))
    counts = torch.bincount(draws, minlength=logits.shape[1]).double() / DRAWS
    assert counts[probs == 0].sum() == 0, counts  # nothing outside the filters
    assert (counts - probs).abs().max() <= FREQUENCY_TOLERANCE, (counts, probs)


def test_greedy_is_argmax_and_top_k_one_equals_greedy():
    logits = torch.randn(5, VOCAB)
    greedy = Sampler(SamplingConfig(), "cpu")(logits)
    assert torch.equal(greedy, logits.argmax(-1))
    top1 = Sampler(SamplingConfig(temperature=1.7, top_k=1, seed=3), "cpu")
    assert all(torch.equal(top1(logits), greedy) for _ in range(10))


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def test_loop_sampling_is_seeded_and_top_k_one_is_greedy():
    generator = Generator(_tiny_llama())
    ids = torch.randint(1, VOCAB, (2, 5))
    run = dict(max_new_tokens=6)
    seeded = SamplingConfig(temperature=1.0, seed=11)
    first = generator.generate(ids, sampling=seeded, **run).tokens
    second = generator.generate(ids, sampling=seeded, **run).tokens
    assert torch.equal(first, second)
    others = [
        generator.generate(ids, sampling=SamplingConfig(temperature=1.0, seed=s), **run).tokens
        for s in (12, 13)
    ]
    assert any(not torch.equal(first, o) for o in others)
    greedy = generator.generate(ids, **run).tokens
    top1 = generator.generate(ids, sampling=SamplingConfig(temperature=2.0, top_k=1, seed=5), **run)
    assert torch.equal(top1.tokens, greedy)


BAD_CONFIGS = [
    (dict(temperature="1"), TypeError, "temperature='1'"),
    (dict(temperature=True), TypeError, "temperature=True"),
    (dict(temperature=-0.5), ValueError, "temperature=-0.5"),
    (dict(temperature=math.nan), ValueError, "temperature=nan"),
    (dict(temperature=math.inf), ValueError, "temperature=inf"),
    (dict(temperature=1.0, top_k=2.5), TypeError, "top_k=2.5"),
    (dict(temperature=1.0, top_k=0), ValueError, "top_k=0"),
    (dict(temperature=1.0, top_p="0.9"), TypeError, "top_p='0.9'"),
    (dict(temperature=1.0, top_p=0.0), ValueError, "top_p=0.0"),
    (dict(temperature=1.0, top_p=1.5), ValueError, "top_p=1.5"),
    (dict(temperature=1.0, seed=1.0), TypeError, "seed=1.0"),
    (dict(temperature=1.0, seed=-1), ValueError, "seed=-1"),
    (dict(top_k=5), ValueError, "no effect with temperature=0"),
    (dict(top_p=0.9), ValueError, "no effect with temperature=0"),
]


@pytest.mark.parametrize(
    "fields, error, match", BAD_CONFIGS, ids=[m for _, _, m in BAD_CONFIGS]
)  # fmt: skip
def test_sampling_config_rejections(fields, error, match):
    with pytest.raises(error, match=match.replace("(", r"\(").replace(".", r"\.")):
        SamplingConfig(**fields)


def test_filter_and_sampler_rejections():
    logits = torch.randn(2, VOCAB)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        filter_top_k([[1.0]], 1)
    with pytest.raises(ValueError, match=r"logits.shape=\(64,\)"):
        filter_top_p(logits[0], 0.5)
    with pytest.raises(ValueError, match=r"logits.shape=\(2, 0\)"):
        filter_top_p(logits[:, :0], 0.5)
    with pytest.raises(TypeError, match="logits.dtype=torch.int64"):
        filter_top_k(logits.long(), 1)
    with pytest.raises(ValueError, match="top_k=0"):
        filter_top_k(logits, 0)
    with pytest.raises(ValueError, match="top_p=0"):
        filter_top_p(logits, 0)
    with pytest.raises(ValueError, match="top_p=1.2"):
        filter_top_p(logits, 1.2)
    with pytest.raises(TypeError, match="config must be a SamplingConfig"):
        Sampler({"temperature": 1.0}, "cpu")
    with pytest.raises(ValueError, match=r"logits.shape=\(64,\)"):
        Sampler(SamplingConfig(), "cpu")(logits[0])


def test_generation_package_is_exposed():
    assert fastformer.generation.SamplingConfig is SamplingConfig
