"""Dispatching: worst-case KV with backfilling, prefill bound, the one-unit cost rule."""

import pytest

from vllm_esp.planner.dispatch import reservation, scan_order
from vllm_esp.planner.latency import LatencyWeights, decode_rate, waiting_rate
from vllm_esp.planner.manager import GlobalManager, ManagerConfig

from .helpers import cluster, cost_model, make_running, req


def _admitted(plan):
    return sorted(r for p in plan.prefill for r in p.req_ids)


def test_reservation_by_hand():
    # budget 10 blocks; live: 4 blocks ending at step 3, 5 blocks ending at step 8.
    live = [(8, 5), (3, 4)]
    assert reservation(1, 10, live) == (0, 0)  # fits now: 4 + 5 + 1 = 10
    assert reservation(3, 10, live) == (3, 2)  # after step 3: 5 + 3 = 8 <= 10, 2 spare
    assert reservation(6, 10, live) == (8, 4)  # only once both ended
    assert reservation(11, 10, live)[1] < 0  # never fits


def test_worst_case_admission_and_backfill_behind_a_blocked_request():
    # pool 10 blocks of 16. r1: 50+40 tokens -> 6+1 blocks; r2: 30+20 -> 4+1 (7+5 > 10: the
    # head, reserved at r1's end, step 41, with 10-5 = 5 blocks spare then); r3: 10+5 -> 1+1,
    # ends at step 6 < 41: passes r2.
    st = cluster([10])
    for r in (req("r1", 50, 40), req("r2", 30, 20), req("r3", 10, 5)):
        st.add_request(r)
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    assert _admitted(plan) == ["r1", "r3"]


def test_backfill_never_delays_the_head():
    # running "d": 15-token prompt, 2 of 20 tokens out -> 35 tokens at its end,
    # blocks_for(35) + 1 = 4 worst-case blocks, 18 steps left. Head "big": 100+20 tokens ->
    # 8+1 = 9 blocks, 4+9 > 10 until d ends (t_head = 18), then 10-9 = 1 block spare.
    # "long" (10+20 -> 3 blocks) fits now but ends at step 21 > 18 and 3 > 1: it waits.
    # "short" (10+5 -> 2 blocks) ends at step 6 <= 18: it passes the head.
    st = cluster([10])
    make_running(st, 0, "d", {0: 16}, prompt=15, out=20)
    for r in (req("big", 100, 20), req("long", 10, 20), req("short", 10, 5)):
        st.add_request(r)
    plan = GlobalManager(cost_model()).plan(st, 1e6)  # old enough: no cost-rule refusals
    assert _admitted(plan) == ["short"]


def test_prefill_time_bound_exempts_the_first_request():
    # k=1: T = 0.01 + 1e-4 * S1. One 1000-token prompt: 0.11 s; two: 0.21 s > 0.15 s.
    st = cluster([200])
    for r in (req("a", 1000, 1), req("b", 1000, 1)):
        st.add_request(r)
    plan = GlobalManager(cost_model(), ManagerConfig(max_prefill_time=0.15)).plan(st, 0.0)
    assert _admitted(plan) == ["a"]
    plan = GlobalManager(cost_model(), ManagerConfig(max_prefill_time=0.05)).plan(st, 0.0)
    assert _admitted(plan) == ["a"]  # alone over the bound, but it would otherwise starve


def _busy_instance():
    # one instance decoding "d": prompt 10, 1 token out of 20 expected -> 19 steps left,
    # each step decode_time(1, 1, 11) = 0.01 + 1e-3 + 1.1e-5 = 0.011011 s -> 0.20921 s left.
    st = cluster([200])
    make_running(st, 0, "d", {0: 10}, prompt=10, out=20)
    return st


def test_rates_by_hand():
    d = _busy_instance().running["d"]
    assert decode_rate(d) == pytest.approx(1 / 19 + 1 / 30)
    assert waiting_rate(req("x", 100, 10)) == pytest.approx(1 / 100 + 1 / 110)
    w = LatencyWeights(per_token=2.0, input_token=0.5, output_token=4.0)
    assert decode_rate(d, w) == pytest.approx(1 / (19 * 4.0) + 1 / (30 * 2.0))
    assert waiting_rate(req("x", 100, 10), w) == pytest.approx(1 / 50 + 1 / 220)


def test_short_prompt_pauses_a_decode_at_once():
    # T(1, 100) = 0.02 s. Cost 0.02 * (1/19 + 1/30) = 0.00172; gain (1/100 + 1/110) * 0.20921
    # (the decode it does not wait for) = 0.00399 >= cost: admitted on arrival.
    st = _busy_instance()
    st.add_request(req("new", 100, 10, arrival=0.0))
    plan = GlobalManager(cost_model()).plan(st, now=0.0)
    assert _admitted(plan) == ["new"] and plan.paused_batch_ids == [0] and plan.decode == []
    assert plan.prefill[0].decode_batch_id == 0  # its KV lands on batch 0's instance: joins it


