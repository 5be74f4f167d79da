"""Instances on their own clocks: each instance's step runs in a thread of its own, and an
engine step ("tick") returns as soon as one of them is done.

LoongServe runs each ESP group as an independent macro-iteration: a long ring prefill on some
instances never stalls decoding on the others. vLLM's EngineCore still drives the engine one
step at a time (``schedule`` -> ``execute_model`` -> ``update_from_output``); here each of its
steps launches the instances the scheduler started (``ESPSchedulerOutput.launch``: alive, not
busy, and not linked by spread requests to a busy one) and collects whichever finished. An
instance's step is vLLM's own two calls (``execute_model``, then ``sample_tokens`` with the
bitmask its scheduler gave when it was scheduled), made by its thread back to back. With idle
instances the tick also returns after ``POLL_S`` so that new requests reach them while others
keep running; ``lockstep`` waits for every instance (the behaviour before, for comparison).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from vllm_esp.integration.outputs import LOST_STEP

POLL_S = 0.02  # with an idle instance, a tick ends after this long even if none finished


class InstanceSteps:
    def __init__(self, instances: list, health, lockstep: bool = False):
        self.instances, self.health, self.lockstep = instances, health, lockstep
        self._threads = ThreadPoolExecutor(max_workers=health and len(health.alive) or 1,
                                           thread_name_prefix="esp-instance-step")
        self.running: dict[int, Future] = {}
        self._done: dict[int, object] = {}  # finished while the engine was elsewhere (drain)
        # (instance, start, end, tokens) per step, monotonic seconds: the engine's timeline
        self.log: deque[tuple[int, float, float, int]] = deque(maxlen=100_000)

    def launch(self, index: int, scheduler_output, grammar) -> None:
        if index in self.running:
            raise RuntimeError(f"ESP instance {index} started a step while running one")
        self.running[index] = self._threads.submit(self._step, index, scheduler_output, grammar)

    def _step(self, index: int, scheduler_output, grammar):
        start = time.monotonic()
        inst = self.instances[index]
        out = inst.execute_model(scheduler_output)
        if out is None:  # vLLM's runner samples in a second call
            out = inst.sample_tokens(grammar)
        self.log.append((index, start, time.monotonic(),
                         scheduler_output.total_num_scheduled_tokens))
        return out

    def collect(self) -> dict[int, object]:
        """Outputs of the instances whose step ended (at least one of those running, unless
        an instance is idle and ``POLL_S`` passed first). A step that failed because an
        instance died gives ``LOST_STEP``; any other failure is raised."""
        if self.running:
            idle = any(alive and i not in self.running
                       for i, alive in enumerate(self.health.alive))
            if self.lockstep:
                wait(list(self.running.values()))
            elif not self._done:
                wait(list(self.running.values()), timeout=POLL_S if idle else None,
                     return_when=FIRST_COMPLETED)
        for i, fut in list(self.running.items()):
            if fut.done():
                del self.running[i]
                self._done[i] = self._outcome(i, fut)
        done, self._done = self._done, {}
        return done

    def drain(self) -> None:
        """Let every running step finish (before an RPC to all workers); its output is
        handed out by the next ``collect``."""
        for i, fut in list(self.running.items()):
            wait([fut])
            del self.running[i]
            self._done[i] = self._outcome(i, fut)

    def _outcome(self, index: int, fut: Future):
        try:
            return fut.result()
        except Exception:
            time.sleep(0.2)  # let vLLM's monitor notice a dead worker first
            if self.health.num_alive == len(self.health.alive):
                raise  # nobody died: a real error
            return LOST_STEP

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
