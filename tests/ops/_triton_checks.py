"""Checks run in a child process started with TRITON_INTERPRET=1 (see test_triton_interpret)."""

from __future__ import annotations

import os

import torch

from vllm_esp.ops import (
    DecodePlan,
    NhdPagedKV,
    distributed_decode_attention,
    merge_partials,
    paged_attention_with_lse,
)
from vllm_esp.ops.triton_kernels import merge_partials_triton, paged_attention_with_lse_triton


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _cache(lens, hkv, d, bs, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    layout = NhdPagedKV(hkv, d, bs, dtype)
    need = [(n + bs - 1) // bs for n in lens]
    nb = sum(need) + 2
    cache = torch.randn(2, nb, bs, hkv, d, generator=g).to(dtype)  # junk everywhere else
    perm = torch.randperm(nb, generator=g)
    bt = torch.zeros(len(lens), max(1, max(need)), dtype=torch.int32)
    used = 0
    for i, k in enumerate(need):
        bt[i, :k] = perm[used:used + k].to(torch.int32)
        used += k
    return layout, cache, bt


def check_paged(lens, hq, hkv, d, bs, dtype, atol, seed=0):
    layout, cache, bt = _cache(lens, hkv, d, bs, dtype, seed)
    q = torch.randn(len(lens), hq, d, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    sl = torch.tensor(lens)
    ref = paged_attention_with_lse(q, cache, layout, bt, sl, d ** -0.5)
    got = paged_attention_with_lse_triton(q, cache, layout, bt, sl, d ** -0.5)
    assert got[0].dtype == dtype
    torch.testing.assert_close(got[0].float(), ref[0].float(), atol=atol, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)
    for i, n in enumerate(lens):
        if n == 0:
            assert torch.isneginf(got[1][:, i]).all() and (got[0][i] == 0).all()
    return True


def check_merge(n, t, h, d, dtype, atol, seed=0):
    g = torch.Generator().manual_seed(seed)
    outs = torch.randn(n, t, h, d, generator=g).to(dtype)
    lses = torch.randn(n, h, t, generator=g) * 3
    lses[0, 0, :] = float("-inf")  # an empty partial
    if n > 1:
        lses[1, :, 0] = float("inf")  # vLLM's "no context" marker
    lses[:, -1, -1] = float("-inf")  # a (head, token) with no keys anywhere
    ref = merge_partials(outs, lses)
    got = merge_partials_triton(outs, lses)
    torch.testing.assert_close(got[0].float(), ref[0].float(), atol=atol, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)
    assert torch.isneginf(got[1][-1, -1]) and (got[0][-1, -1] == 0).all()
    return True


def check_decode_with_triton_backends():
    """Single-member decode group through the Triton partial + merge."""
    lens = [3, 0, 40]
    layout, cache, bt = _cache(lens, 2, 64, 16, torch.float32, 3)
    q = torch.randn(3, 4, 64)
    plan = DecodePlan([0], 0, [0, 0, 0], [[n] for n in lens], bt)
    ref = distributed_decode_attention(q, cache, layout, plan, None, 0.125, return_lse=True)
    got = distributed_decode_attention(q, cache, layout, plan, None, 0.125,
                                       partial_fn=paged_attention_with_lse_triton,
                                       merge_fn=merge_partials_triton, return_lse=True)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)
    return True
