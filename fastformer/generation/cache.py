"""The KV cache of a generation loop: preallocated keys and values of every layer, and lengths.

Design: one dense tensor for the keys of all layers, (n_layers, batch, n_kv_heads, capacity,
head_dim), one for the values, and ``lengths`` (batch,) int32, the tokens cached per row (the
same for every layer after a whole step). ``keys[i]`` is layer ``i``'s cache in the layout of
:func:`fastformer.decode_attention` and :func:`fastformer.kv_cache_append_`. Nothing is
reallocated while generating, so a decode step has fixed shapes and fixed addresses, which is
what capturing it in a CUDA graph needs. The buffers start zeroed (never-written positions hold
finite values).

Limits: dense only (the kernels also take a paged cache; the loop does not page); one capacity
for all rows.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CacheSpec:
    """What a model's cache must hold per layer."""

    n_layers: int
    n_kv_heads: int
    head_dim: int


class KVCache:
    """Keys, values and lengths for ``batch`` rows of up to ``capacity`` tokens each.

    Attributes:
        keys, values: (n_layers, batch, n_kv_heads, capacity, head_dim), float dtype.
        lengths: (batch,) int32 on the same device, tokens cached per row.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> None:
        self.keys = keys
        self.values = values
        self.lengths = lengths

    @classmethod
    def allocate(
        cls,
        spec: CacheSpec,
        batch: int,
        capacity: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> KVCache:
        """A zeroed cache for ``spec``'s model: ``batch`` rows of ``capacity`` positions."""
        for name, value in (("batch", batch), ("capacity", capacity)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"{name}={value!r} must be an int")
            if value < 1:
                raise ValueError(f"{name}={value}; expected at least 1")
        if dtype not in KERNEL_DTYPES:
            raise TypeError(f"dtype={dtype}; the cache holds one of {KERNEL_DTYPES}")
        shape = (spec.n_layers, batch, spec.n_kv_heads, capacity, spec.head_dim)
        keys = torch.zeros(shape, dtype=dtype, device=device)
        values = torch.zeros(shape, dtype=dtype, device=device)
        lengths = torch.zeros(batch, dtype=torch.int32, device=device)
        return cls(keys, values, lengths)

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s (keys, values), each (batch, n_kv_heads, capacity, head_dim)."""
        return self.keys[index], self.values[index]

    def reset(self) -> None:
        """Forget every cached token (lengths to 0; the buffers keep their old, finite values)."""
        self.lengths.zero_()

    def check(self, spec: CacheSpec, *, batch: int, dtype: torch.dtype, device) -> None:
        """Raise TypeError/ValueError when this cache cannot serve ``batch`` rows of a model
        described by ``spec`` whose activations are ``dtype`` on ``device``."""
        expected = (spec.n_layers, batch, spec.n_kv_heads, self.capacity, spec.head_dim)
        for name in ("keys", "values"):
            tensor = getattr(self, name)
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"cache.{name} must be a torch.Tensor, got {type(tensor).__name__}")
            if tensor.dtype != dtype:
                raise TypeError(f"cache.{name}.dtype={tensor.dtype}; the model computes in {dtype}")
            if tensor.dim() != len(expected) or tuple(tensor.shape) != expected:
                raise ValueError(
                    f"cache.{name}.shape={tuple(tensor.shape)}; expected {expected} (n_layers, "
                    "batch, n_kv_heads, capacity, head_dim) for this model and batch"
                )
            if tensor.device != torch.device(device):
                raise ValueError(f"cache.{name} is on {tensor.device}; the model is on {device}")
        lengths = self.lengths
        if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int32:
            raise TypeError(
                f"cache.lengths must be an int32 tensor, got "
                f"{getattr(lengths, 'dtype', type(lengths).__name__)}"
            )
        if tuple(lengths.shape) != (batch,) or lengths.device != self.keys.device:
            raise ValueError(
                f"cache.lengths.shape={tuple(lengths.shape)} on {lengths.device}; expected "
                f"({batch},) on {self.keys.device}"
            )
