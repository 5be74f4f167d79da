"""Which ESP instances are alive: the executor learns it, the scheduler acts on it.

Both live in the EngineCore process and are built from the same ``VllmConfig`` object, so the
record is found by that config. When one instance's worker dies, vLLM's process executor of
that instance stops its remaining workers and calls its failure callback: the ESP executor
marks the instance dead here and the engine keeps serving on the others (degraded). At its
next ``schedule()`` the ESP scheduler takes the dead instance's requests back and places them
again on live instances (recompute from their tokens so far, as vLLM's preemption does).
Only when the last instance dies does the engine fail, as stock vLLM does.
"""

from __future__ import annotations

import threading

_records: dict[int, "InstanceHealth"] = {}
_lock = threading.Lock()


class InstanceHealth:
    def __init__(self, num_instances: int):
        self.alive = [True] * num_instances
        self._lock = threading.Lock()
        self._unhandled: list[int] = []  # deaths the scheduler has not acted on yet

    def mark_dead(self, instance: int) -> bool:
        """Record a death; False if it was already recorded."""
        with self._lock:
            if not self.alive[instance]:
                return False
            self.alive[instance] = False
            self._unhandled.append(instance)
            return True

    def take_new_deaths(self) -> list[int]:
        with self._lock:
            dead, self._unhandled = self._unhandled, []
            return dead

    def is_alive(self, instance: int) -> bool:
        return self.alive[instance]

    @property
    def num_alive(self) -> int:
        return sum(self.alive)


def for_config(vllm_config, num_instances: int) -> InstanceHealth:
    """The record of the engine built from ``vllm_config`` (created on first use)."""
    with _lock:
        record = _records.get(id(vllm_config))
        if record is None or len(record.alive) != num_instances:
            record = _records[id(vllm_config)] = InstanceHealth(num_instances)
        return record


def forget(vllm_config) -> None:
    with _lock:
        _records.pop(id(vllm_config), None)
