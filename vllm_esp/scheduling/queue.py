"""A waiting queue ordered by a key that changes over time (estimated remaining work, aging).

vLLM's priority queue is a heap keyed by a request's fixed ``priority``; our keys move every
iteration (aging, re-prediction), and mutating keys inside a heap corrupts it. The queue is small
(the waiting requests of one instance), so it is a list that is re-sorted lazily: any insertion
or an explicit ``invalidate()`` (called once per step by the scheduler, after it updated the
clock) marks it dirty and the next peek/pop/iteration sorts it. Within one scheduling pass the
key function sees one clock, so the order is stable during the pass.

``prepend_request(s)`` exist in the interface for FCFS semantics (put a preempted or skipped
request back in front); here the key decides the position, which is what a priority queue means.
``pin_front`` is the one exception: the first chunk of an ESP ring prefill must run in the step
its other chunks run (they are computed together), so it stays ahead of every keyed request
until it leaves the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request, RequestStatus


class ScoredRequestQueue(RequestQueue):
    def __init__(self, key: Callable[[Request], tuple]):
        self._key = key
        self._items: list[Request] = []
        self._dirty = False
        self._pinned: list[Request] = []  # ahead of the keyed order, in pin order

    def invalidate(self) -> None:
        self._dirty = True

    def _sorted(self) -> list[Request]:
        if self._dirty:
            self._items.sort(key=self._key)
            if self._pinned:
                self._pinned = [r for r in self._pinned if r.status == RequestStatus.WAITING]
                pinned = {id(r): n for n, r in enumerate(self._pinned)}
                self._items.sort(key=lambda r: pinned.get(id(r), len(pinned)))  # stable
            self._dirty = False
        return self._items

    def pin_front(self, request: Request) -> None:
        """``request`` (in the queue) goes ahead of every keyed request, after the requests
        pinned before it, until it is scheduled or removed."""
        if not any(r is request for r in self._pinned):
            self._pinned.append(request)
        self._dirty = True

    def _unpin(self, request: Request) -> None:
        if self._pinned:
            self._pinned = [r for r in self._pinned if r is not request]

    def add_request(self, request: Request) -> None:
        self._items.append(request)
        self._dirty = True

    def pop_request(self) -> Request:
        items = self._sorted()
        if not items:
            raise IndexError("pop from an empty queue")
        return items.pop(0)  # a pin outlives a pop: vLLM pops a skipped request, then
        # puts it back; once it is scheduled (or finished) the next sort drops the pin

    def peek_request(self) -> Request:
        items = self._sorted()
        if not items:
            raise IndexError("peek from an empty queue")
        return items[0]

    def prepend_request(self, request: Request) -> None:
        self.add_request(request)

    def prepend_requests(self, requests: Iterable[Request]) -> None:
        for request in requests:
            self.add_request(request)

    def remove_request(self, request: Request) -> None:
        self._items.remove(request)
        self._unpin(request)

    def remove_requests(self, requests: Iterable[Request]) -> None:
        drop = set(id(r) for r in requests)
        self._items = [r for r in self._items if id(r) not in drop]
        self._pinned = [r for r in self._pinned if id(r) not in drop]

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._sorted()))
