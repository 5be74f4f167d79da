"""Span attention's transient memory does not grow with the context (measured, CPU backend).

The same queries attend 8k and 32k tokens of paged KV (decode rows, the rows of a chunk
computed after the held ones, and the served partials of a peer): the peak of memory created
and not yet freed during the call, from torch's memory profiler, must be within 10 % at both
lengths. The dense reference, measured the same way, grows 4x (the check has teeth).
"""

import pytest
import torch

from vllm_esp.ops import CpuPagedKV, KeySegments, keys
from vllm_esp.ops.cpu_attention import paged_attention
from vllm_esp.ops.reference import segments_reference_paged


def peak_transient_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    memory_profiler = pytest.importorskip("torch.profiler._memory_profiler")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    cur = best = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == memory_profiler.Action.CREATE:
            cur += size
        elif action == memory_profiler.Action.DESTROY:
            cur -= size
        best = max(best, cur)
    return best


def span_call(context: int, kernel):
    layout = CpuPagedKV(2, 64, 128, torch.float32)
    cache = layout.allocate(context // 128 + 1)
    blocks = list(range(context // 128))
    q = torch.randn(1 + 64 + 4, 8, 64)
    segs = KeySegments([keys.full(0, 1, context, block_ids=blocks),  # a decode row
                        keys.causal(1, 64, context, block_ids=blocks),  # a later chunk's rows
                        keys.full(65, 4, context, block_ids=blocks)])  # served queries
    return lambda: kernel(q, cache, layout, segs, 0.125)


def test_transient_memory_is_independent_of_context():
    short = peak_transient_bytes(span_call(8192, paged_attention))
    long = peak_transient_bytes(span_call(32768, paged_attention))
    assert short > 0
    assert abs(long - short) <= 0.1 * short, (short, long)
    ref_short = peak_transient_bytes(span_call(8192, segments_reference_paged))
    ref_long = peak_transient_bytes(span_call(32768, segments_reference_paged))
    assert ref_long > 3 * ref_short  # the oracle gathers whole chunks: it grows
