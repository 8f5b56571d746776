"""Benchmark-suite set-up: without a CUDA device, Triton's interpreter is switched on here,
before the suites import fastformer's kernels (it is chosen when a kernel is defined)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
