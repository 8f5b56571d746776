"""Benchmark suites and the one runner they share.

``runner`` checks and times kernel cases against named providers, ``model_runner`` whole
models (forward latency and training step), ``generation`` decode steps and prefill of
transformers LLaMA models (tokens per second); ``counts`` holds the byte and FLOP formulas;
``device`` the timer, peak memory, the environment record and the measured peaks; ``check`` the
correctness gate; ``external`` the optional flash-attn and Liger providers; ``autotune`` reads
the autotuner's choices; ``report`` turns results into a text table, CSV, JSON and Markdown;
``plot`` draws them; ``targets`` reads the performance targets off the rows; ``suites`` names
the suites: per op (``norm``, ``attention``, ``rotary``, ``linear``, ``decode``: decode
attention and the KV-cache append) and ``models``; ``command`` is ``fastformer bench``.
Importing a suite imports fastformer's kernels: on a machine without a GPU set
``TRITON_INTERPRET=1`` first (the command line does).
"""
