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

NCCL: separate blocking sends posted before the matching receives deadlock once a message
exceeds NCCL's internal buffer (a ring shift of two instances has both ranks send K and V
first). Every call on a group that coalesces (``_start_coalescing`` / ``_end_coalescing``,
NCCL's grouped p2p, what ``torch.distributed.batch_isend_irecv`` does) posts all its sends
and receives as one group. Gloo buffers sends; its calls are posted one by one. When the
instances share one GPU, NCCL cannot form the group (duplicate device): the group is gloo
and device tensors travel through host memory (``host_staging``).
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
    landing: list = field(default_factory=list)  # (host buffer, device buffer) to copy back
    _done: bool = field(default=False)

    def wait(self) -> dict[int, list[torch.Tensor]]:
        if not self._done:
            for w in self.works:
                w.wait()
            for host, dev in self.landing:
                dev.copy_(host)
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

    def __init__(self, pg: dist.ProcessGroup | None, rank: int, device: torch.device | None = None,
                 host_staging: bool = False):
        self.pg = pg
        self.rank = rank
        # group p2p calls (NCCL) on this device; None posts each op on its own (gloo)
        self.coalesce_device = device if device is not None and _coalesces(pg) else None
        self.host_staging = host_staging  # device tensors travel through host memory
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
        ops, nbytes, out, landing = [], 0, {}, []
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
                ops.append(("send", t.cpu() if self.host_staging else t, peer,
                            tag * _MAX_TENSORS_PER_PEER + i))
        for peer, bufs in recvs.items():
            for i, b in enumerate(bufs):
                if not b.is_contiguous():
                    raise ValueError("receive buffers must be contiguous")
                if b.numel() == 0:
                    continue
                if self.host_staging and b.device.type != "cpu":
                    host = torch.empty(b.shape, dtype=b.dtype)
                    landing.append((host, b))
                    b = host
                ops.append(("recv", b, peer, tag * _MAX_TENSORS_PER_PEER + i))
            out[peer] = list(bufs)
        works = self._post(ops)
        self.bytes_sent += nbytes
        self.bytes_by_op[op] += nbytes
        self.calls_by_op[op] += 1
        self.last_call_bytes = nbytes
        return Pending(works, out, nbytes, landing)

    def _post(self, ops: list[tuple[str, torch.Tensor, int, int]]) -> list:
        """Post the p2p ops: as one NCCL group when the group coalesces, else one by one."""
        if not ops:
            return []
        if self.coalesce_device is not None:
            self.pg._start_coalescing(self.coalesce_device)
        works = [self.pg.send([t], peer, tag) if kind == "send" else
                 self.pg.recv([t], peer, tag) for kind, t, peer, tag in ops]
        if self.coalesce_device is not None:
            work = self.pg._end_coalescing(self.coalesce_device)
            return [work] if work is not None else works
        return works

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
        return Pending(p.works, {prv: p.recvs.get(prv, list(recv))}, p.bytes_sent, p.landing)


def _coalesces(pg) -> bool:
    """Does ``pg`` group its p2p ops (NCCL)? Gloo's groups do not."""
    if pg is None or not hasattr(pg, "_start_coalescing"):
        return False
    try:
        return pg._get_backend_name() == "nccl"
    except Exception:  # older torch: ask the backend object
        return "nccl" in type(pg).__name__.lower()
