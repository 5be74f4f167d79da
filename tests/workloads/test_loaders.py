"""Loaders read the standard layouts written by the test itself (no downloads)."""

import json

import pytest

from vllm_esp.workloads import Request, dump_jsonl, generate, load_jsonl, load_sharegpt, poisson


def _sharegpt_file(tmp_path):
    data = [
        {"id": "a", "conversations": [{"from": "human", "value": "x" * 40},
                                      {"from": "gpt", "value": "y" * 400},
                                      {"from": "human", "value": "ignored"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "only one turn"}]},
        {"id": "c", "conversations": [{"from": "gpt", "value": "starts with the model"},
                                      {"from": "human", "value": "z" * 100}]},
        {"id": "d", "conversations": [{"from": "human", "value": "hi"},  # too short (0 tok)
                                      {"from": "gpt", "value": "w" * 100}]},
        {"id": "e", "conversations": [{"from": "human", "value": "q" * 80},
                                      {"from": "gpt", "value": "r" * 20}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return path


def test_sharegpt_first_human_turn_and_reply(tmp_path):
    reqs = load_sharegpt(_sharegpt_file(tmp_path))
    assert reqs == [Request(0, 10, 100), Request(1, 20, 5)]


def test_sharegpt_custom_tokenizer_and_filters(tmp_path):
    path = _sharegpt_file(tmp_path)
    reqs = load_sharegpt(path, token_len=len, min_len=1)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(40, 400), (2, 100), (80, 20)]
    assert len(load_sharegpt(path, token_len=len, min_len=1, max_output_len=200)) == 2
    sample = load_sharegpt(path, n=1, token_len=len, min_len=1, seed=3)
    assert len(sample) == 1 and sample[0].request_id == 0
    assert sample == load_sharegpt(path, n=1, token_len=len, min_len=1, seed=3)


def test_jsonl_round_trip_sorted_by_arrival(tmp_path):
    reqs = poisson(generate("mixed", 30, seed=2), rate=3.0, seed=2)
    path = tmp_path / "trace.jsonl"
    dump_jsonl(reqs, path)
    assert load_jsonl(path) == reqs
    path.write_text('{"prompt_len": 5, "output_len": 2, "arrival": 1.5}\n\n'
                    '{"prompt_len": 7, "output_len": 3}\n')
    assert load_jsonl(path) == [Request(0, 7, 3, 0.0), Request(1, 5, 2, 1.5)]


def test_jsonl_bad_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_len": 5, "output_len": 2}\n{"prompt_len": 5}\n')
    with pytest.raises(ValueError, match=":2:"):
        load_jsonl(path)
    path.write_text('{"prompt_len": 0, "output_len": 2}\n')
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        load_jsonl(path)
