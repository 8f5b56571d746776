"""Every rejection of the generation loop (``fastformer.generation``), each before any model or
kernel runs: unsupported models and settings, bad prompts and masks, stop and pad tokens, a
prompt longer than the cache or the model's positions, a cache of the wrong dtype, shape, device
or lengths, bad cache allocations and capture on the CPU. About 5 s on two CPU cores."""

from __future__ import annotations

import copy

import pytest
import torch

from fastformer.generation import CacheSpec, Generator, KVCache
from fastformer.generation import loop as generation_loop
from fastformer.generation.graphs import CapturedStep

transformers = pytest.importorskip("transformers")

VOCAB = 50
N_POSITIONS = 16


def _llama(**overrides):
    fields = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides})).eval()


def _gpt2(**overrides):
    fields = dict(
        vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=N_POSITIONS,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**fields, **overrides})).eval()


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture
def no_run(monkeypatch):
    """Make the generators' prefill and decode step fail the test if they run."""

    def launched(*args, **kwargs):
        raise AssertionError("the model ran before the input was refused")

    monkeypatch.setattr(generation_loop.Generator, "prefill", launched)
    monkeypatch.setattr(generation_loop.Generator, "decode_step", launched)


@pytest.fixture
def generator(llama, no_run):
    return Generator(llama)


def _ids(batch=2, seq=4):
    return torch.randint(1, VOCAB, (batch, seq))


# --- models and generator settings -------------------------------------------------------------


def test_unsupported_models():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        Generator("llama")
    bert = transformers.BertForMaskedLM(
        transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )  # fmt: skip
    )
    with pytest.raises(
        NotImplementedError, match="model_type='bert'.*supports \\['gpt2', 'llama'\\]"
    ):
        Generator(bert)
    with pytest.raises(NotImplementedError, match="has no lm_head"):
        Generator(_llama().model)
    dynamic = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(NotImplementedError, match="rope_type='dynamic'"):
        Generator(_llama(rope_parameters=dynamic))
    with pytest.raises(NotImplementedError, match="add_cross_attention=True"):
        Generator(_gpt2(add_cross_attention=True))


def test_model_dtype_and_cuda_graph_settings(llama):
    with pytest.raises(TypeError, match="dtype is torch.float64"):
        Generator(copy.deepcopy(llama).double())
    with pytest.raises(TypeError, match="cuda_graph='yes'"):
        Generator(llama, cuda_graph="yes")
    with pytest.raises(ValueError, match="cuda_graph=True needs a model on a CUDA device"):
        Generator(llama, cuda_graph=True)
    cache = KVCache.allocate(CacheSpec(1, 1, 8), 1, 4, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="CUDA-graph capture needs a CUDA cache"):
        CapturedStep(lambda tokens: tokens, cache)


def test_training_mode_is_refused(generator, llama):
    llama.train()
    try:
        with pytest.raises(ValueError, match="in training mode"):
            generator.generate(_ids(), max_new_tokens=2)
    finally:
        llama.eval()


