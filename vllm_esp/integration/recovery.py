"""Keep serving when an ESP instance dies (engine side).

``evacuate``: every request of the dead instance is taken off its scheduler and placed again
on live instances, from its tokens so far (its KV is recomputed, as after vLLM's recompute
preemption; the new instance's runner gets its outputs through the plan). A spanning request
with a chunk there is taken back whole and placed again.

``rollback_lost_step``: a live instance whose step failed because a peer died during a span
exchange (gloo reports "connection closed") produced no output for that step; every request
it was running is preempted (recompute), vLLM's own way of redoing work it lost.

What they do to vLLM's schedulers goes through ``spanning.views`` (``take_out``,
``preempt``).
"""

from __future__ import annotations

import time

from vllm_esp.integration.spanning import views


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
        outputs = views.take_out(sched, request)
        esp.pool.forget(request.request_id)
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
        views.preempt(sched, request, now)
