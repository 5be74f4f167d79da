"""Elastic decode in the engine: scale-up, merge and multi-master relief (scheduler side).

Mixed into ``ESPScheduler``. The decisions are the planner's (``planner.decode_plan``:
``scale_up_target``, ``relieve_master``, the rules the simulator's manager runs); this module
reads the instances' state for them and carries them out through the span manager's
hand-over (no KV is copied). vLLM preempts (recompute) only when no instance has room.
"""

from __future__ import annotations

from vllm_esp.planner.decode_plan import relieve_master, scale_up_target


class ElasticDecodeMixin:
    def _scale_up(self) -> None:
        """Before vLLM would preempt on a full instance, move decodes that need a new block to
        the instance with most room (their KV stays where it is). Preemption (recompute) is
        left to vLLM only when no other instance has a free block."""
        n = len(self.instances)
        need = [self.spans.blocks_needed(i) for i in range(n)]
        free = [self.pool.free_blocks(i) for i in range(n)]
        for i in range(n):
            if i in self.in_flight:
                continue  # its decodes are mid-step
            for r in reversed(list(self.instances[i].running)):  # vLLM's victims go first
                if need[i] <= free[i]:
                    break
                if not self.spans.can_migrate(r, i):
                    continue
                dst = self._scale_up_target(i, free, need)
                if dst is None:
                    return  # the whole pool is full: vLLM preempts (recompute)
                self.spans.migrate(r, i, dst, "merge" if self._decoding(dst) else "scale-up")
                self.pool.assign(r.request_id, dst)
                need[i] -= 1
                need[dst] += 1

    def _relieve_masters(self) -> None:
        """Multi-master decode: a spanning request whose master decodes more than
        ``esp.decode_minibatch`` requests continues on the least loaded holder of its KV
        (``planner.decode_plan.relieve_master``) when its next token needs a new block, so
        the requests sharing instances are decoded by several masters. No KV moves."""
        minibatch = self.esp.decode_minibatch
        if not minibatch:
            return
        n = len(self.instances)
        loads = {i: len(self.instances[i].running) for i in range(n)}
        if max(loads.values()) <= minibatch:
            return
        free = {i: self.pool.free_blocks(i) - self.spans.blocks_needed(i)
                for i in range(n) if i not in self.spans.reserved}
        for span in list(self.spans.spans.values()):
            r, src = span.request, span.master
            if span.keep_on_master or src in self.in_flight or \
                    not self.spans.can_migrate(r, src):
                continue
            dst = relieve_master(loads, src, span.holders, free, minibatch)
            if dst is None:
                continue
            self.spans.migrate(r, src, dst, "relieve")
            self.pool.assign(r.request_id, dst)
            loads[src] -= 1
            loads[dst] += 1
            free[dst] -= 1
            if src in free:
                free[src] += 1  # its new block is no longer needed there

    def _decoding(self, instance: int) -> bool:
        return bool(self.instances[instance].running)

    def _scale_up_target(self, src: int, free: list[int], need: list[int]) -> int | None:
        """The global manager's order (``planner.decode_plan.scale_up_target``, the rule of
        its ``fix_shortage``): an idle instance with a free block first (scale up), else the
        busy instance with the most room (a merge: both decode batches share it). Only
        instances free to take it (not reserved for a parallel prefill; one running a step
        takes the request into its queue, and the two step together from then on)."""
        room = {k: free[k] - need[k] for k in range(len(free))
                if k != src and k not in self.spans.reserved}
        return scale_up_target({k: r for k, r in room.items() if not self._decoding(k)},
                               {k: r for k, r in room.items() if self._decoding(k)})

    def _place_preempted_spans_again(self, preempted_ids) -> None:
        for rid in preempted_ids:
            self.place_span_again(rid)
