"""vLLM-style chunked prefill and disaggregation baselines, checked against hand timelines."""

import pytest

from vllm_esp.planner import CostModel, Linear3, ProfileMeta
from vllm_esp.simulator.batching_engine import BatchingEngine
from vllm_esp.simulator.core import run
from vllm_esp.workloads import Request


def cost(c=0.0):
    """prefill 0.1 s + 1 ms/token (+ c·l²); decode 0.05 s + 10 ms/request; 1 ms/token transfer."""
    return CostModel(meta=ProfileMeta("toy", "fp32", 1, "paper"),
                     prefill={1: Linear3(0.1, 0.001, c)}, decode={1: Linear3(0.05, 0.01, 0.0)},
                     kv_bytes_per_token=1000, migration_bandwidth=1e6)


def solo(reqs, **kw):
    e = BatchingEngine("cp", kw.pop("cost", cost()), 1, kw.pop("blocks", 1000), 16, **kw)
    return run(reqs, [e], lambda r: e), e


def test_long_prompt_is_chunked_by_budget():
    # chunks 100, 100, 50: 0.2 + 0.2 + 0.15 -> first token 0.55; one decode 0.06 -> 0.61
    (r,), _ = solo([Request(0, 250, 2, 0.0)], token_budget=100)
    assert r.first_token == pytest.approx(0.55) and r.finish == pytest.approx(0.61)


def test_decode_and_chunk_share_an_iteration():
    # t=0    prefill r0 (50 tok): 0.15
    # t=0.15 decode r0 + chunk of r1 (99 tok, budget 100 - 1): max(0.1, 0.05) + .099 + .01
    # t=0.359 decode r0 + last token of r1: 0.1 + 0.001 + 0.01 -> both done at 0.47
    res, _ = solo([Request(0, 50, 3, 0.0), Request(1, 100, 1, 0.1)], token_budget=100)
    assert res[0].first_token == pytest.approx(0.15)
    assert res[0].finish == pytest.approx(0.47) and res[1].finish == pytest.approx(0.47)


def test_chunks_cost_exactly_one_prefill_of_attention():
    c = 1e-6
    (whole,), _ = solo([Request(0, 200, 1, 0.0)], cost=cost(c), token_budget=1000)
    (chunked,), _ = solo([Request(0, 200, 1, 0.0)], cost=cost(c), token_budget=100)
    assert whole.finish == pytest.approx(0.1 + 0.2 + c * 200 ** 2)
    assert chunked.finish == pytest.approx(whole.finish + 0.1)  # one more overhead, same work


def test_out_of_blocks_preempts_latest_and_recomputes():
    # 4 blocks of 16 = 64 tokens; two requests of 30 + 30 cannot both reach 60 tokens.
    reqs = [Request(0, 30, 30, 0.0), Request(1, 30, 30, 0.0)]
    res, e = solo(reqs, blocks=4, token_budget=100)
    assert all(r.finished for r in res)
    assert e.preemptions >= 1 and e.free == 4 and not e.running and not e.waiting
    # r1 (admitted last) is the victim: r0 is never interrupted and finishes first
    assert res[0].finish < res[1].finish
    # after the preemption r0 decodes alone until 64 tokens are free again: it never waits
    # longer than one shared iteration per token (0.07 s)
    assert res[0].finish <= 0.13 + 29 * 0.07 + 1e-9


def test_request_larger_than_group_is_rejected():
    res, e = solo([Request(0, 5000, 1, 0.0)], blocks=10)
    assert not res[0].finished and e.rejected == [0]


def test_disaggregation_hands_off_with_transfer_time():
    # prefill 100 tok: 0.2 (first token); KV transfer 100 tok x 1 ms = 0.1 -> decode side at 0.3;
    # two decodes of 0.06 -> 0.42
    dec = BatchingEngine("d", cost(), 1, 1000, 16, role="decode")
    pre = BatchingEngine("p", cost(), 1, 1000, 16, role="prefill", decode_target=dec)
    (r,) = run([Request(0, 100, 3, 0.0)], [pre, dec], lambda r: pre)
    assert r.first_token == pytest.approx(0.2) and r.finish == pytest.approx(0.42)
    assert pre.free == pre.capacity and dec.free == dec.capacity


def test_decode_side_reserves_whole_output_and_queues():
    # decode side has 4 blocks (64 tokens): r0 (30 + 30) reserved, r1 must wait for r0 to end
    dec = BatchingEngine("d", cost(), 1, 4, 16, role="decode")
    pre = BatchingEngine("p", cost(), 1, 1000, 16, role="prefill", decode_target=dec)
    res = run([Request(0, 30, 30, 0.0), Request(1, 30, 30, 0.0)], [pre, dec], lambda r: pre)
    assert all(r.finished for r in res)
    assert res[1].finish - res[0].finish == pytest.approx(29 * 0.06)