def test_long_prompt_waits_until_its_age_pays_for_the_pause():
    # l = 2000: T = 0.21 s; cost 0.21 * 0.085965 = 0.018053; rate 1/2000 + 1/2010 = 0.000998
    # gain (wait + max(0.21, 0.20921)) * rate >= cost from wait = 17.88 s on.
    st = _busy_instance()
    st.add_request(req("long", 2000, 10, arrival=0.0))
    mgr = GlobalManager(cost_model())
    plan = mgr.plan(st, now=17.8)
    assert _admitted(plan) == [] and [d.batch_id for d in plan.decode] == [0]
    assert _admitted(mgr.plan(st, now=17.95)) == ["long"]


def test_slo_weights_price_both_sides():
    # SLO (per-token 100, input 0.1, output 100 s/token): decode rate 1/1900 + 1/3000,
    # cost 0.21 * 0.000860 = 0.000181; waiting rate 1/200 + 1/201000 -> gain at once
    # 0.005005 * 0.21 = 0.00105 > cost. Without a tight input SLO it waits (test above).
    st = _busy_instance()
    st.add_request(req("long", 2000, 10, arrival=0.0))
    cfg = ManagerConfig(slo=LatencyWeights(per_token=100.0, input_token=0.1, output_token=100.0))
    assert _admitted(GlobalManager(cost_model(), cfg).plan(st, now=0.0)) == ["long"]


def _busy_batch(out):
    # 50 decodes on one instance (prompt 10, 2 of ``out`` tokens produced), 600 blocks.
    st = cluster([600])
    for i in range(50):
        make_running(st, 0, f"d{i}", {0: 11}, prompt=10, out=out)
    st.add_request(req("long", 2000, 10, arrival=0.0))
    return st


def test_starved_prompt_stops_deferring_after_twice_its_alone_time():
    # W = 50 (1/99 + 1/110) = 0.96/s; drain = 98 steps x decode_time(1, 50, 600) = 5.94 s.
    # "long": T = 0.21 s, cost 0.21 x 0.96 = 0.20; rate 1/2000 + 1/2010: by WSPT it would wait
    # until age 196 s. Alone it takes 0.21 + 10 x decode_time(1, 1, 2005) = 0.34 s, so after
    # 2 x 0.34 = 0.68 s (starvation_factor 2) it pauses the batch: its 0.21 s pause is shorter
    # than the 5.94 s the batch needs anyway, so the batch would never have drained for it.
    mgr = GlobalManager(cost_model())
    assert _admitted(mgr.plan(_busy_batch(100), now=0.6)) == []
    assert _admitted(mgr.plan(_busy_batch(100), now=0.7)) == ["long"]


def test_no_starvation_pause_longer_than_the_batch_needs():
    # the same, but the decodes end in 1 step (drain 0.06 s < T = 0.21 s): waiting costs the
    # prompt less than stalling 50 nearly finished decodes, whatever its age.
    mgr = GlobalManager(cost_model())
    assert _admitted(mgr.plan(_busy_batch(3), now=5.0)) == []


def test_scan_order_oldest_then_shortest():
    q = [req(f"r{i}", p) for i, p in enumerate([900, 800, 700, 50, 600, 40, 40, 500])]
    got = [r.req_id for r in scan_order(q, 3, 2)]
    assert got == ["r0", "r1", "r2", "r5", "r6"]  # 3 oldest, then the 2 shortest (ties: older)
    assert scan_order(q, 6, 2) is q


def test_short_prompts_pass_a_queue_of_refused_long_ones():
    # four 2000-token prompts the cost rule refuses at t=0 fill the oldest-first window
    # (max_prefill_requests + lookahead = 4); the 100-token prompt behind them is found
    # among the shortest of the rest and admitted.
    st = _busy_instance()
    for i in range(4):
        st.add_request(req(f"long{i}", 2000, 10))
    st.add_request(req("short", 100, 10))
    cfg = ManagerConfig(max_prefill_requests=2, lookahead=2)
    assert _admitted(GlobalManager(cost_model(), cfg).plan(st, now=0.0)) == ["short"]


def test_prompt_larger_than_the_pool_is_rejected():
    st = cluster([2, 2])
    st.add_request(req("huge", 64, 1))
    plan = GlobalManager(cost_model()).plan(st, 0.0)
    assert plan.rejected == ["huge"]
