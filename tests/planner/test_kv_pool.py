import pytest

from vllm_esp.planner import KVPool, blocks_for


def test_blocks_are_per_request_per_instance():
    pool = KVPool({0: 4, 1: 4}, block_size=16)
    pool.add("a", 0, 17)  # 2 blocks
    pool.add("b", 0, 1)  # its own block, not a's slack
    assert pool.used == {0: 3, 1: 0}
    assert pool.room_tokens("a", 0) == 15 + 16  # slack of a's last block + one free block
    pool.add("a", 0, 15)  # fills the slack: no new block
    assert pool.used[0] == 3


def test_overcommit_raises_and_free_releases():
    pool = KVPool({0: 2}, block_size=4)
    pool.add("a", 0, 8)
    with pytest.raises(ValueError):
        pool.add("b", 0, 1)
    pool.free("a")
    assert pool.used[0] == 0 and "a" not in pool.placement


def test_move_keeps_block_accounting():
    pool = KVPool({0: 4, 1: 4}, block_size=4)
    pool.add("a", 0, 6)
    pool.add("a", 1, 3)
    pool.move("a", 0, 1, 6)  # 3 + 6 = 9 tokens -> 3 blocks on 1
    assert pool.placement["a"] == {1: 9}
    assert pool.used == {0: 0, 1: 3}
    assert blocks_for(9, 4) == 3
