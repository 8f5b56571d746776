"""Argument checks shared by the functional ops: each failure names the argument, the value and
what was expected, and is raised before any kernel launch."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from fastformer.kernels import _runtime

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(dtype).removeprefix("torch.") for dtype in dtypes)


def check_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if type(value).__name__ == "DTensor":  # sharded: each rank holds a piece
        raise TypeError(
            f"{name} is a DTensor; fastformer's ops take whole local tensors, so tensor and "
            "sequence parallel are not supported (with FSDP2, a module method called instead "
            "of forward needs torch.distributed.fsdp.register_fsdp_forward_method)"
        )
    if value.layout != torch.strided or value.is_nested:
        layout = "nested" if value.is_nested else value.layout
        raise TypeError(f"{name}.layout={layout} is not supported; expected torch.strided")
    return value


def check_float_dtype(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in SUPPORTED_DTYPES:
        if tensor.dtype.is_floating_point:  # valid for torch, not for the kernels
            raise _runtime.UnsupportedDtype(
                f"{name}.dtype={tensor.dtype} is not supported; expected one of "
                f"{_dtype_names(SUPPORTED_DTYPES)}",
                f"dtype {tensor.dtype}",
            )
        raise TypeError(
            f"{name}.dtype={tensor.dtype} is not supported; expected one of "
            f"{_dtype_names(SUPPORTED_DTYPES)}"
        )


def check_like(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``tensor`` must have ``ref``'s shape, dtype and device."""
    if tensor.device != ref.device:
        raise ValueError(f"{name} is on {tensor.device} but {ref_name} is on {ref.device}")
    if tensor.dtype != ref.dtype:
        raise TypeError(f"{name}.dtype={tensor.dtype} must equal {ref_name}.dtype={ref.dtype}")
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name}.shape={tuple(tensor.shape)} must equal {ref_name}.shape={tuple(ref.shape)}"
        )


def check_param(
    name: str, tensor: torch.Tensor | None, shape: tuple[int, ...], x: torch.Tensor
) -> None:
    """An optional per-feature parameter: ``shape``, on x's device, x's dtype or float32."""
    if tensor is None:
        return
    check_tensor(name, tensor)
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}")
    allowed = (x.dtype, torch.float32)
    if tensor.dtype not in allowed:
        raise TypeError(
            f"{name}.dtype={tensor.dtype} is not supported with x.dtype={x.dtype}; "
            f"expected one of {_dtype_names(dict.fromkeys(allowed))}"
        )
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}.shape={tuple(tensor.shape)} must equal normalized_shape={shape}")


def check_normalized_shape(normalized_shape, x: torch.Tensor) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple, checked against the last dims of ``x``."""
    shape = _as_shape(normalized_shape)
    if not shape:
        raise ValueError("normalized_shape=() is empty; expected at least one dim")
    if len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"normalized_shape={shape} does not match the last dims of x.shape={tuple(x.shape)}"
        )
    return shape


def _as_index(value) -> int | None:
    """``value`` as an int when it is an integer scalar (int, numpy int, 0-d int tensor)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_shape(normalized_shape) -> tuple[int, ...]:
    single = _as_index(normalized_shape)
    if single is not None:
        return (single,)
    expected = "an int or a sequence of ints"
    if isinstance(normalized_shape, (str, bytes)) or not isinstance(normalized_shape, Sequence):
        raise TypeError(f"normalized_shape must be {expected}, got {normalized_shape!r}")
    sizes = [_as_index(size) for size in normalized_shape]
    if any(size is None for size in sizes):
        raise TypeError(f"normalized_shape must be {expected}, got {normalized_shape!r}")
    return tuple(sizes)


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    eps = float(eps)
    if not eps >= 0.0 or eps == float("inf"):
        raise ValueError(f"eps={eps} must be finite and >= 0")
    return eps
