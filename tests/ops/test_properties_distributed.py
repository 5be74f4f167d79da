"""Hypothesis over shapes and placements, run on the spawned gloo world (few examples)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.ops.test_distributed_decode import dense_decode, run_decode
from tests.ops.test_ring_prefill import check_against_dense, run_ring

FEW = settings(max_examples=6, deadline=None)


@FEW
@given(k=st.integers(1, 4), lens=st.lists(st.integers(1, 24), min_size=1, max_size=4),
       gqa=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 1000))
def test_ring_prefill_property(esp_world, k, lens, gqa, seed):
    hkv = 1
    group, res = run_ring(esp_world, k, lens, hkv * gqa, hkv, 32, torch.float32, seed)
    check_against_dense(group, res, lens, hkv * gqa, hkv, 32, torch.float32, seed, 1e-5)


@st.composite
def placements(draw):
    k = draw(st.integers(1, 4))
    n_req = draw(st.integers(1, 4))
    masters = [draw(st.integers(0, k - 1)) for _ in range(n_req)]
    kv_lens = []
    for _ in range(n_req):
        row = [draw(st.sampled_from([0, 0, 1, 5, 33])) for _ in range(k)]
        if sum(row) == 0:
            row[draw(st.integers(0, k - 1))] = 1
        kv_lens.append(row)
    return k, masters, kv_lens


@FEW
@given(p=placements(), seed=st.integers(0, 1000))
def test_decode_property(esp_world, p, seed):
    k, masters, kv_lens = p
    group = [3, 1, 0, 2][:k]
    res = run_decode(esp_world, group, masters, kv_lens, 4, 2, 32, torch.float32, seed)
    ref_out, ref_lse = dense_decode(masters, kv_lens, 4, 2, 32, torch.float32, seed)
    for rank in group:
        mine, out, _ = res[rank]
        if mine:
            torch.testing.assert_close(out, ref_out[mine].float(), atol=1e-5, rtol=0)
