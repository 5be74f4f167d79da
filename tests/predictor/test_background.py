"""The background predictor process: predictions arrive by polling, learning happens in the
child after its own prediction, options are checked at start, and the index stays bounded."""

import time

import numpy as np
import pytest

from vllm_esp.predictor import PredictRequest
from vllm_esp.predictor.background import BackgroundPredictor, runs_in_background
from vllm_esp.predictor.encoder import HashingEncoder
from vllm_esp.predictor.retrieval import RetrievalPredictor


def _wait(bg, n, timeout=30.0):
    bg.flush()  # what the scheduler does at the end of each step
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += bg.poll()
        time.sleep(0.01)
    return dict(got)


def test_predictions_arrive_by_polling_and_learning_follows_prediction():
    bg = BackgroundPredictor("retrieval", {"encoder": "hashing", "min_similarity": 0.3,
                                           "provisional": "mean", "default": 50})
    try:
        essay = PredictRequest([1], prompt_text="write a long essay about rome")
        assert bg.predict(essay) == 50  # provisional: nothing finished yet, the default
        assert bg.submit("a", essay)
        # learned in the same batch as its own prediction: predicted first, then learned
        bg.observe(essay, 300, key="a")
        assert _wait(bg, 1) == {"a": 50}
        assert bg.predict(PredictRequest([1])) == 300  # provisional now = mean finished length
        bg.submit("b", PredictRequest([1], prompt_text="write a long essay about tea"))
        assert _wait(bg, 1)["b"] == pytest.approx(300)  # the child learned "a"
        bg.submit("c", PredictRequest([1], prompt_text="write a long essay about salt"))
        bg.forget("c")  # aborted before it was predicted (or after): never learned
        bg.observe(PredictRequest([1]), 5, key="c")
        bg.flush()
        time.sleep(0.2)
        assert bg.stats["submitted"] == 3 and bg.alive
    finally:
        bg.close()
    assert not bg.alive and bg._proc.returncode == 0
    assert not bg.submit("d", PredictRequest([1]))  # closed: nothing will arrive


def test_online_provisional_estimate_learns_templates_in_process():
    bg = BackgroundPredictor("retrieval", {"encoder": "hashing"})
    try:
        for i in range(3):
            bg.observe(PredictRequest([7, 7, 7, 7, i]), 400)
        assert bg.predict(PredictRequest([7, 7, 7, 7, 9])) == pytest.approx(400)
    finally:
        bg.close()


def test_options_checked_at_start():
    with pytest.raises(ValueError, match="provisional"):
        BackgroundPredictor("retrieval", {"provisional": "magic"})
    with pytest.raises(ValueError, match="worker_threads"):
        BackgroundPredictor("retrieval", {"worker_threads": 0})
    with pytest.raises(ValueError, match="temperature > 0"):
        BackgroundPredictor("retrieval", {"encoder": "hashing", "temperature": 0})
    assert runs_in_background("retrieval") and not runs_in_background("online")
    assert runs_in_background("hint", {"fallback": "retrieval"})
    assert not runs_in_background("hint", {"fallback": "online"})


def test_index_is_bounded_and_batched_search_matches_single():
    p = RetrievalPredictor(encoder=HashingEncoder(dim=64), max_index=5, min_similarity=0.2,
                           mlp_min_samples=10**6, query_chunk=2)
    for i in range(12):
        p.observe(PredictRequest([1], prompt_text=f"item {i} of the list"), 10 + i)
    assert len(p) == 5 and p._emb.shape[0] == 5  # the oldest rows were overwritten
    assert sorted(p._len.tolist()) == [17, 18, 19, 20, 21]
    reqs = [PredictRequest([1], prompt_text=f"item {i} of the list") for i in (3, 9, 11)]
    batched = p.predict_many(reqs)
    single = [p.predict(PredictRequest([1], prompt_text=r.prompt_text)) for r in reqs]
    assert np.allclose(batched, single)
    assert batched[2] == pytest.approx(21, abs=1)  # its own row is still in the index
