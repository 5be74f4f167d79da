"""The discrete-event loop: arrivals, engines that run one iteration at a time, and hand-offs.

A deployment is a set of *engines*. An engine is one scheduler with one iteration clock: the
ESP engine (all instances in lockstep under the global manager, as in the real executor), one
replica of a data-parallel deployment, or the prefill / decode side of a disaggregated one.
Engines never share instances, so they run concurrently; the loop only orders their events.

Events at equal times are processed in a fixed order (by time, then by a sequence number
assigned when the event was created), and nothing here reads a clock or a global random state:
a run is a pure function of its inputs, which is what "same seed, same result" needs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vllm_esp.metrics.results import RequestResult
from vllm_esp.workloads.types import Request


@dataclass(slots=True)
class Handoff:
    """A request leaving one engine for another at ``time`` (e.g. KV sent prefill -> decode)."""

    time: float  # s, when it arrives at ``target``
    target: "Engine"
    request: Request
    state: object = None  # engine-specific payload (e.g. tokens already generated)


@dataclass(slots=True)
class Progress:
    """Per-request timestamps the engines report; turned into ``RequestResult``s at the end."""

    first_token: dict[int, float] = field(default_factory=dict)  # request_id -> s
    finish: dict[int, float] = field(default_factory=dict)  # request_id -> s
    rejected: set[int] = field(default_factory=set)  # request_ids that can never be served

    def token(self, rid: int, t: float) -> None:
        self.first_token.setdefault(rid, t)

    def done(self, rid: int, t: float) -> None:
        self.first_token.setdefault(rid, t)
        self.finish[rid] = t


class Engine(Protocol):
    """What the loop needs from an engine."""

    name: str

    def add(self, req: Request, now: float, state: object = None) -> None:
        """Queue ``req`` (arriving now, or handed over with ``state``)."""

    def start(self, now: float) -> float | list[float] | None:
        """Plan and start one iteration at ``now``; return its end time, or None if idle.

        An engine with ``concurrent = True`` runs several groups with their own clocks: the
        loop calls ``start`` at every event that concerns it (not only when it is idle), it
        returns the end times of the groups it just started, and ``complete(now)`` finishes
        every group ending at or before ``now``.
        """

    def complete(self, now: float, progress: Progress) -> list[Handoff]:
        """Finish the running iteration at ``now``: report tokens, return hand-offs."""


Router = Callable[[Request], "Engine"]


def run(
    requests: list[Request],
    engines: list[Engine],
    route: Router,
    horizon: float = math.inf,
) -> list[RequestResult]:
    """Simulate ``requests`` (sorted by arrival) until all finish or ``horizon`` seconds pass.

    Requests not finished by the horizon get ``finish = inf``: they count as SLO violations.
    """
    progress = Progress()
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, payload: object) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, payload))
        seq += 1

    for r in requests:
        push(r.arrival, "arrive", r)
    busy: dict[int, bool] = {id(e): False for e in engines}

    def kick(e: Engine, now: float) -> None:
        concurrent = getattr(e, "concurrent", False)
        if concurrent or not busy[id(e)]:
            ends = e.start(now)
            if ends is None:
                return
            for end in sorted(set(ends if isinstance(ends, list) else [ends])):
                if end < now:
                    raise RuntimeError(f"{e.name}: iteration ends before it starts")
                busy[id(e)] = True
                push(end, "done", e)

    while events:
        t, _, kind, payload = heapq.heappop(events)
        if t > horizon:
            break
        if kind == "arrive":
            e = route(payload)
            e.add(payload, t)
            kick(e, t)
        elif kind == "handoff":
            h: Handoff = payload
            h.target.add(h.request, t, h.state)
            kick(h.target, t)
        else:  # "done"
            e = payload
            busy[id(e)] = False
            for h in e.complete(t, progress):
                push(h.time, "handoff", h)
            kick(e, t)
    inf = math.inf
    return [
        RequestResult(r.request_id, r.prompt_len, r.output_len, r.arrival,
                      progress.first_token.get(r.request_id, inf),
                      progress.finish.get(r.request_id, inf))
        for r in requests
    ]


def round_robin(engines: list[Engine]) -> Router:
    """Send the i-th arriving request to ``engines[i % n]`` (data-parallel replicas)."""
    state = {"i": 0}

    def route(req: Request) -> Engine:
        e = engines[state["i"] % len(engines)]
        state["i"] += 1
        return e

    return route
