"""int8 per token-head quantization bounds and the host swap store round trip (real CPU layout
probe from vLLM's own write op, so the per-token grouping is checked against the real cache)."""

import pytest
import torch

from vllm_esp.scheduling.kv_quant import dequantize_int8, error_bound, quantize_int8
from vllm_esp.scheduling.swap_store import HostKVStore


def test_quantization_error_is_within_half_a_step_per_token_head():
    torch.manual_seed(0)
    x = torch.randn(5, 4, 16, 64) * torch.logspace(-3, 2, 16).view(1, 1, 16, 1)
    q, s = quantize_int8(x)
    assert q.dtype == torch.int8 and s.shape == (5, 4, 16, 1)
    err = (dequantize_int8(q, s) - x).abs()
    assert (err <= error_bound(x) * (1 + 1e-5) + 1e-12).all()
    # per-row scaling: tiny rows keep tiny absolute error despite huge rows elsewhere
    assert err[:, :, 0].max() < 1e-4
    # a zero row stays exactly zero
    z = torch.zeros(2, 8)
    qz, sz = quantize_int8(z)
    assert torch.equal(dequantize_int8(qz, sz), z)
    with pytest.raises(ValueError):
        quantize_int8(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError):
        dequantize_int8(torch.ones(3), torch.ones(1))


def _layout():
    from vllm_esp.scheduling.swap_connector import _cpu_token_maps

    return _cpu_token_maps


def _cache(num_blocks=10, heads=2, bs=32, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}": torch.randn(num_blocks, heads, bs, 2 * d, generator=g)
            for i in range(2)}


def test_raw_swap_round_trip_is_exact_into_other_blocks():
    kv = _cache()
    original = {k: v.clone() for k, v in kv.items()}
    store = HostKVStore(quantize=False)
    assert store.swap_out("r", kv, [1, 4, 7], num_tokens=70)
    assert store.nbytes == 2 * 3 * 2 * 32 * 64 * 4
    for v in kv.values():
        v[[1, 4, 7]] = float("nan")  # the pool reuses the freed blocks
    store.swap_in("r", kv, [0, 2, 3])
    for name in kv:
        assert torch.equal(kv[name][[0, 2, 3]], original[name][[1, 4, 7]])
    assert "r" not in store and store.nbytes == 0


def test_partial_swap_in_after_prefix_hit():
    kv = _cache()
    original = {k: v.clone() for k, v in kv.items()}
    store = HostKVStore()
    store.swap_out("r", kv, [5, 6, 8], 90)
    store.swap_in("r", kv, [2, 3], first_block=1)  # block 0 came back from the prefix cache
    assert torch.equal(kv["layer0"][[2, 3]], original["layer0"][[6, 8]])
    store.swap_out("q", kv, [1], 10)
    with pytest.raises(ValueError):
        store.swap_in("q", kv, [1, 2])
    with pytest.raises(KeyError):
        store.swap_in("nobody", kv, [1])


def test_quantized_swap_bounded_error_per_token_head():
    maps = _layout()
    kv = _cache(bs=32, d=32)
    original = {k: v.clone() for k, v in kv.items()}
    store = HostKVStore(quantize=True, token_maps=maps)
    store.swap_out("r", kv, [2, 3], 64)
    raw_bytes = 2 * 2 * 2 * 32 * 64 * 4
    assert store.nbytes < raw_bytes / 3  # int8 + one fp32 scale per (token, head)
    store.swap_in("r", kv, [8, 9])
    k_idx, v_idx = maps(32, 32, torch.float32)
    for name in kv:
        got = kv[name][[8, 9]].reshape(2, 2, -1)
        ref = original[name][[2, 3]].reshape(2, 2, -1)
        for idx in (k_idx, v_idx):
            g, r = got[..., idx.reshape(-1)].view(2, 2, 32, 32), ref[..., idx.reshape(-1)]
            r = r.view(2, 2, 32, 32)  # [block, head, token, dim]
            assert ((g - r).abs() <= error_bound(r) * (1 + 1e-5)).all()
            assert not torch.equal(g, r)  # it really was quantized


def test_store_rejects_bad_shapes_and_missing_maps():
    with pytest.raises(ValueError, match="token_maps"):
        HostKVStore().swap_out("r", _cache(), [0], 3, quantize=True)
    with pytest.raises(ValueError, match="CPU paged KV"):
        HostKVStore().swap_out("r", {"l": torch.zeros(2, 3, 5)}, [0], 3)
    store = HostKVStore(capacity_bytes=10)
    assert not store.swap_out("r", _cache(), [0], 3)  # over capacity -> refused, not stored
    assert "r" not in store


def test_flash_layout_token_maps_round_trip_quantized():
    """On a GPU the store reads vLLM's FLASH_ATTN slabs with their own token maps (K of token
    t at [t, :D], V at [t, D:]): a quantized round trip on that layout keeps each token's K
    and V within the int8 error bound."""
    from vllm_esp.ops import FlashPagedKV
    from vllm_esp.scheduling.swap_connector import _flash_token_maps, token_maps_for

    layout = FlashPagedKV(2, 32, 16, torch.float32)
    cache = layout.allocate(8)
    k, v = torch.randn(40, 2, 32), torch.randn(40, 2, 32) * 5
    layout.write(cache, k, v, torch.arange(16, 56))  # blocks 1, 2 and part of 3
    assert token_maps_for(cache) is not _flash_token_maps  # a CPU tensor: the CPU maps
    store = HostKVStore(quantize=True, token_maps=_flash_token_maps)
    store.swap_out("r", {"l": cache}, [1, 2, 3], 40)
    store.swap_in("r", {"l": cache}, [5, 6, 7])
    gk, gv = layout.gather(cache, torch.tensor([5, 6, 7]))
    for got, ref in ((gk[:40], k), (gv[:40], v)):
        bound = ref.abs().amax(dim=-1, keepdim=True) / 127 * 0.5001
        assert ((got - ref).abs() <= bound).all()
