"""Keep serving when an ESP instance dies (engine side).

``evacuate``: every request of the dead instance is taken off its scheduler and placed again
on live instances, from its tokens so far (its KV is recomputed, as after vLLM's recompute
preemption; the new instance's runner gets its outputs through the plan). A spanning request
with a chunk there is taken back whole and placed again.

``rollback_lost_step``: a live instance whose step failed because a peer died during a span
exchange (gloo reports "connection closed") produced no output for that step; every request
it was running is preempted (recompute), vLLM's own way of redoing work it lost.

Both touch vLLM scheduler internals (``running``, ``waiting``, ``_preempt_request``); they
are kept here, next to the feature check in ``check_recovery_internals``.
"""

from __future__ import annotations

import time

from vllm.v1.request import RequestStatus


def check_recovery_internals(scheduler) -> None:
    for name in ("running", "waiting", "requests", "_preempt_request", "finish_requests"):
        if not hasattr(scheduler, name):
            raise RuntimeError(f"vLLM moved Scheduler.{name}; ESP instance recovery needs "
                               f"review")


def evacuate(esp, dead: int) -> list:
    """Take every request off instance ``dead``; returns those that cannot be served
    anymore (to be finished with an error by the caller)."""
    esp.pool.dead.add(dead)
    sched = esp.instances[dead]
    for span in list(esp.spans.spans.values()):
        if dead in span.holders and span.views:
            esp.place_span_again(span.views[-1].request_id)
    lost = []
    for request in list(sched.requests.values()):
        if esp.spans.is_shadow(request.request_id):
            continue
        outputs = list(request.output_token_ids)
        sched.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)
        esp.pool.forget(request.request_id)
        request.status = RequestStatus.WAITING
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        if request.spec_token_ids:
            request.spec_token_ids = []
        if outputs:
            esp.resume_outputs[request.request_id] = outputs
        if not esp.fits_live_pools(request):
            lost.append(request)
            continue
        esp.dispatch_again(request)
    return lost


def rollback_lost_step(esp, instance: int, scheduler_output) -> None:
    """Preempt (recompute) every request ``instance`` ran in a step that produced nothing."""
    sched = esp.instances[instance]
    scheduled = set(scheduler_output.num_scheduled_tokens)
    now = time.monotonic()
    for request in list(sched.running):
        if request.request_id not in scheduled:
            continue
        if esp.spans.is_spanning(request.request_id) or esp.spans.is_shadow(request.request_id):
            esp.place_span_again(request.request_id)
            continue
        sched.running.remove(request)
        sched._preempt_request(request, now)  # (it puts the request back at the queue head)
