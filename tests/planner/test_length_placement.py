"""The length-aware placement rules (``planner.placement``), pure functions."""

from vllm_esp.planner.placement import least_work_instance, reroute_waiting


def test_least_work_among_those_with_room():
    work, room = {0: 5.0, 1: 1.0, 2: 0.5}, {0: 10, 1: 10, 2: 1}
    assert least_work_instance([0, 1, 2], work, room, need=4) == 1  # 2 has no room
    assert least_work_instance([0, 1, 2], work, room, need=1) == 2


def test_ties_go_to_headroom_then_turn_and_no_room_waits_where_most_headroom():
    assert least_work_instance([1, 0], {0: 0.0, 1: 0.0}, {0: 5, 1: 5}, need=1) == 1
    assert least_work_instance([0, 1], {0: 0.0, 1: 0.0}, {0: 4, 1: 5}, need=1) == 1
    assert least_work_instance([0, 1], {0: 0.0, 1: 9.0}, {0: 2, 1: 3}, need=8) == 1


def test_reroute_moves_the_head_of_the_busiest_queue_to_an_idle_instance():
    work = {0: 10.0, 1: 2.0, 2: 0.0}
    heads = {0: ("a", 1.0, 2), 1: ("b", 1.5, 2)}
    assert reroute_waiting(work, heads, takers={2: 8}) == [("a", 0, 2)]
    # no room on the taker, or no gain (the taker would end up with as much work): no move
    assert reroute_waiting(work, heads, takers={2: 1}) == []
    assert reroute_waiting({0: 3.0, 2: 2.0}, {0: ("a", 1.0, 1)}, takers={2: 8}) == []


def test_each_taker_and_source_moves_at_most_one_request():
    work = {0: 10.0, 1: 9.0, 2: 0.0, 3: 0.5}
    heads = {0: ("a", 1.0, 1), 1: ("b", 1.0, 1)}
    assert reroute_waiting(work, heads, takers={2: 8, 3: 8}) == [("a", 0, 2), ("b", 1, 3)]
