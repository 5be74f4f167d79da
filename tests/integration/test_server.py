"""`vllm serve ... --executor esp` through the real `vllm` command and the OpenAI API."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from vllm_esp.testing.server import VLLMServer, vllm_command

openai = pytest.importorskip("openai")

COMMON = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
          "--served-model-name", "tiny", "--kv-cache-memory-bytes", str(64 << 20),
          "--no-enable-prefix-caching"]
PROMPTS = ["Hello world", "The quick brown fox", "Elastic sequence parallelism lets",
           "What is the capital of France?"]


@pytest.fixture(scope="module")
def servers(tiny_models):
    model = tiny_models["llama"]
    stock = VLLMServer(model, COMMON).start()
    try:
        # vLLM's INFO level (as a user gets without VLLM_LOGGING_LEVEL) and the per-step plan
        esp = VLLMServer(model, ["--executor", "esp", "--esp-instances", "2", *COMMON],
                         env={"VLLM_LOGGING_LEVEL": "INFO", "VLLM_ESP_DEBUG_PLAN": "1"}).start()
    except BaseException:
        stock.stop()
        raise
    yield {"stock": stock, "esp": esp}
    assert esp.stop() == [], "esp server left processes behind"
    assert stock.stop() == []


def _client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none")


def _complete(srv, prompt, **kw):
    r = _client(srv).completions.create(model="tiny", prompt=prompt, max_tokens=16,
                                        temperature=0, **kw)
    return r.choices[0].text


def test_completions_match_stock(servers):
    for p in PROMPTS:
        assert _complete(servers["esp"], p) == _complete(servers["stock"], p)
    seeded = dict(temperature=0.9, seed=5)
    got = _client(servers["esp"]).completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, **seeded)
    ref = _client(servers["stock"]).completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, **seeded)
    assert got.choices[0].text == ref.choices[0].text


def test_esp_logs_at_info_with_instance_named_workers_and_the_pooled_capacity(servers):
    """vllm_esp's loggers log through vLLM's logging setup (INFO passes as vLLM's own lines
    do), VLLM_ESP_DEBUG_PLAN=1 prints the per-step plan, each worker's log prefix names its
    instance, and a start-up line states the pooled KV capacity."""
    srv = servers["esp"]
    _complete(srv, PROMPTS[0])
    log = srv.log_path.read_text(errors="replace")
    assert "ESP executor ready: 2 instances x TP 1 (2 workers)" in log
    assert re.search(r"ESP step \d+ plan: \[\{'instance': 0, 'tokens': \d+", log)
    assert "(Worker_ESP0 pid=" in log and "(Worker_ESP1 pid=" in log
    assert "(Worker pid=" not in log and "VllmWorker-0 pid" not in log
    # ours are known to vLLM (patches/env_vars); vLLM's CPU worker itself leaves
    # VLLM_DIST_IDENT in the environment of a process that ran an in-process engine, and a
    # server started from there warns about that one
    assert "Unknown vLLM environment variable detected: VLLM_ESP" not in log
    # vLLM's own line counts one instance's blocks, its null block included
    one = int(re.search(r"KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
    blocks = _metric(srv, "vllm_esp:kv_cache_total_blocks")
    block_size = one // (int(blocks["0"]) + 1)
    pooled = sum(int(v) for v in blocks.values()) * block_size
    assert f"ESP KV pool: 2 instances x {pooled // 2:,} tokens = {pooled:,} tokens pooled" in log
    assert f"maximum concurrency for 2,048 tokens per request: {pooled / 2048:.2f}x" in log


def test_chat_matches_stock(servers):
    msgs = [{"role": "user", "content": "Hello, how are you?"}]
    out = {k: _client(s).chat.completions.create(model="tiny", messages=msgs, max_tokens=16,
                                                  temperature=0).choices[0].message.content
           for k, s in servers.items()}
    assert out["esp"] == out["stock"]


def test_streaming_matches_stock(servers):
    def stream(srv):
        chunks = _client(srv).completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=20,
                                                 temperature=0, stream=True)
        return [c.choices[0].text for c in chunks if c.choices]

    got, ref = stream(servers["esp"]), stream(servers["stock"])
    assert "".join(got) == "".join(ref) and len(got) > 1


def _metric(srv, name) -> dict[str, float]:
    values = {}
    for line in srv.get("/metrics").splitlines():
        m = re.match(rf'{re.escape(name)}\{{(.*)\}} ([-0-9.e+]+)$', line)
        if m:
            inst = re.search(r'instance="(\d+)"', m.group(1)).group(1)
            values[inst] = float(m.group(2))
    return values


def test_metrics_show_per_instance_kv_usage(servers):
    _complete(servers["esp"], PROMPTS[0])
    usage = _metric(servers["esp"], "vllm_esp:kv_cache_usage_perc")
    total = _metric(servers["esp"], "vllm_esp:kv_cache_total_blocks")
    assert set(usage) == {"0", "1"} and set(total) == {"0", "1"}
    assert all(0.0 <= v <= 1.0 for v in usage.values()) and all(v > 0 for v in total.values())
    assert "vllm:kv_cache_usage_perc" in servers["esp"].get("/metrics")  # stock gauge still there


def _scalar(srv, name, labels: str = "") -> float | None:
    for line in srv.get("/metrics").splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_request_spread_over_both_instances_matches_stock_and_shows_in_metrics(servers):
    hint = {"vllm_xargs": {"esp_instances": 2}}
    prompt = PROMPTS[3] * 30  # a few hundred tokens, split in two chunks of whole blocks
    got = _complete(servers["esp"], prompt, extra_body=hint)
    assert got == _complete(servers["stock"], prompt)
    srv = servers["esp"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _scalar(srv, "vllm_esp:num_spanning_requests_total"):
        _complete(srv, "x")  # stats reach /metrics a step after the tokens
    assert _scalar(srv, "vllm_esp:num_spanning_requests_total") >= 1
    assert _scalar(srv, "vllm_esp:num_parallel_prefills_total") >= 1
    assert _scalar(srv, "vllm_esp:requests_by_prefill_instances_total", 'instances="2"') >= 1
    assert _scalar(srv, "vllm_esp:requests_by_decode_instances_total", 'instances="2"') >= 1
    sent = _metric(srv, "vllm_esp:esp_bytes_sent_total")
    assert set(sent) == {"0", "1"} and all(v > 0 for v in sent.values())
    for name in ("vllm_esp:num_scale_up_total", "vllm_esp:num_merge_total", "vllm_esp:num_master_moves_total",
                 "vllm_esp:num_scale_down_total", "vllm_esp:num_span_recompute_total"):
        assert _scalar(srv, name) is not None, name


def test_cumulative_esp_metrics_are_counters_and_levels_are_gauges(servers):
    """Prometheus types as vLLM's own: running totals are counters (``_total``), levels are
    gauges; ``rate()`` and ``increase()`` work on the counters."""
    srv = servers["esp"]
    _complete(srv, PROMPTS[0])
    _complete(srv, PROMPTS[1])  # stats reach /metrics a step after the tokens
    text = srv.get("/metrics")
    # (prometheus_client writes a counter's TYPE line with or without _total, by version)
    types = {re.sub(r"_total$", "", name): kind
             for name, kind in re.findall(r"^# TYPE (vllm\S*:\S+) (\w+)$", text, re.M)}
    for name in ("num_preemptions", "num_requests_dispatched", "esp_bytes_sent",
                 "num_spanning_requests", "num_scale_up", "num_merge", "num_master_moves",
                 "num_scale_down", "num_parallel_prefills", "num_ring_prefills",
                 "num_batched_ring_prefills", "num_span_recompute",
                 "requests_by_prefill_instances", "requests_by_decode_instances"):
        assert types.get(f"vllm_esp:{name}") == "counter", (name, types)
        assert f"vllm_esp:{name}_total{{" in text, name
    for name in ("kv_cache_usage_perc", "kv_cache_used_blocks", "kv_cache_total_blocks",
                 "num_requests_running", "num_requests_waiting"):
        assert types.get(f"vllm_esp:{name}") == "gauge", (name, types)
    assert types.get("vllm:num_preemptions") == "counter"  # vLLM's own, for comparison
    dispatched = _metric(srv, "vllm_esp:num_requests_dispatched_total")
    assert set(dispatched) == {"0", "1"} and sum(dispatched.values()) >= 2


def _generated_tokens(srv) -> float:
    return sum(float(line.split()[-1]) for line in srv.get("/metrics").splitlines()
               if line.startswith("vllm:generation_tokens_total{"))


def _stream_and_disconnect(srv, max_tokens: int) -> None:
    stream = _client(srv).completions.create(model="tiny", prompt=PROMPTS[1] * 40,
                                             max_tokens=max_tokens, temperature=0, stream=True,
                                             extra_body={"ignore_eos": True})
    next(iter(stream))  # the request is running: its first token arrived
    stream.close()  # client disconnects -> the server aborts the request


def _wait_until_idle(srv) -> tuple[dict, dict, int]:
    """Steps the engine with 1-token requests (stats refresh on a step) until no block is
    held and nothing runs; returns the last usage, running counts and tokens it generated."""
    deadline, steps = time.monotonic() + 60, 0
    while True:
        _client(srv).completions.create(model="tiny", prompt="x", max_tokens=1)
        steps += 1
        used = _metric(srv, "vllm_esp:kv_cache_used_blocks")
        running = _metric(srv, "vllm_esp:num_requests_running")
        if (sum(used.values()) == 0 and sum(running.values()) == 0) or time.monotonic() > deadline:
            return used, running, steps
        time.sleep(0.5)


def test_aborted_stream_frees_its_blocks(servers):
    """A client that disconnects mid-stream gets its request aborted and its blocks freed.

    The abort is proven by vLLM's generated-token counter (the request stopped short of its
    max_tokens), not by watching the stream: this machine can stall a client process for
    seconds, longer than the whole generation; a request that ran to its end proves nothing
    about aborts, so that case is retried."""
    srv, max_tokens = servers["esp"], 1500
    for _attempt in range(3):
        before = _generated_tokens(srv)
        _stream_and_disconnect(srv, max_tokens)
        used, running, refresh_tokens = _wait_until_idle(srv)
        streamed = _generated_tokens(srv) - before - refresh_tokens
        if streamed < max_tokens:
            break
    assert streamed < max_tokens, "the disconnect should abort the request before its end"
    assert sum(used.values()) == 0, f"blocks still held after abort: {used}"
    assert sum(running.values()) == 0, f"aborted request still running: {running}"


def test_too_long_prompt_is_rejected_and_server_keeps_serving(servers):
    srv = servers["esp"]
    status, body = srv.post("/v1/completions", {"model": "tiny", "prompt": [5] * 3000,
                                                "max_tokens": 4})
    assert status == 400
    assert "2048" in str(body)  # names the limit
    assert _complete(srv, PROMPTS[0]) == _complete(servers["stock"], PROMPTS[0])


@pytest.mark.parametrize("argv,message", [
    (["--executor", "esp", "--esp-instances", "0"], "positive integer"),
    (["--executor", "esp", "--pipeline-parallel-size", "2"], "pipeline parallelism"),
    (["--executor", "esp", "--esp-instances", "64"], "exceed this machine's limit"),
    (["--executor", "esp", "--esp-instances", "2", "--esp-profile", "/nonexistent.json"],
     "neither a file nor a built-in profile"),
    # the ESP options as vLLM's own --additional-config JSON: checked as early
    (["--distributed-executor-backend", "esp", "--additional-config",
      '{"esp": {"instances": 64}}'], "exceed this machine's limit"),
])
def test_bad_esp_options_fail_at_start_with_a_reason(tiny_models, argv, message):
    proc = subprocess.run([*vllm_command(), "serve", tiny_models["llama"], *COMMON, *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    # one usage line from the parser, before any engine process started
    assert "Engine core initialization failed" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vllm serve: error:") and message in last, proc.stderr[-2000:]


def test_plain_qualname_route_without_any_plugin(servers, tiny_models):
    """vLLM's own flags with dotted paths, plugin loading switched off (VLLM_PLUGINS="")."""
    args = ["--distributed-executor-backend", "vllm_esp.integration.executor.ESPExecutor",
            "--scheduler-cls", "vllm_esp.integration.scheduler.ESPScheduler",
            "--additional-config", '{"esp": {"instances": 2}}', *COMMON]
    with VLLMServer(tiny_models["llama"], args, env={"VLLM_PLUGINS": ""}) as srv:
        for p in PROMPTS[:2]:
            assert _complete(srv, p) == _complete(servers["stock"], p)
        assert "--executor" not in srv.tail(200)  # sanity: nothing of the plugin's CLI involved
