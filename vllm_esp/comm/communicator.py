"""Point-to-point exchange among the ranks of one ESP group.

An ESP group is an ordered subset of the ranks of one process group, chosen per iteration by
the global manager. All traffic is point-to-point between members, so several disjoint ESP
groups can run concurrently over the same process group without interfering.

Every call is non-blocking: it posts all sends and receives and returns a ``Pending`` handle.
The caller computes on the data it already has and calls ``wait()`` only when it needs the
received tensors; this is how the next ring hop overlaps the current hop's compute (gloo runs
transfers on its own threads; NCCL on its own stream).

Matching rule: both sides derive message shapes from the shared per-iteration plan, so no
shape metadata travels and empty tensors are simply not sent. Tensor ``i`` of a call with
base tag ``t`` travels under tag ``t * 64 + i`` (gloo matches by (peer, tag)).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

__all__ = ["ESPCommunicator", "Pending"]

_MAX_TENSORS_PER_PEER = 64


@dataclass(slots=True)
class Pending:
    """Handle of posted transfers. ``wait()`` returns the receive buffers, filled."""

    works: list  # torch Work objects (sends and receives)
    recvs: dict[int, list[torch.Tensor]]  # peer rank -> buffers being filled
    bytes_sent: int  # bytes this call sends (payload only)
    _done: bool = field(default=False)

    def wait(self) -> dict[int, list[torch.Tensor]]:
        if not self._done:
            for w in self.works:
                w.wait()
            self._done = True
        return self.recvs

    def wait_one(self) -> list[torch.Tensor]:
        """For calls with a single source peer (ring shifts): its filled buffers."""
        (bufs,) = self.wait().values()
        return bufs


class ESPCommunicator:
    """P2P transfers over ``pg``; counts payload bytes sent per op kind.

    Args:
        pg: a process group object (from ``init_esp_process_group`` or the default group).
        rank: this process's rank in ``pg``.
    """

    def __init__(self, pg: dist.ProcessGroup | None, rank: int):
        self.pg = pg
        self.rank = rank
        self.bytes_sent = 0  # bytes, cumulative over all calls
        self.bytes_by_op: dict[str, int] = defaultdict(int)  # op name -> bytes, cumulative
        self.calls_by_op: dict[str, int] = defaultdict(int)
        self.last_call_bytes = 0  # bytes sent by the most recent call

    def reset_counters(self) -> None:
        self.bytes_sent = 0
        self.bytes_by_op.clear()
        self.calls_by_op.clear()
        self.last_call_bytes = 0

    def exchange(
        self,
        sends: Mapping[int, Sequence[torch.Tensor]],
        recvs: Mapping[int, Sequence[torch.Tensor]],
        tag: int = 0,
        op: str = "exchange",
    ) -> Pending:
        """Post sends to and receives from arbitrary peers (ranks in ``pg``).

        ``recvs[p]`` must list buffers shaped exactly like what peer ``p`` sends to us under
        the same ``tag``. Zero-element tensors are skipped on both sides.
        """
        works = []
        nbytes = 0
        for peer, tensors in sends.items():
            if peer == self.rank:
                raise ValueError("an ESP rank does not send to itself")
            if len(tensors) > _MAX_TENSORS_PER_PEER:
                raise ValueError("too many tensors for one peer in one call")
            for i, t in enumerate(tensors):
                if t.numel() == 0:
                    continue
                t = t.contiguous()
                nbytes += t.numel() * t.element_size()
                works.append(self.pg.send([t], peer, tag * _MAX_TENSORS_PER_PEER + i))
        out: dict[int, list[torch.Tensor]] = {}
        for peer, bufs in recvs.items():
            for i, b in enumerate(bufs):
                if not b.is_contiguous():
                    raise ValueError("receive buffers must be contiguous")
                if b.numel() == 0:
                    continue
                works.append(self.pg.recv([b], peer, tag * _MAX_TENSORS_PER_PEER + i))
            out[peer] = list(bufs)
        self.bytes_sent += nbytes
        self.bytes_by_op[op] += nbytes
        self.calls_by_op[op] += 1
        self.last_call_bytes = nbytes
        return Pending(works, out, nbytes)

    def ring_shift(
        self,
        send: Sequence[torch.Tensor],
        recv: Sequence[torch.Tensor],
        group_ranks: Sequence[int],
        tag: int = 1,
    ) -> Pending:
        """Send ``send`` to the next member of ``group_ranks``, receive ``recv`` from the previous.

        ``group_ranks`` is the ring order (ranks in ``pg``); this rank must be a member. With a
        group of one the call moves nothing and returns ``recv`` untouched.
        """
        k = len(group_ranks)
        if k == 1:
            return Pending([], {self.rank: list(recv)}, 0)
        me = list(group_ranks).index(self.rank)
        nxt, prv = group_ranks[(me + 1) % k], group_ranks[(me - 1) % k]
        # k == 2: next and previous are the same peer; send and receive use distinct buffers.
        p = self.exchange({nxt: send}, {prv: recv}, tag=tag, op="ring_shift")
        return Pending(p.works, {prv: p.recvs.get(prv, list(recv))}, p.bytes_sent)
