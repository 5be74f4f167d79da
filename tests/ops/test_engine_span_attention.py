"""The engine's span attention on both paged layouts it runs on: vLLM's CPU_ATTN cache (the
CPU engine) and vLLM's FLASH_ATTN cache (the GPU engine, ``esp_gpu_worker``), over two gloo
ranks. Two requests are prefilled as one batched ring (stripes, keep-range writes), then each
decodes a token whose master asks the other holder for partial attention; everything is
compared with dense attention in one process."""

import pytest

from tests.ops._span_workers import ring_then_decode


@pytest.mark.parametrize("layout", ["cpu", "flash"])
def test_batched_ring_and_decode_exchange_match_dense(esp_world, layout):
    res = esp_world.run(ring_then_decode, [(layout,), (layout,)] + [None] * (esp_world.size - 2))
    for r in (0, 1):
        assert res[r]["hops"] == 1  # two requests, 2 instances: one message pair per layer
        assert res[r]["prefill_err"] < 1e-5
        assert res[r]["cache_err"] == 0.0  # each keep range holds its tokens' exact K/V
    assert res[1]["decode_err"] < 1e-5
