"""Checks run in a child process started with TRITON_INTERPRET=1 (see test_triton_interpret):
the Triton backend against the dense oracle, with the same segments as test_kernels."""

from __future__ import annotations

import os

import torch

from tests.ops.test_kernels import LENS, assert_same, paged_segments, paged_setup, ring_hops
from vllm_esp.ops import FlashPagedKV, NhdPagedKV, merge_partials
from vllm_esp.ops import triton_kernels as tk
from vllm_esp.ops.reference import segments_reference_paged, segments_reference_ragged


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_ragged(sizes, gqa, d, dtype, atol, seed=0):
    hkv = 1 if gqa == 8 else 2
    g = torch.Generator().manual_seed(seed)
    for r in range(len(sizes[0])):
        hops, rows, shard = ring_hops(sizes, r)
        q = torch.randn(rows, hkv * gqa, d, generator=g).to(dtype)
        for src, segs in enumerate(hops):
            k = torch.randn(shard[src], hkv, d, generator=g).to(dtype)
            v = torch.randn(shard[src], hkv, d, generator=g).to(dtype)
            assert_same(tk.ragged_attention_triton(q, k, v, segs, 0.1),
                        segments_reference_ragged(q, k, v, segs, 0.1), atol)
    return True


def check_paged(layout_name, gqa, d, dtype, atol, split_keys=None):
    if split_keys is not None:
        tk.SPLIT_KEYS = split_keys  # force the split-K path (then the merge kernel)
    hkv = 1 if gqa == 8 else 2
    layout = {"nhd": NhdPagedKV, "flash": FlashPagedKV}[layout_name](hkv, d, 16, dtype)
    cache, blocks = paged_setup(layout, LENS, seed=d)
    segs, rows = paged_segments(LENS, blocks)
    q = torch.randn(rows, hkv * gqa, d, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = tk.paged_attention_triton(q, cache, layout, segs, 0.1)
    assert_same(got, segments_reference_paged(q, cache, layout, segs, 0.1), atol)
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
    got = tk.merge_partials_triton(outs, lses)
    torch.testing.assert_close(got[0].float(), ref[0].float(), atol=atol, rtol=0)
    torch.testing.assert_close(got[1], ref[1], atol=1e-5, rtol=0)
    assert torch.isneginf(got[1][-1, -1]) and (got[0][-1, -1] == 0).all()
    return True
