"""Benchmark suites and the one runner they share.

``runner`` checks and times kernel cases against named providers, ``model_runner`` whole
models (forward latency and training step); ``counts`` holds the byte and FLOP formulas;
``device`` the timer, peak memory, the environment record and the measured peaks; ``check`` the
correctness gate; ``external`` the optional flash-attn and Liger providers; ``autotune`` reads
the autotuner's choices; ``report`` turns results into a text table, CSV, JSON and Markdown;
``plot`` draws them; ``suites`` names the suites: per op (``norm``, ``attention``, ``rotary``,
``linear``) and ``models``; ``command`` is ``fastformer bench``. Importing a suite imports
fastformer's kernels: on a machine without a GPU set ``TRITON_INTERPRET=1`` first (the command
line does).
"""
