"""Every public op runs inside one named profiler range, ``fastformer::<op>``, and observers see
its arguments; without a profiler the ops run as before; torch.compile still works around them."""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer.functional import _library, _ranges

# torch.profiler's start-up touches torch.jit, which warns of its own deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")


def _ranges_in(prof) -> list[str]:
    return [event.name for event in prof.events() if event.name.startswith(_ranges.PREFIX)]


def _calls(device):
    x = torch.randn(3, 32, device=device)
    w = torch.randn(32, device=device)
    q = torch.randn(1, 2, 8, 16, device=device)
    packed = torch.randn(8, 2, 16, device=device)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    weight = torch.randn(24, 32, device=device)
    rot_q = torch.randn(1, 4, 2, 16, device=device)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 16, 2, device=device).float() / 16)
    cache = torch.randn(2, 2, 16, 16, device=device)
    lengths = torch.tensor([5, 9], dtype=torch.int32, device=device)
    new = torch.randn(2, 2, 1, 16, device=device)
    decode_q = torch.randn(2, 4, 1, 16, device=device)
    return {
        "decode_attention": lambda: fastformer.decode_attention(decode_q, cache, cache, lengths),
        "kv_cache_append_": lambda: fastformer.kv_cache_append_(
            cache.clone(), cache.clone(), new, new, lengths
        ),
        "layer_norm": lambda: fastformer.layer_norm(x, (32,), w, w),
        "rms_norm": lambda: fastformer.rms_norm(x, (32,), w, residual=x),
        "scaled_dot_product_attention": lambda: fastformer.scaled_dot_product_attention(q, q, q),
        "varlen_attention": lambda: fastformer.varlen_attention(packed, packed, packed, cu, cu),
        "linear": lambda: fastformer.linear(x, weight, activation="gelu"),
        "gated_linear": lambda: fastformer.gated_linear(x, weight, weight),
        "apply_rotary": lambda: fastformer.apply_rotary(rot_q, rot_q, inv_freq),
    }


@pytest.mark.parametrize(
    "op",
    ["layer_norm", "rms_norm", "scaled_dot_product_attention", "varlen_attention", "linear",
     "gated_linear", "apply_rotary", "decode_attention", "kv_cache_append_"],
)  # fmt: skip
def test_each_op_runs_in_its_named_range(op, device):
    call = _calls(device)[op]
    seen = []
    with torch.profiler.profile() as prof, _ranges.observe(lambda n, a: seen.append((n, a))):
        call()
    assert _ranges_in(prof) == [_ranges.PREFIX + op]
    assert [name for name, _ in seen] == [op]
    arguments = seen[0][1]
    assert isinstance(next(iter(arguments.values())), torch.Tensor)  # the first input, bound


def test_nested_ops_take_one_range(device):
    """scaled_dot_product_attention with cu_seqlens calls varlen_attention: one range."""
    packed = torch.randn(8, 2, 16, device=device)
    cu = torch.tensor([0, 5, 8], dtype=torch.int32, device=device)
    with torch.profiler.profile() as prof:
        fastformer.scaled_dot_product_attention(
            packed, packed, packed, cu_seqlens_q=cu, cu_seqlens_k=cu
        )
    assert _ranges_in(prof) == [_ranges.PREFIX + "scaled_dot_product_attention"]


def test_without_a_profiler_the_op_is_unchanged(device):
    x = torch.randn(5, 32, device=device)
    weight = torch.randn(16, 32, device=device)
    plain = fastformer.linear(x, weight)
    with torch.profiler.profile():
        profiled = fastformer.linear(x, weight)
    assert torch.equal(plain, profiled)
    assert not _ranges._observers and not torch.autograd._profiler_enabled()


def test_an_observer_that_raises_is_removed():
    def broken(name, arguments):
        raise RuntimeError("observer failed")

    with pytest.raises(RuntimeError, match="observer failed"):
        with _ranges.observe(broken):
            fastformer.rms_norm(torch.randn(2, 8), (8,))
    assert not _ranges._observers


def test_kernel_ops_named_under_torch_compile(device):
    """Compiled code takes no Python ranges (Dynamo traces the op, not the range), but each
    launch is a named custom op that the profiler records: a compiled caller's trace still
    shows ``fastformer_kernels::linear_fwd``, and no public-op range."""
    weight = torch.randn(16, 32, device=device)

    def block(x):
        return fastformer.linear(torch.relu(x), weight) * 2

    compiled = torch.compile(block)
    x = torch.randn(4, 32, device=device)
    with torch.profiler.profile() as prof:
        out = compiled(x)
    torch.testing.assert_close(out, block(x))
    names = {event.name for event in prof.events()}
    assert f"{_library.NAMESPACE}::linear_fwd" in names
    assert _ranges.PREFIX + "linear" not in _ranges_in(prof)
