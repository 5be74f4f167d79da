"""`vllm serve --executor esp`: bad per-request hints are 400s, the length predictor's error
reaches /metrics, and the server survives the loss of one instance (issue 17).

Two servers (stock, ESP with 2 instances and the ALISE policy with the online predictor);
the instance-loss test comes last and kills one of the ESP server's workers under load.
"""

from __future__ import annotations

import json
import re
import threading
import time

import psutil
import pytest
import requests

from vllm_esp.testing.server import VLLMServer

COMMON = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
          "--served-model-name", "tiny", "--kv-cache-memory-bytes", str(64 << 20),
          "--no-enable-prefix-caching"]
PROMPTS = [f"Request {i}: elastic sequence parallelism and the quick brown fox" * (1 + i % 3)
           for i in range(12)]


@pytest.fixture(scope="module")
def servers(tiny_models):
    model = tiny_models["llama"]
    stock = VLLMServer(model, COMMON).start()
    try:
        esp = VLLMServer(model, ["--executor", "esp", "--esp-instances", "2", "--esp-policy",
                                 "alise", "--esp-predictor", "online", *COMMON]).start()
    except BaseException:
        stock.stop()
        raise
    yield {"stock": stock, "esp": esp}
    esp.stop()
    stock.stop()


def _post(srv, path, body, stream=False, timeout=120):
    return requests.post(srv.url + path, json={"model": "tiny", **body}, stream=stream,
                         timeout=timeout)


# (JSON true is not here: vLLM's request model turns it into 1, a valid value, before any
# plugin sees it; in Python, True is refused: test_esp_features.py)
BAD = [{"esp_instances": "x"}, {"esp_instances": 0}, {"esp_instances": 1.5},
       {"esp_instances": 99}, {"esp_prefill_instances": -1}, {"esp_prefill_instances": 99},
       {"esp_prefill_instances": "2"}]


@pytest.mark.parametrize("hint", BAD)
@pytest.mark.parametrize("route", ["completion", "stream", "chat"])
def test_bad_hints_are_a_400_naming_the_hint(servers, hint, route):
    srv = servers["esp"]
    if route == "chat":
        r = _post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": 4, "vllm_xargs": hint})
    else:
        r = _post(srv, "/v1/completions", {"prompt": "hello", "max_tokens": 4,
                                           "stream": route == "stream", "vllm_xargs": hint},
                  stream=route == "stream")
    assert r.status_code == 400, r.text
    name = next(iter(hint))
    assert f"{name} must be an integer from 1 to 2" in r.text


def test_a_valid_hint_is_served_spread_and_equals_stock(servers):
    body = {"prompt": PROMPTS[5], "max_tokens": 16, "temperature": 0}
    ref = _post(servers["stock"], "/v1/completions", body).json()["choices"][0]["text"]
    got = _post(servers["esp"], "/v1/completions",
                {**body, "vllm_xargs": {"esp_instances": 2}})
    assert got.status_code == 200 and got.json()["choices"][0]["text"] == ref


def _metrics(srv) -> str:
    return requests.get(srv.url + "/metrics", timeout=30).text


def test_length_prediction_error_reaches_metrics(servers):
    srv = servers["esp"]
    for p in PROMPTS[:4]:
        _post(srv, "/v1/completions", {"prompt": p, "max_tokens": 8, "temperature": 0})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = _metrics(srv)
        if "vllm_esp:length_prediction_mae{" in text:
            break
        time.sleep(1)
    assert re.search(r'vllm_esp:length_prediction_mae\{[^}]*predictor="online"[^}]*\} [\d.]+',
                     text), text[-3000:]
    assert "vllm_esp:length_prediction_spearman{" in text


def _stream(srv, prompt, out: dict, key: int, progress: dict | None = None):
    """Stream one greedy completion; record its text and when tokens arrived (``progress``:
    tokens so far, while it runs)."""
    r = _post(srv, "/v1/completions", {"prompt": prompt, "max_tokens": 64, "temperature": 0,
                                       "stream": True, "ignore_eos": True}, stream=True,
              timeout=300)
    text, times = "", []
    for line in r.iter_lines():
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        event = json.loads(line[6:])
        if "error" in event:
            out[key] = ("error", event["error"])
            return
        text += event["choices"][0]["text"]
        times.append(time.monotonic())
        if progress is not None:
            progress[key] = len(times)
    out[key] = (r.status_code, text, times)


def _workers(srv) -> dict[str, psutil.Process]:
    found = {}
    for p in psutil.Process(srv.proc.pid).children(recursive=True):
        label = p.name() + " " + " ".join(p.cmdline())
        m = re.search(r"Worker_ESP(\d)", label)
        if m:
            found[m.group(1)] = p
    return found


def test_losing_one_instance_keeps_the_server_serving(servers):
    """Twelve streaming requests are running when instance 1's worker is killed. The server
    stays healthy, every request finishes with stock's tokens (those on the lost instance are
    re-run on the other one from their tokens so far), new requests are served, /metrics says
    one instance is alive, and the survivor's KV pool is empty afterwards."""
    srv, stock = servers["esp"], servers["stock"]
    ref = {i: _post(stock, "/v1/completions", {"prompt": p, "max_tokens": 64, "temperature": 0,
                                               "ignore_eos": True}).json()["choices"][0]["text"]
           for i, p in enumerate(PROMPTS)}
    workers = _workers(srv)
    assert set(workers) == {"0", "1"}
    out: dict = {}
    progress: dict = {}
    threads = [threading.Thread(target=_stream, args=(srv, p, out, i, progress))
               for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(progress) < len(PROMPTS) and time.monotonic() < deadline:
        time.sleep(0.01)  # until every request is decoding (on both instances)
    workers["1"].kill()
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=300)
    assert all(not t.is_alive() for t in threads), "a request hung"
    for i in range(len(PROMPTS)):
        status, text, times = out[i]
        assert status == 200 and text == ref[i], (i, out[i][:2])
    assert any(times and times[-1] > killed_at for _, _, times in out.values()), \
        "the kill came after every request finished: the test did not test anything"
    assert requests.get(srv.url + "/health", timeout=30).status_code == 200
    r = _post(srv, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 64,
                                       "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref[0]
    text = _metrics(srv)
    assert re.search(r"vllm_esp:instances_alive\{[^}]*\} 1\.0", text), text[-2000:]
    used = re.search(r'vllm_esp:kv_cache_used_blocks\{[^}]*instance="0"[^}]*\} ([\d.]+)', text)
    assert used and float(used.group(1)) == 0.0
    assert "0" in _workers(srv) and "1" not in _workers(srv)  # nothing of instance 1 left


def test_losing_the_last_instance_ends_the_server(tiny_models):
    """As stock does when its only worker dies: the server exits, no process left behind."""
    srv = VLLMServer(tiny_models["llama"], ["--executor", "esp", "--esp-instances", "2",
                                            *COMMON]).start()
    try:
        for p in _workers(srv).values():
            p.kill()
            time.sleep(1.0)
        srv.proc.wait(timeout=120)
        assert not srv.healthy()
    finally:
        leftovers = srv.stop()
    assert leftovers == []
