"""Optional providers (flash-attn, Liger) and the autotune record.

Neither flash-attn nor liger_kernel is installed here, so stand-in modules computing the same
function with torch ops take their place in ``sys.modules``: they exercise the registration
path, the calling convention (layouts, arguments) and the correctness gate. One more is wrong
on purpose and must get a FAILED row.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastformer.benchmarks import attention, autotune, external, norm, runner

WRONG_FACTOR = 1.01


def _flash_attn_func(q, k, v, causal=False):  # (B, S, H, D), as flash-attn takes them
    bhsd = [t.transpose(1, 2) for t in (q, k, v)]
    return F.scaled_dot_product_attention(*bhsd, is_causal=causal).transpose(1, 2)


def _liger_functional(factor: float = 1.0) -> types.ModuleType:
    module = types.ModuleType("liger_kernel.transformers.functional")
    module.liger_layer_norm = lambda x, w, b, eps: F.layer_norm(x, w.shape, w, b, eps) * factor

    def liger_rms_norm(x, w, eps, offset=0.0, casting_mode="llama", in_place=True):
        assert not in_place, "the suite must not let Liger overwrite the upstream gradient"
        return F.rms_norm(x, w.shape, w, eps) * factor

    module.liger_rms_norm = liger_rms_norm
    return module


@pytest.fixture
def installed(monkeypatch):
    """Install stand-ins: ``installed(flash=..., liger=...)``; the import cache is reset."""

    def install(flash=None, liger=None):
        if flash is not None:
            monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(**flash))
        if liger is not None:
            for name in ("liger_kernel", "liger_kernel.transformers"):
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
            monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", liger)
        external.reset()

    yield install
    external.reset()


def _rows(case, providers, device, mode="fwd+bwd"):
    generator = torch.Generator(device=device).manual_seed(runner.SEED)
    return {row.provider: row for row in runner.run_case(case, mode, providers, device, generator)}


def test_absent_packages_register_nothing(device):
    external.reset()
    assert not external.available(external.FLASH_ATTN)
    assert not external.available(external.LIGER)
    assert runner.FLASH_ATTN not in attention.attention_cases(device)[0].providers
    assert runner.LIGER not in norm.norm_cases(device)[0].providers
    assert not set(external.OPTIONAL) & set(runner.default_providers(torch.device("cuda")))
    with pytest.raises(ValueError, match="name='xformers'"):
        external.available("xformers")


def test_optional_providers_run_on_a_gpu_only(installed):
    installed(flash={"flash_attn_func": _flash_attn_func}, liger=_liger_functional())
    assert set(external.OPTIONAL) <= set(runner.default_providers(torch.device("cuda")))
    assert not set(external.OPTIONAL) & set(runner.default_providers(torch.device("cpu")))


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_flash_attn_provider_layout_and_check(installed, device, is_causal):
    installed(flash={"flash_attn_func": _flash_attn_func})
    shape = attention.AttentionShape(1, 2, 16, 16)
    case = attention.attention_case(shape, torch.float32, is_causal)
    assert runner.FLASH_ATTN in case.providers
    rows = _rows(case, (runner.EAGER, runner.FLASH_ATTN), device)
    assert rows[runner.FLASH_ATTN].ok, rows[runner.FLASH_ATTN].detail


@pytest.mark.parametrize("op", norm.OPS)
def test_liger_norms_join_plain_cases_and_pass(installed, device, op):
    installed(liger=_liger_functional())
    plain = norm.norm_case(op, (8, 64), torch.float32, has_residual=False)
    fused = norm.norm_case(op, (8, 64), torch.float32, has_residual=True)
    assert runner.LIGER in plain.providers and runner.LIGER not in fused.providers
    rows = _rows(plain, (runner.EAGER, runner.LIGER), device)
    assert rows[runner.LIGER].ok, rows[runner.LIGER].detail


def test_a_wrong_optional_provider_gets_a_failed_row(installed, device):
    installed(liger=_liger_functional(WRONG_FACTOR))
    case = norm.norm_case("rms_norm", (8, 64), torch.float32, has_residual=False)
    rows = _rows(case, (runner.EAGER, runner.LIGER), device, mode="fwd")
    assert not rows[runner.LIGER].ok and "output[0]" in rows[runner.LIGER].detail


# --- the autotune record ----------------------------------------------------------------------


@triton.jit
def _stand_in_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def test_autotune_choices_read_the_cache_and_log_them(monkeypatch, caplog):
    configs = [triton.Config({"BLOCK": 16}, num_warps=2), triton.Config({"BLOCK": 32})]
    tuned = triton.autotune(configs=configs, key=["n"])(_stand_in_kernel)
    tuned.cache[(64, "torch.float32")] = configs[1]
    single = triton.autotune(configs=configs[:1], key=["n"])(_stand_in_kernel)
    single.best_config = configs[0]  # what a launch of a one-candidate autotuner leaves
    never_ran = triton.autotune(configs=configs, key=["n"])(_stand_in_kernel)
    module = types.ModuleType("fastformer.kernels._stand_in")
    module.tuned, module.single, module.never_ran = tuned, single, never_ran
    monkeypatch.setitem(sys.modules, module.__name__, module)
    found = [c for c in autotune.choices() if c.module == module.__name__]
    assert len(found) == 2  # the autotuner that never ran has no entry
    by_tuned = {choice.tuned: choice for choice in found}
    assert by_tuned[True].key == ["64", "torch.float32"] and by_tuned[True].key_names == ["n"]
    assert by_tuned[True].config["BLOCK"] == 32 and by_tuned[True].kernel == "_stand_in_kernel"
    assert by_tuned[False].key is None and by_tuned[False].config["num_warps"] == 2
    with caplog.at_level(logging.INFO, logger=autotune.__name__):
        autotune.log_choices(found)
    assert "_stand_in_kernel [64, torch.float32] -> BLOCK=32" in caplog.text
