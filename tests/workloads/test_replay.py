"""The replay client against an in-process fake OpenAI server with known timing."""

import asyncio
import json

import pytest

from vllm_esp.bench_client.replay import replay_async, synth_prompt
from vllm_esp.workloads import Request

aiohttp_web = pytest.importorskip("aiohttp.web")

PREFILL_S, TOKEN_S = 0.05, 0.01


async def _serve(seen):
    async def completions(request):
        body = await request.json()
        seen.append(body)
        if body["max_tokens"] == 13:
            return aiohttp_web.json_response({"error": "boom"}, status=500)
        resp = aiohttp_web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(PREFILL_S)
        for i in range(body["max_tokens"]):
            if i:
                await asyncio.sleep(TOKEN_S)
            chunk = {"id": "c", "object": "text_completion", "created": 0,
                     "model": body["model"], "choices": [{"index": 0, "text": "x",
                                                          "finish_reason": None,
                                                          "logprobs": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = aiohttp_web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = aiohttp_web.AppRunner(app)
    await runner.setup()
    site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/v1"


def test_replay_measures_ttft_tpot_and_arrivals():
    reqs = [Request(0, 20, 5, 0.0), Request(1, 7, 1, 0.2), Request(2, 3, 13, 0.1)]
    seen = []

    async def main():
        runner, url = await _serve(seen)
        try:
            return await replay_async(reqs, url, "tiny", timeout=10)
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    by_len = {b["max_tokens"]: b for b in seen}
    assert by_len[5]["prompt"] == synth_prompt(reqs[0]) and len(by_len[5]["prompt"]) == 20
    assert by_len[5]["ignore_eos"] is True and by_len[5]["min_tokens"] == 5
    r0, r1, r2 = res
    # timing bounds are one-sided-tight, loose above: the CI machine may be busy
    assert 0.19 <= r1.arrival < 0.5  # sent on schedule, not before (clock granularity)
    assert PREFILL_S * 0.9 <= r0.ttft < PREFILL_S + 0.5  # first chunk, not the last
    assert TOKEN_S * 0.9 <= r0.tpot < TOKEN_S + 0.1  # 4 gaps between 5 streamed tokens
    assert r1.finished and r1.tpot == 0.0
    assert not r2.finished  # server error -> unserved, not dropped


def test_synthetic_prompts_differ_between_requests():
    a, b = synth_prompt(Request(0, 50, 1)), synth_prompt(Request(1, 50, 1))
    assert a != b and all(10 <= t < 250 for t in a + b)
