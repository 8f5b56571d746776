"""Norms on odd layouts (CASES N5): strided, transposed, sliced, expanded inputs and gradients."""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.kernels import _runtime

N = 96
MEAN_OFFSET = 5.0

# Each layout builds the op's input from a leaf tensor; the gradient flows back to the leaf.
LAYOUTS = {
    "transposed_leading": ((7, 3, N), lambda t: t.transpose(0, 1)),
    "step_sliced_last": ((4, 5, 2 * N), lambda t: t[..., ::2]),
    "sliced_rows": ((9, N), lambda t: t[2:-1]),
    "column_slice_of_wider": ((6, N + 32), lambda t: t[:, 16 : 16 + N]),
    "expanded_rows": ((1, N), lambda t: t.expand(5, N)),
    "permuted_stack": ((3, 4, 5, N), lambda t: t.permute(2, 0, 1, 3)),
}


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_strided_inputs(check, device, op, layout, residual):
    base_shape, view = LAYOUTS[layout]
    x = (torch.randn(base_shape, device=device) + MEAN_OFFSET).to(torch.float16).requires_grad_()
    r = torch.randn(base_shape, device=device).to(torch.float16).requires_grad_()
    w = torch.randn(N, device=device).to(torch.float16).requires_grad_()
    kernel = fastformer.layer_norm if op == "layer_norm" else fastformer.rms_norm
    ref = reference.layer_norm if op == "layer_norm" else reference.rms_norm

    def run(fn, x, r, w):
        return fn(view(x), (N,), w, residual=view(r) if residual else None)

    check(lambda *a: run(kernel, *a), lambda *a: run(ref, *a), [x, r, w])


GRAD_LAYOUTS = {
    "contiguous": lambda out: torch.randn_like(out),
    "transposed": lambda out: torch.randn(out.shape[1], out.shape[0], N).transpose(0, 1),
    "expanded": lambda out: torch.randn(1, 1, N).expand(out.shape),
    "step_sliced": lambda out: torch.randn(*out.shape[:-1], 2 * N)[..., ::2],
}


@pytest.mark.parametrize("grad_layout", list(GRAD_LAYOUTS))
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_strided_grad_outputs(check, device, op, grad_layout):
    x = (torch.randn(4, 6, N, device=device) + MEAN_OFFSET).requires_grad_()
    r = torch.randn(4, 6, N, device=device).requires_grad_()
    w = torch.randn(N, device=device).requires_grad_()
    kernel = fastformer.layer_norm if op == "layer_norm" else fastformer.rms_norm
    ref = reference.layer_norm if op == "layer_norm" else reference.rms_norm
    make_grad = GRAD_LAYOUTS[grad_layout]
    check(
        lambda x, r, w: kernel(x, (N,), w, residual=r),
        lambda x, r, w: ref(x, (N,), w, residual=r),
        [x, r, w],
        grad_output_fn=lambda out: make_grad(out).to(device=out.device, dtype=out.dtype),
    )


@pytest.mark.parametrize(
    "layout",
    ["transposed_leading", "step_sliced_last", "sliced_rows", "expanded_rows", "permuted_stack"],
)
def test_foldable_layouts_are_read_in_place(layout):
    """Layouts whose rows fold into one stride are viewed, not copied."""
    base_shape, view = LAYOUTS[layout]
    base = torch.randn(base_shape)
    x = view(base)
    rows = _runtime.as_rows(x, 1)
    assert rows.tensor.data_ptr() == x.data_ptr()
    assert torch.equal(_gather(rows), x.reshape(-1, N))


def _gather(rows: _runtime.Rows) -> torch.Tensor:
    """Read every row through the Rows addressing, as the kernels do."""
    r = torch.arange(rows.n_rows)
    starts = (r // rows.rows_inner) * rows.stride_outer + (r % rows.rows_inner) * rows.stride_inner
    offsets = starts[:, None] + torch.arange(rows.n_cols) * rows.stride_col
    flat = rows.tensor.as_strided((rows.tensor.untyped_storage().nbytes() // 4,), (1,), 0)
    return flat[offsets + rows.tensor.storage_offset()]


def test_three_row_strides_are_copied_once():
    base = torch.randn(3, 4, 5, 6, N)
    x = base.permute(3, 0, 2, 1, 4)  # leading dims need three strides
    rows = _runtime.as_rows(x, 1)
    assert rows.tensor.is_contiguous()
    assert torch.equal(_gather(rows), x.reshape(-1, N))
