"""A deliberately simple planner policy so the simulator can be checked by hand.

Each instance hosts at most one decode batch. Every iteration: each existing batch decodes on its
instance; each instance without a batch prefills the oldest waiting request that fits there (KV
kept whole on that instance). It speaks the production plan types, so the simulator cannot tell
it from the real manager.
"""

from vllm_esp.planner import DecodeBatch, IterationPlan, KeepRange, PrefillBatch, blocks_for


class OnePerInstancePolicy:
    def plan(self, state, now):
        plan = IterationPlan()
        owned = state.batch_of_instance()
        for b in sorted(state.batches.values(), key=lambda b: b.batch_id):
            inst = min(b.instances)
            plan.decode.append(DecodeBatch(b.batch_id, sorted(b.instances),
                                           {rid: inst for rid in b.req_ids}))
        waiting = list(state.waiting)
        next_bid = state.next_batch_id
        for inst in sorted(i.instance_id for i in state.instances):
            if inst in owned or not waiting:
                continue
            req = waiting[0]
            total = req.prompt_len + req.max_output_len
            if blocks_for(total, state.block_size) > state.pool.free_blocks(inst):
                if blocks_for(total, state.block_size) > state.pool.capacity[inst]:
                    plan.rejected.append(req.req_id)
                    waiting.pop(0)
                continue
            waiting.pop(0)
            plan.prefill.append(PrefillBatch(
                [inst], [req.req_id], {req.req_id: [KeepRange(inst, 0, req.prefill_len)]},
                decode_batch_id=next_bid))
            next_bid += 1
        return plan
