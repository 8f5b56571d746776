"""Kernel profiling: ``fastformer profile`` (torch.profiler over a model or an op) and
``fastformer inspect`` (compile every kernel config for a GPU target, without a GPU).

Nothing is imported here: the command modules define kernels or import torch only when a
command runs, so that the command line can still choose Triton's interpreter first.
"""
