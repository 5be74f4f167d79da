"""Replay a workload against a running OpenAI-compatible server (``vllm serve``, ESP or stock).

The workload is lengths only, so prompts are synthesised as *token ids* (the completions API
accepts a list of ints as ``prompt``): exactly ``prompt_len`` tokens reach the model whatever
its tokenizer. ``ignore_eos`` and ``min_tokens`` (vLLM extensions of the API) force exactly
``output_len`` generated tokens, so the server does the work the simulator charges for.

Each request is sent at its trace arrival time (seconds after the start) with streaming on;
the first streamed chunk gives TTFT, the last gives the finish time. Failed or timed-out
requests are reported with ``finish = inf`` (an SLO violation, never silently dropped).
"""

from __future__ import annotations

import asyncio
import math
import time

from vllm_esp.metrics.results import RequestResult
from vllm_esp.workloads.types import Request

TOKEN_ID_BASE = 10  # skip special ids at the bottom of common vocabularies
TOKEN_ID_SPAN = 240  # cycle through [10, 250): valid for any vocabulary of >= 250 tokens


def synth_prompt(req: Request) -> list[int]:
    """``prompt_len`` token ids, distinct per request so no prefix cache can help."""
    off = (req.request_id * 7919) % TOKEN_ID_SPAN
    return [TOKEN_ID_BASE + (off + 31 * i) % TOKEN_ID_SPAN for i in range(req.prompt_len)]


async def _one(client, model: str, req: Request, t0: float, timeout: float) -> RequestResult:
    await asyncio.sleep(max(0.0, t0 + req.arrival - time.perf_counter()))
    sent = time.perf_counter() - t0
    first = finish = math.inf
    try:
        stream = await asyncio.wait_for(client.completions.create(
            model=model, prompt=synth_prompt(req), max_tokens=req.output_len, temperature=0.0,
            stream=True, extra_body={"ignore_eos": True, "min_tokens": req.output_len}),
            timeout)
        async for chunk in stream:
            now = time.perf_counter() - t0
            if chunk.choices and math.isinf(first):
                first = now
            finish = now
    except Exception as e:  # noqa: BLE001 - any failure is an unserved request
        print(f"request {req.request_id} failed: {type(e).__name__}: {e}")
        first = finish = math.inf
    return RequestResult(req.request_id, req.prompt_len, req.output_len, sent, first, finish)


async def replay_async(requests: list[Request], base_url: str, model: str,
                       timeout: float = 600.0, api_key: str = "EMPTY") -> list[RequestResult]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)
    t0 = time.perf_counter()
    try:
        return list(await asyncio.gather(*(_one(client, model, r, t0, timeout)
                                           for r in requests)))
    finally:
        await client.close()


def replay(requests: list[Request], base_url: str, model: str,
           timeout: float = 600.0) -> list[RequestResult]:
    """Blocking wrapper of ``replay_async`` (one event loop per call)."""
    return asyncio.run(replay_async(requests, base_url, model, timeout))
