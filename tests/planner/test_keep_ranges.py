import pytest

from vllm_esp.planner.keep_ranges import pack_keep_ranges


def _tiles(ranges, length):
    pos = 0
    for k in sorted(ranges, key=lambda k: k.begin):
        assert k.begin == pos
        pos = k.end
    assert pos == length


def test_request_larger_than_any_instance_spans_several():
    # 100 tokens, block 16: 7 blocks. Instances have 3, 2, 4 free: sorted by room 2(4), 0(3), 1(2)
    free = {0: 3, 1: 2, 2: 4}
    keep = pack_keep_ranges([("big", 100)], free, 16)
    got = [(k.instance_id, k.begin, k.end) for k in keep["big"]]
    assert got == [(2, 0, 64), (0, 64, 100)]
    assert free == {0: 0, 1: 2, 2: 0}  # 3 blocks for 36 tokens on instance 0
    _tiles(keep["big"], 100)


def test_packing_uses_exactly_ceil_blocks_and_few_instances():
    free = {0: 10, 1: 10, 2: 10}
    keep = pack_keep_ranges([("a", 33), ("b", 200), ("c", 16)], free, 16)
    assert sum(10 - f for f in free.values()) == 3 + 13 + 1
    used = {k.instance_id for rs in keep.values() for k in rs}
    assert len(used) == 2  # 17 blocks fit on two instances; the third stays free to scale down
    for rid, n in (("a", 33), ("b", 200), ("c", 16)):
        _tiles(keep[rid], n)


def test_no_room_raises():
    with pytest.raises(ValueError):
        pack_keep_ranges([("a", 100)], {0: 2}, 16)