# --- arguments of generate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_new_tokens=2.0), TypeError, "max_new_tokens=2.0 must be an int"),
        (dict(max_new_tokens=True), TypeError, "max_new_tokens=True must be an int"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens=0; expected at least 1"),
        (dict(sampling={"temperature": 1}), TypeError, "sampling must be a SamplingConfig"),
        (dict(stop_token_ids="2"), TypeError, "stop_token_ids='2'"),
        (dict(stop_token_ids=[2, 3.0]), TypeError, r"stop_token_ids=\[2, 3.0\]"),
        (dict(stop_token_ids=[VOCAB]), ValueError, f"stop_token_ids holds {VOCAB}"),
        (dict(stop_token_ids=-1), ValueError, "stop_token_ids holds -1"),
        (dict(pad_token_id=VOCAB + 3), ValueError, f"pad_token_id holds {VOCAB + 3}"),
        (dict(pad_token_id=1.5), ValueError, "pad_token_id holds 1.5"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else None,
)
def test_generate_argument_rejections(generator, kwargs, error, match):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(error, match=match):
        generator.generate(_ids(), **kwargs)


def test_prompt_rejections(generator):
    ids = _ids()
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor, got list"):
        generator.generate(ids.tolist(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids.shape=\(4,\)"):
        generator.generate(ids[0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids.shape=\(2, 0\)"):
        generator.generate(ids[:, :0], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids.shape=\(0, 4\)"):
        generator.generate(ids[:0], max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids.dtype=torch.float32"):
        generator.generate(ids.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match="input_ids is on meta"):
        generator.generate(ids.to("meta"), max_new_tokens=2)
    bad = ids.clone()
    bad[1, 2] = VOCAB
    with pytest.raises(ValueError, match=rf"input_ids\[1, 2\]={VOCAB}; the vocabulary has {VOCAB}"):
        generator.generate(bad, max_new_tokens=2)
    bad[1, 2] = -3
    with pytest.raises(ValueError, match=r"input_ids\[1, 2\]=-3"):
        generator.generate(bad, max_new_tokens=2)


def test_out_of_vocabulary_ids_under_padding_are_ignored(llama):
    ids, mask = _ids(), torch.ones(2, 4, dtype=torch.long)
    ids[0, 0], mask[0, 0] = -100, 0  # a pad id outside the vocabulary, masked out
    out = Generator(llama).generate(ids, mask, max_new_tokens=1)
    assert out.prompt_lengths == [3, 4]


def test_attention_mask_rejections(generator):
    ids = _ids()
    ones = torch.ones_like(ids)
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor, got list"):
        generator.generate(ids, ones.tolist(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"attention_mask.shape=\(2, 3\)"):
        generator.generate(ids, ones[:, :3], max_new_tokens=2)
    with pytest.raises(TypeError, match="attention_mask.dtype=torch.float32"):
        generator.generate(ids, ones.float(), max_new_tokens=2)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        generator.generate(ids, ones * 2, max_new_tokens=2)
    empty = ones.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="prompt row 1 is empty"):
        generator.generate(ids, empty, max_new_tokens=2)
    holes = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    with pytest.raises(ValueError, match="prompt row 1 has holes"):
        generator.generate(ids, holes, max_new_tokens=2)
    padded_both_sides = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]])
    with pytest.raises(ValueError, match="prompt row 1 has holes"):
        generator.generate(ids, padded_both_sides, max_new_tokens=2)


def test_prompt_longer_than_the_positions_of_a_learned_position_model(no_run):
    generator = Generator(_gpt2())
    with pytest.raises(
        ValueError,
        match=f"= {N_POSITIONS + 1} positions; the model's learned positions stop at {N_POSITIONS}",
    ):
        generator.generate(_ids(1, N_POSITIONS - 2), max_new_tokens=3)


# --- caches ------------------------------------------------------------------------------------


def test_prompt_longer_than_the_cache(generator):
    cache = generator.allocate_cache(batch=2, capacity=6)
    with pytest.raises(ValueError, match="= 7 positions; the cache holds 6 per row"):
        generator.generate(_ids(2, 5), max_new_tokens=2, cache=cache)
    with pytest.raises(ValueError, match="= 10 positions; the cache holds 6 per row"):
        generator.generate(_ids(2, 9), max_new_tokens=1, cache=cache)


def test_cache_of_the_wrong_kind(generator, llama):
    spec = generator.family.spec
    good = generator.allocate_cache(batch=2, capacity=8)
    with pytest.raises(TypeError, match="cache must be a KVCache, got tuple"):
        generator.generate(_ids(), max_new_tokens=2, cache=(good.keys, good.values))
    half = KVCache.allocate(spec, 2, 8, dtype=torch.float16, device="cpu")
    with pytest.raises(
        TypeError, match=r"cache.keys.dtype=torch.float16; the model computes in torch.float32"
    ):
        generator.generate(_ids(), max_new_tokens=2, cache=half)
    wrong_batch = generator.allocate_cache(batch=3, capacity=8)
    with pytest.raises(
        ValueError, match=r"cache.keys.shape=\(2, 3, 2, 8, 8\); expected \(2, 2, 2, 8, 8\)"
    ):
        generator.generate(_ids(), max_new_tokens=2, cache=wrong_batch)
    for other in (CacheSpec(3, 2, 8), CacheSpec(2, 4, 8), CacheSpec(2, 2, 16)):
        cache = KVCache.allocate(other, 2, 8, dtype=torch.float32, device="cpu")
        with pytest.raises(ValueError, match="cache.keys.shape="):
            generator.generate(_ids(), max_new_tokens=2, cache=cache)
    flat = KVCache(good.keys.flatten(0, 1), good.values, good.lengths)
    with pytest.raises(ValueError, match=r"cache.keys.shape=\(4, 2, 8, 8\)"):
        generator.generate(_ids(), max_new_tokens=2, cache=flat)
    values_off = KVCache(good.keys, good.values[:, :, :, :4], good.lengths)
    with pytest.raises(ValueError, match=r"cache.values.shape=\(2, 2, 2, 4, 8\)"):
        generator.generate(_ids(), max_new_tokens=2, cache=values_off)
    not_tensor = KVCache(good.keys, good.values.tolist(), good.lengths)
    with pytest.raises(TypeError, match="cache.values must be a torch.Tensor, got list"):
        generator.generate(_ids(), max_new_tokens=2, cache=not_tensor)
    meta = KVCache.allocate(spec, 2, 8, dtype=torch.float32, device="meta")
    with pytest.raises(ValueError, match="cache.keys is on meta"):
        generator.generate(_ids(), max_new_tokens=2, cache=meta)
    long_lengths = KVCache(good.keys, good.values, good.lengths.long())
    with pytest.raises(TypeError, match="cache.lengths must be an int32 tensor, got torch.int64"):
        generator.generate(_ids(), max_new_tokens=2, cache=long_lengths)
    short_lengths = KVCache(good.keys, good.values, good.lengths[:1])
    with pytest.raises(ValueError, match=r"cache.lengths.shape=\(1,\)"):
        generator.generate(_ids(), max_new_tokens=2, cache=short_lengths)


def test_cache_allocation_rejections():
    spec = CacheSpec(2, 2, 8)
    with pytest.raises(TypeError, match="batch=2.0 must be an int"):
        KVCache.allocate(spec, 2.0, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(TypeError, match="capacity=True must be an int"):
        KVCache.allocate(spec, 2, True, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="batch=0; expected at least 1"):
        KVCache.allocate(spec, 0, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="capacity=-1; expected at least 1"):
        KVCache.allocate(spec, 1, -1, dtype=torch.float32, device="cpu")
    with pytest.raises(TypeError, match="dtype=torch.float64"):
        KVCache.allocate(spec, 1, 8, dtype=torch.float64, device="cpu")
