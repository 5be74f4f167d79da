"""Which prompt positions each member of a ring prefill computes (pure, no engine)."""

from __future__ import annotations

import pytest

from vllm_esp.ops.plan import stripes


def test_equal_chunks_give_loongserve_striping():
    assert [p.tolist() for p in stripes([4, 4, 4])] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


@pytest.mark.parametrize("sizes", [[1920, 1920, 1920, 960], [128, 128, 5], [3, 1], [1],
                                   [256, 256, 256, 256], [640, 1]])
def test_every_position_once_rows_as_scheduled_master_samples_the_last(sizes):
    got = [p.tolist() for p in stripes(sizes)]
    assert [len(p) for p in got] == sizes  # each member computes as many rows as it has
    assert sorted(t for p in got for t in p) == list(range(sum(sizes)))
    assert all(p == sorted(p) for p in got)  # rows in position order
    assert got[-1][-1] == sum(sizes) - 1  # the master's last row is the one vLLM samples


def test_work_is_balanced_over_members_with_unequal_chunks():
    """Causal attention work of a row grows with its position: every member's rows have
    about the same mean position, whatever its chunk's place in the prompt (a contiguous
    split gives the first chunk 1/7 of the last one's)."""
    sizes = [1920, 1920, 1920, 960]
    means = [sum(p) / len(p) for p in stripes(sizes)]
    assert max(means) / min(means) < 1.01, means


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        stripes([4, 0])  # the master must compute the last position
    with pytest.raises(ValueError):
        stripes([])


def test_the_planner_spreads_only_where_its_profile_measured_a_gain():
    from vllm_esp.planner.prefill_groups import PrefillPlanner
    from tests.planner.helpers import cost_model
    from vllm_esp.planner.cost_model import Linear3

    def model(prefill):
        return cost_model(prefill, decode={1: Linear3(0.001, 1e-5, 1e-8)})

    two_wins_long = PrefillPlanner(model({1: Linear3(0.001, 2e-5, 1e-9),
                                          2: Linear3(0.006, 1e-5, 0.5e-9)}), 128)

    def instances(planner, prompt, free):
        groups, _ = planner.plan([prompt], free)
        return len(groups[0].instances)

    assert instances(two_wins_long, 1500, [15, 15, 15]) == 2
    assert instances(two_wins_long, 200, [15, 15, 15]) == 1
    assert instances(two_wins_long, 1500, [15]) == 1  # one instance free
    only_k1 = PrefillPlanner(model({1: Linear3(0.001, 2e-5, 1e-9)}), 128)
    assert instances(only_k1, 15000, [200, 200, 200, 200]) == 1  # never extrapolates
