"""The only code that touches the internals of vLLM's scheduler, KV cache manager and model
runner: named operations on *local views* (the requests each instance's stock scheduler runs
for a chunk of a spread request) and on the runner's per-step buffers.

Written against vLLM 0.32 (``SUPPORTED``); ``check_scheduler`` and ``check_runner`` verify
every attribute used here when the ESP scheduler / worker starts, so a vLLM that moved one
fails loudly at start-up instead of computing wrong attention. ``tests/integration/
test_views.py`` runs each operation on a real vLLM ``Scheduler`` built from a synthetic
``KVCacheConfig`` (no workers) and checks the block accounting after it.

Scheduler / KV manager operations:

- ``skip_prefix``: tokens ``[0, begin)`` computed elsewhere (null blocks, admitted as partly
  computed, the way vLLM's KV-transfer path admits a request);
- ``allocate_prefix``: real blocks for ``[0, begin)``, to be filled by a ring's keep-range
  writes (the master of a keep-on-master ring);
- ``hand_over``: a request's blocks on one instance go to a shadow (no copy, no free), the
  request leaves that instance (its runner drops it);
- ``park`` / ``unpark``: a view leaves / rejoins its scheduler's running list (it keeps its
  blocks: the chunk it holds serves peers);
- ``to_front``: a view goes to the head of the waiting queue (``keeps_front``: it stays there);
- ``can_move`` / ``move_waiting``: a request not started yet leaves one instance's waiting
  queue for another's (length-aware re-routing);
- ``new_shadow``: the local view of an earlier chunk (a vLLM ``Request``);
- ``preempt``: vLLM's recompute preemption of a running request (a step that was lost);
- ``take_out``: a request leaves a (dead) instance for good, reset to be placed again;
- ``set_runner_mode_v1``: the scheduler speaks to a V1 model runner.

Runner operations: ``load_stripe`` (a ring member's rows compute its stripe: token ids and
positions from the plan, no stock K/V write), ``with_added_outputs`` (a request new to a
runner starts with the tokens it produced elsewhere), ``become`` (a worker's runner becomes
the ESP runner class).
"""

from __future__ import annotations

import contextlib

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.request_queue import FCFSRequestQueue
from vllm.v1.request import Request, RequestStatus

from vllm_esp.integration.spanning.request import SHADOW_SUFFIX

SUPPORTED = ((0, 32), (0, 34))  # vLLM [0.32, 0.34): the versions these internals are read from

_SCHEDULER = ("running", "requests", "waiting", "finished_req_ids", "kv_cache_manager",
              "_preempt_request", "finish_requests", "add_request", "use_v2_model_runner")
_MANAGER = ("req_to_blocks", "num_cached_block", "_null_block", "block_pool", "block_size")
_RUNNER = ("positions", "input_ids", "input_batch", "query_start_loc")


def check_scheduler(scheduler) -> None:
    """Fail at start-up if vLLM moved what these operations use."""
    missing = [n for n in _SCHEDULER if not hasattr(scheduler, n)]
    for m in scheduler.kv_cache_manager.coordinator.single_type_managers:
        missing += [f"single_type_manager.{n}" for n in _MANAGER if not hasattr(m, n)]
    if not callable(getattr(scheduler.waiting, "prepend_request", None)):
        missing.append("waiting.prepend_request")
    if missing:
        raise RuntimeError(f"vLLM moved {', '.join(missing)}; the ESP views "
                           f"(integration/spanning/views.py, vLLM {SUPPORTED}) need review")


def check_runner(runner) -> None:
    missing = [n for n in _RUNNER if not hasattr(runner, n)]
    if not hasattr(getattr(runner, "input_batch", None), "block_table"):
        missing.append("input_batch.block_table")
    if missing:
        raise RuntimeError(f"vLLM moved the runner's {', '.join(missing)}; the ESP views "
                           f"need review")


def _managers(scheduler):
    return scheduler.kv_cache_manager.coordinator.single_type_managers


