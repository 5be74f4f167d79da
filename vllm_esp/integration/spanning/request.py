"""A request whose KV spans instances, and the hints a client gives about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm.v1.request import Request

from vllm_esp.hints import requested

SHADOW_SUFFIX = "#esp-chunk"  # request id of chunk j's local view: real id + suffix + j


@dataclass
class SpanningRequest:
    request: Request  # the real request (run by the master, the last holder)
    holders: list[int]  # instance of each chunk, in token order; master last
    # chunk j = tokens [bounds[j], bounds[j+1]); the master's chunk also takes every token
    # after bounds[-1] (its decode tokens)
    bounds: list[int]
    views: list[Request] = field(default_factory=list)  # local view per started chunk
    parked: list[bool] = field(default_factory=list)  # shadow j holds its chunk, runs no more
    # tokens the new master's runner has not seen (sent once with the plan, then None)
    outputs_to_send: list[int] | None = None
    parallel: bool = False  # all chunks prefilled in one step (sequence parallel)
    prefilled: bool = False  # the parallel prefill step has been scheduled
    # a ring prefill whose KV all goes to the master (its keep range is the whole prompt):
    # the other holders only compute (their shadows keep nothing, cache nothing) and leave
    # right after the prefill step; the request then decodes as a plain request
    keep_on_master: bool = False

    @property
    def master(self) -> int:
        return self.holders[-1]

    @property
    def chunk_sizes(self) -> list[int]:
        return [e - b for b, e in zip(self.bounds, self.bounds[1:])]

    @property
    def stage(self) -> int:
        """Index of the most recently started chunk."""
        return len(self.views) - 1


def requested_instances(request: Request, key: str = "esp_instances") -> int:
    """Instances the client asked for (1 = let ESP decide). ``esp_instances``: the prompt's KV
    is spread over k instances; ``esp_prefill_instances``: k instances prefill it (a ring) and
    the KV stays on one instance when it fits there. (The API server refused bad values.)"""
    return requested(request.sampling_params.extra_args if request.sampling_params else None,
                     key)


def requested_prefill_instances(request: Request) -> int:
    return requested_instances(request, "esp_prefill_instances")
