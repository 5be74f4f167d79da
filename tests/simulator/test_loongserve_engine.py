"""LoongServe's execution model: lockstep steps, dispatch every 10 steps, macro-iterations
whose decode group keeps decoding while a prefill runs elsewhere, greedy refill."""

import pytest

from vllm_esp.planner.policies import make_policy
from vllm_esp.simulator.core import run
from vllm_esp.simulator.loongserve_engine import LoongServeEngine
from vllm_esp.workloads import Request

from ..planner.helpers import cost_model


def _engine(cfg=None):
    pol = make_policy("loongserve", cost_model(), cfg)
    return LoongServeEngine("loongserve", pol, cost_model(), 2, 1000, 16, keep_trace=True,
                            validate=True)


def test_decode_runs_on_while_a_macro_prefill_runs_elsewhere():
    # "d" (100 tokens) prefills alone at t=0 on instance 0 (T(1) = 0.02 s beats T(2) = 0.025).
    # "p" (5000 tokens) arrives at once but is only dispatched after 10 decode steps
    # (max_wait_tokens). Then the isolated instance 1 prefills it in T(1, 5000) = 0.51 s
    # (slower than T(2) = 0.27 s by 0.24 s < the estimated wait); pausing d would gain
    # 0.24/5000 < 0.27 * 1²/11 slowdown, so d keeps decoding on its own clock meanwhile.
    reqs = [Request(0, 100, 200, 0.0), Request(1, 5000, 2, 0.0)]
    e = _engine()
    res = run(reqs, [e], lambda r: e)
    assert all(r.finished for r in res)
    pre = [(it.start, it.end) for it in e.trace for insts, rids in it.prefill if rids == ("1",)]
    assert len(pre) == 1 and pre[0][1] - pre[0][0] == pytest.approx(0.51)
    start, end = pre[0]
    before = [it for it in e.trace if it.decode and it.start < start]
    during = [it for it in e.trace if it.decode and start <= it.start < end]
    assert len(before) == 10  # dispatch waits for max_wait_tokens decode steps
    assert len(during) >= 40 and all(it.decode == [((0,), 1)] for it in during)
    assert res[1].first_token == pytest.approx(end)


def test_finished_group_refills_greedily_inside_the_macro_iteration():
    # As above, but "d" generates 13 tokens: it ends 2 steps into p's macro-iteration
    # (t ~ 0.15 s; the macro runs to ~0.64 s). Its emptied instance 0 then takes "c"
    # (500 tokens, arriving at 0.2 s) greedily: T(1, 500) = 0.06 s ends before the macro,
    # so c's first token comes at ~0.26 s, long before p's (without the refill c would wait
    # for the macro-iteration to end).
    reqs = [Request(0, 100, 13, 0.0), Request(1, 5000, 2, 0.0), Request(2, 500, 2, 0.2)]
    e = _engine()
    res = run(reqs, [e], lambda r: e)
    assert all(r.finished for r in res)
    assert res[0].finish < 0.2 < res[1].first_token
    assert res[2].first_token == pytest.approx(0.2 + 0.06)
    assert res[2].first_token < res[1].first_token


def test_prefill_dp_keeps_one_group_per_macro_iteration():
    # LoongServe's DP pruning never splits a macro-iteration's prompts into several groups
    # (tests/planner/test_loongserve.py): two prompts dispatched together (after d's 10
    # decode steps) share one prefill group on the three free instances' best prefix.
    reqs = [Request(0, 100, 50, 0.0), Request(1, 3000, 2, 0.01), Request(2, 100, 2, 0.01)]
    pol = make_policy("loongserve", cost_model(), None)
    e = LoongServeEngine("loongserve", pol, cost_model(), 4, 1000, 16, keep_trace=True,
                         validate=True)
    run(reqs, [e], lambda r: e)
    groups = [p for it in e.trace for p in it.prefill if "1" in p[1] or "2" in p[1]]
    assert len(groups) == 1 and groups[0][1] == ("1", "2") and 0 not in groups[0][0]