# ---- scheduler and KV manager ---------------------------------------------------------
def new_shadow(real: Request, j: int, end: int, keeps_kv: bool = True) -> Request:
    """A local view of chunk ``j`` (prompt ``[0, end)``, its sample dropped). One that keeps
    no KV (a compute-only ring member) hashes its blocks under a salt of its own: its lookups
    never hit and its garbage blocks never serve another request."""
    return Request(
        request_id=f"{real.request_id}{SHADOW_SUFFIX}{j}",
        prompt_token_ids=list(real.all_token_ids[:end]),
        sampling_params=SamplingParams(temperature=0.0, max_tokens=1 << 30, ignore_eos=True),
        pooling_params=None,
        client_index=real.client_index,
        arrival_time=real.arrival_time,
        # same block hashes as the real request: with prefix caching on, a chunk's full
        # blocks are cached under the true prefix hash (chunk 0 can serve later hits)
        block_hasher=real._block_hasher,
        cache_salt=real.cache_salt if keeps_kv else f"esp-compute-only:{real.request_id}",
    )


def skip_prefix(scheduler, view: Request, begin: int) -> None:
    for m in _managers(scheduler):
        m.req_to_blocks[view.request_id] = [m._null_block] * (begin // m.block_size)
        m.num_cached_block[view.request_id] = begin // m.block_size
    view.num_computed_tokens = begin


def allocate_prefix(scheduler, view: Request, begin: int) -> None:
    """They count as uncached so that prefix caching hashes them with the rest of the
    prompt once they are full."""
    for m in _managers(scheduler):
        m.req_to_blocks[view.request_id] = m.block_pool.get_new_blocks(begin // m.block_size)
        m.num_cached_block[view.request_id] = 0
    view.num_computed_tokens = begin


def held_blocks(scheduler, request_id: str) -> int:
    """Entries in the request's block table (null prefix included)."""
    return len(_managers(scheduler)[0].req_to_blocks.get(request_id, ()))


def block_ids(scheduler, request_id: str) -> list[int]:
    return list(scheduler.kv_cache_manager.get_block_ids(request_id)[0])


def hand_over(scheduler, request: Request, shadow: Request) -> None:
    rid = request.request_id
    for m in _managers(scheduler):
        m.req_to_blocks[shadow.request_id] = m.req_to_blocks.pop(rid)
        if rid in m.num_cached_block:
            m.num_cached_block[shadow.request_id] = m.num_cached_block.pop(rid)
    scheduler.running = [r for r in scheduler.running if r is not request]
    del scheduler.requests[rid]
    shadow.status = RequestStatus.RUNNING
    shadow.num_computed_tokens = request.num_computed_tokens
    scheduler.requests[shadow.request_id] = shadow
    scheduler.finished_req_ids.add(rid)  # that instance's runner drops the request's state


def park(scheduler, view: Request) -> None:
    scheduler.running = [r for r in scheduler.running if r is not view]


def unpark(scheduler, view: Request) -> None:
    if all(r is not view for r in scheduler.running):
        scheduler.running.append(view)


def to_front(scheduler, view: Request) -> None:
    """The view runs before every other waiting request: the head of an FCFS queue, or pinned
    ahead of the keyed order of a length-aware queue (``pin_front``)."""
    if hasattr(scheduler.waiting, "pin_front"):
        scheduler.waiting.pin_front(view)
        return
    scheduler.waiting.remove_request(view)
    scheduler.waiting.prepend_request(view)


def keeps_front(scheduler) -> bool:
    """Does a view put at the front (``to_front``) stay there while requests arrive? vLLM's
    FCFS queue does; its priority heap reorders by each request's priority."""
    return isinstance(scheduler.waiting, FCFSRequestQueue) or \
        hasattr(scheduler.waiting, "pin_front")


def can_move(scheduler, request: Request) -> bool:
    """A request that never ran (no KV, no output, never preempted: no runner knows it) and
    waits in ``scheduler``'s own waiting queue."""
    return (request.status == RequestStatus.WAITING and request.num_computed_tokens == 0
            and not request.num_output_tokens and not request.num_preemptions
            and scheduler.requests.get(request.request_id) is request)


def move_waiting(src, dst, request: Request) -> None:
    """``request`` (``can_move``) leaves ``src`` and waits in ``dst``, with the scheduler
    state a length-aware scheduler keeps for it (``release_waiting`` / ``adopt_waiting``:
    its predicted length moves along; a stock scheduler keeps none)."""
    src.waiting.remove_request(request)
    del src.requests[request.request_id]
    state = src.release_waiting(request) if hasattr(src, "release_waiting") else None
    if state is not None and hasattr(dst, "adopt_waiting"):
        dst.adopt_waiting(request, state)
    else:
        dst.add_request(request)


def preempt(scheduler, request: Request, timestamp: float) -> None:
    """vLLM's recompute preemption of a running request: off the running list, then vLLM's
    own ``_preempt_request`` (frees its blocks, keeps its outputs, puts it at the head of the
    waiting queue, reports it preempted to the runner)."""
    scheduler.running.remove(request)
    scheduler._preempt_request(request, timestamp)


def take_out(scheduler, request: Request) -> list[int]:
    """The request leaves ``scheduler`` (a dead instance) and is reset to be placed again
    from its tokens so far. Returns the tokens it had produced (its new runner needs them)."""
    outputs = list(request.output_token_ids)
    scheduler.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)
    request.status = RequestStatus.WAITING
    request.num_computed_tokens = 0
    request.num_preemptions += 1
    if request.spec_token_ids:
        request.spec_token_ids = []
    return outputs


def set_runner_mode_v1(scheduler) -> None:
    """The ESP workers run vLLM's V1 runner; a scheduler in V2 mode would send a resumed
    request as new request data, which V1 reads as a streaming update."""
    scheduler.use_v2_model_runner = False


# ---- model runner ---------------------------------------------------------------------
def load_stripe(runner, start: int, end: int, positions, token_ids: list[int]) -> None:
    """Rows ``[start, end)`` compute a ring member's stripe: these token ids at these global
    positions, and no stock K/V write (their slots become PAD: the ring writes the member's
    keep range itself)."""
    runner.positions[start:end] = positions.to(runner.positions.device)
    ids = torch.tensor(token_ids, dtype=runner.input_ids.cpu.dtype)
    runner.input_ids.cpu[start:end] = ids
    if runner.input_ids.gpu.data_ptr() != runner.input_ids.cpu.data_ptr():
        runner.input_ids.gpu[start:end] = ids.to(runner.input_ids.gpu.device)
    for table in runner.input_batch.block_table.block_tables:
        table.slot_mapping.gpu[start:end] = -1
        if table.slot_mapping.cpu.data_ptr() != table.slot_mapping.gpu.data_ptr():
            table.slot_mapping.cpu[start:end] = -1


def forward_rows(runner) -> dict[str, tuple[int, int]]:
    """Request id -> its rows ``[start, end)`` in this step's forward."""
    qsl = runner.query_start_loc.np
    ids = runner.input_batch.req_ids[: runner.input_batch.num_reqs]
    return {rid: (int(qsl[i]), int(qsl[i + 1])) for i, rid in enumerate(ids)}


@contextlib.contextmanager
def with_added_outputs(runner, add_outputs):
    """While vLLM updates the persistent batch, each request it adds first goes through
    ``add_outputs(req_state)`` (it may hand the request tokens produced elsewhere)."""
    batch = runner.input_batch
    add_request = batch.add_request

    def add(req_state):
        add_outputs(req_state)
        return add_request(req_state)

    batch.add_request = add
    try:
        yield
    finally:
        del batch.add_request


def become(worker, runner_cls: type) -> None:
    """The worker's stock runner becomes ``runner_cls`` (a subclass of it: same state)."""
    worker.model_runner.__class__ = runner_cls
