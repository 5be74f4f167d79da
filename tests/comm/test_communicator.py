"""Communicator: ring shift over arbitrary ordered subsets, exchange, byte counters."""

import pytest
import torch

from vllm_esp.comm import ESPCommunicator


def _ring(comm, group, n_rows):
    me = group.index(comm.rank)
    k = len(group)
    prv = (me - 1) % k
    send = [torch.full((n_rows[me], 3), float(comm.rank)), torch.arange(n_rows[me] * 2.0)]
    recv = [torch.empty(n_rows[prv], 3), torch.empty(n_rows[prv] * 2)]
    p = comm.ring_shift(send, recv, group)
    got = p.wait_one()
    return [g.clone() for g in got], p.bytes_sent, comm.bytes_by_op["ring_shift"]


@pytest.mark.parametrize("group", [[0], [2, 0], [3, 1, 2], [1, 3, 0, 2]])
def test_ring_shift_arbitrary_ordered_subsets(esp_world, group):
    n_rows = [(i * 3 + 1) % 4 for i in range(len(group))]  # includes an empty shard (0)
    args = [(group, n_rows) if r in group else None for r in range(esp_world.size)]
    res = esp_world.run(_ring, args)
    k = len(group)
    for me, rank in enumerate(group):
        got, nbytes, counted = res[rank]
        prv = (me - 1) % k
        if k == 1:  # nothing moves: the receive buffers come back untouched
            assert nbytes == 0
            continue
        assert torch.equal(got[0], torch.full((n_rows[prv], 3), float(group[prv])))
        assert torch.equal(got[1], torch.arange(n_rows[prv] * 2.0))
        assert nbytes == counted == n_rows[me] * 3 * 4 + n_rows[me] * 2 * 4
    for r in range(esp_world.size):
        if r not in group:
            assert res[r] is None


def _star(comm, master, peers):
    if comm.rank == master:
        p = comm.exchange({q: [torch.full((2, 2), float(q))] for q in peers},
                          {q: [torch.empty(3, dtype=torch.float64)] for q in peers}, tag=5)
        got = p.wait()
        return {q: got[q][0].tolist() for q in peers}, comm.bytes_sent
    p = comm.exchange({master: [torch.full((3,), comm.rank + 0.5, dtype=torch.float64)]},
                      {master: [torch.empty(2, 2)]}, tag=5)
    return p.wait()[master][0].tolist(), comm.bytes_sent


def test_master_peer_exchange_and_bytes(esp_world):
    res = esp_world.run(_star, [(2, [0, 3]), None, (2, [0, 3]), (2, [0, 3])])
    got, nbytes = res[2]
    assert got == {0: [0.5] * 3, 3: [3.5] * 3}
    assert nbytes == 2 * 4 * 4
    assert res[0] == ([[0.0, 0.0], [0.0, 0.0]], 3 * 8)
    assert res[3][0] == [[3.0, 3.0], [3.0, 3.0]]


def test_self_send_is_rejected():
    comm = ESPCommunicator(None, 0)
    with pytest.raises(ValueError):
        comm.exchange({0: [torch.zeros(1)]}, {})


def _late_partner(comm, group, delay_s):
    import time

    if comm.rank == group[1]:
        time.sleep(delay_s)
    t0 = time.perf_counter()
    p = comm.ring_shift([torch.ones(1000)], [torch.empty(1000)], group)
    posted = time.perf_counter() - t0
    got = p.wait_one()[0]
    return posted, time.perf_counter() - t0, float(got.sum())


def test_ring_shift_posts_without_blocking(esp_world):
    """Posting returns at once although the partner is late; only wait() blocks."""
    group = [0, 3]
    res = esp_world.run(_late_partner, [(group, 1.0), None, None, (group, 1.0)])
    posted, waited, total = res[0]
    assert posted < 0.3 and waited > 0.7 and total == 1000.0


class _NcclLikeGroup:
    """Records how the communicator posts p2p ops on a group that coalesces (NCCL)."""

    def __init__(self):
        self.log = []

    def _get_backend_name(self):
        return "nccl"

    def _start_coalescing(self, device):
        self.log.append(("start", str(device)))

    def _end_coalescing(self, device):
        self.log.append(("end", str(device)))
        return _Done()

    def send(self, tensors, peer, tag):
        self.log.append(("send", peer, tag))
        return _Done()

    def recv(self, tensors, peer, tag):
        self.log.append(("recv", peer, tag))
        return _Done()


class _Done:
    def wait(self):
        return True


def test_nccl_ring_shift_is_one_grouped_p2p_call():
    """Two instances shifting K and V to each other: with separate blocking NCCL sends both
    would wait for a receive that is never posted (above NCCL's buffer); grouped, the sends
    and receives of the call form one NCCL group and one work object."""
    pg = _NcclLikeGroup()
    comm = ESPCommunicator(pg, 0, device=torch.device("cpu"))
    send = [torch.ones(4, 2), torch.ones(4, 2)]
    recv = [torch.empty(4, 2), torch.empty(4, 2)]
    p = comm.ring_shift(send, recv, [0, 1])
    kinds = [e[0] for e in pg.log]
    assert kinds == ["start", "send", "send", "recv", "recv", "end"]
    assert len(p.works) == 1 and p.wait_one() is not None


def test_gloo_posts_each_op():
    pg = _NcclLikeGroup()
    pg._get_backend_name = lambda: "gloo"
    comm = ESPCommunicator(pg, 0, device=torch.device("cpu"))
    p = comm.exchange({1: [torch.ones(2)]}, {1: [torch.empty(2)]}, tag=3)
    assert [e[0] for e in pg.log] == ["send", "recv"] and len(p.works) == 2
