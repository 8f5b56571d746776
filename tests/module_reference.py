"""Eager references of fastformer's nn modules, written with torch ops, shared by the tests.

Each reference takes the module (for its configuration only) and a dict of parameter tensors
named as the module names them, and computes the textbook composition independently of the
module's code, in the dtype of its inputs: float64 for the truth, the tested dtype for eager's
own error. ``tests/`` is on ``sys.path`` when pytest runs (rootdir-relative imports).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rotate(x, inv_freq, positions):
    """NeoX (rotate-half) rotary of the first 2 * len(inv_freq) features. x: (B, S, H, D);
    positions: (B or 1, S)."""
    rot = 2 * inv_freq.numel()
    angles = positions[..., None].double() * inv_freq.double()  # (B, S, rot / 2)
    cos = torch.cat([angles.cos()] * 2, -1)[:, :, None, :].to(x.dtype)  # (B, S, 1, rot)
    sin = torch.cat([angles.sin()] * 2, -1)[:, :, None, :].to(x.dtype)
    head, rest = x[..., :rot], x[..., rot:]
    first, second = head.chunk(2, dim=-1)
    rotated = head * cos + torch.cat([-second, first], -1) * sin
    return torch.cat([rotated, rest], -1)


def reference_attention(module, params, x, memory, padding, bias, positions):
    """The eager composition: see the module docstring. ``params`` maps names to tensors."""
    heads, kv_heads, head_dim = module.n_heads, module.n_kv_heads, module.head_dim

    def project(name, inp):
        return F.linear(inp, params[f"{name}.weight"], params.get(f"{name}.bias"))

    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    source = x if memory is None else memory
    if module.fused_qkv and memory is None:
        q, k, v = project("qkv_proj", x).split([q_size, kv_size, kv_size], dim=-1)
    elif module.fused_qkv:
        q = project("q_proj", x)
        k, v = project("kv_proj", source).split([kv_size, kv_size], dim=-1)
    else:
        q, k, v = project("q_proj", x), project("k_proj", source), project("v_proj", source)
    batch, seq_q, seq_k = x.shape[0], x.shape[1], source.shape[1]
    q = q.reshape(batch, seq_q, heads, head_dim)
    k = k.reshape(batch, seq_k, kv_heads, head_dim)
    v = v.reshape(batch, seq_k, kv_heads, head_dim)
    if module.rotary is not None:
        pos = positions if positions is not None else torch.arange(seq_q)[None]
        q, k = _rotate(q, module.rotary.inv_freq, pos), _rotate(k, module.rotary.inv_freq, pos)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if bias is not None:
        scores = scores + bias
    if module.is_causal:
        future = torch.ones(seq_q, seq_k, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if padding is not None:
        scores = scores.masked_fill(~padding[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # (B, H, Sq, D)
    out = out.transpose(1, 2).reshape(batch, seq_q, q_size)
    return project("o_proj", out)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def subset(params: dict, prefix: str) -> dict:
    """The entries of ``params`` under ``prefix.``, with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: p for name, p in params.items() if name.startswith(prefix + ".")}


def reference_norm(norm, params: dict, x):
    """LayerNorm or RMSNorm ``norm`` (its kind and eps) with the given weight (and bias)."""
    shape = (x.shape[-1],)
    if isinstance(norm, torch.nn.RMSNorm):
        return F.rms_norm(x, shape, params["weight"], norm.eps)
    return F.layer_norm(x, shape, params["weight"], params["bias"], norm.eps)


def reference_feed_forward(ffn, params: dict, x):
    act = ACTIVATIONS[ffn.activation]
    if "gate_proj.weight" in params:
        gate = F.linear(x, params["gate_proj.weight"])
        up = F.linear(x, params["up_proj.weight"])
        return F.linear(act(gate) * up, params["down_proj.weight"])
    hidden = act(F.linear(x, params["c_fc.weight"], params.get("c_fc.bias")))
    return F.linear(hidden, params["c_proj.weight"], params.get("c_proj.bias"))


def reference_layer(layer, params: dict, x, memory=None, padding=None, memory_padding=None,
                    bias=None, positions=None):  # fmt: skip
    """An encoder layer (``memory`` None) or a decoder layer: pre-LN ``h = x + f(norm(x))`` or
    post-LN ``h = norm(x + f(x))`` for each of its sublayers in turn."""

    def norm(name, h):
        return reference_norm(getattr(layer, name), subset(params, name), h)

    sublayers = [
        ("self_attn_norm", lambda h: reference_attention(
            layer.self_attn, subset(params, "self_attn"), h, None, padding, bias, positions
        )),
    ]  # fmt: skip
    if memory is not None:
        sublayers.append(
            ("cross_attn_norm", lambda h: reference_attention(
                layer.cross_attn, subset(params, "cross_attn"), h, memory, memory_padding,
                None, None,
            ))
        )  # fmt: skip
    sublayers.append(
        ("ffn_norm", lambda h: reference_feed_forward(layer.ffn, subset(params, "ffn"), h))
    )
    for norm_name, sublayer in sublayers:
        if layer.norm_first:
            x = x + sublayer(norm(norm_name, x))
        else:
            x = norm(norm_name, x + sublayer(x))
    return x
