"""Benchmark suites and the one runner they share.

``runner`` checks and times cases against named providers; ``counts`` holds the byte formulas;
``device`` the timer, the environment record and the measured peak bandwidth; ``report`` turns
rows into a text table, CSV and JSON; ``norm`` is the LayerNorm / RMSNorm suite. Importing a
suite imports fastformer's kernels: on a machine without a GPU set ``TRITON_INTERPRET=1`` first
(the command line does).
"""
