"""The ESP attention backend leaves the rows ESP computes out of vLLM's kernel (no double
work), checked without an engine: the subset of vLLM's common metadata, and the impl's calls."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from vllm.v1.attention.backend import CommonAttentionMetadata

from vllm_esp.integration import esp_attention, esp_step


def common_metadata(query_lens, seq_lens, blocks_per_req=4):
    n = len(query_lens)
    qsl = torch.tensor([0] + list(torch.tensor(query_lens).cumsum(0)), dtype=torch.int32)
    total = int(qsl[-1])
    return CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32), num_reqs=n,
        num_actual_tokens=total, max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        block_table_tensor=torch.arange(n * blocks_per_req, dtype=torch.int32).view(n, -1),
        slot_mapping=torch.arange(100, 100 + total), positions=torch.arange(total))


def test_stock_subset_keeps_only_the_other_requests():
    cm = common_metadata([3, 5, 1, 2], [10, 5, 20, 7])
    rows, sub = esp_attention.stock_subset(cm, [0, 2, 3])
    assert torch.equal(rows, torch.tensor([0, 1, 2, 8, 9, 10]))
    assert sub.num_reqs == 3 and sub.num_actual_tokens == 6 and sub.max_query_len == 3
    assert sub.query_start_loc_cpu.tolist() == [0, 3, 4, 6]
    assert sub.seq_lens.tolist() == [10, 20, 7]
    assert sub.block_table_tensor[:, 0].tolist() == [0, 8, 12]
    assert sub.slot_mapping.tolist() == [100, 101, 102, 108, 109, 110]
    assert sub.positions.tolist() == [0, 1, 2, 8, 9, 10]
    rows, sub = esp_attention.stock_subset(cm, [1, 2])  # contiguous: a view, no copy
    assert rows == slice(3, 9) and sub.num_actual_tokens == 6
    rows, sub = esp_attention.stock_subset(cm, [])
    assert sub is None


class _StockImpl:
    """Stands in for vLLM's impl: records which rows its kernel computed."""

    num_heads, num_kv_heads, head_size, scale = 2, 1, 4, 0.5

    def __init__(self):
        self.calls = []

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        self.calls.append(query.shape[0])
        output[: attn_metadata.num_actual_tokens] = 1.0
        return output


class _Impl(esp_attention.ESPAttentionMixin, _StockImpl):
    pass


def test_stock_kernel_runs_only_on_rows_esp_does_not_compute(monkeypatch):
    cm = common_metadata([3, 5, 1, 2], [10, 5, 20, 7])
    rows, sub = esp_attention.stock_subset(cm, [0, 2, 3])
    impl = _Impl()
    q = torch.zeros(11, 2, 4)
    out = torch.zeros(11, 8)
    monkeypatch.setattr(esp_attention, "esp_attention", lambda *a: None)
    impl.forward(None, q, q[:, :1], q[:, :1], None,
                 SimpleNamespace(esp_stock=(rows, sub), num_actual_tokens=11), out)
    assert impl.calls == [6]  # not the 5 rows of request 1
    assert out[rows].eq(1).all() and out[3:8].eq(0).all()
    impl.forward(None, q, q, q, None, SimpleNamespace(esp_stock=None, num_actual_tokens=11),
                 out)
    assert impl.calls == [6, 11]  # a step without ESP rows: the stock kernel does all


def test_builder_attaches_the_subset_only_in_an_esp_step(monkeypatch):
    class _Builder:
        def build(self, common_prefix_len, cm, fast_build=False):
            return SimpleNamespace(num_actual_tokens=cm.num_actual_tokens)

    class _ESPBuilder(esp_attention.ESPMetadataBuilderMixin, _Builder):
        pass

    cm = common_metadata([3, 5, 1, 2], [10, 5, 20, 7])
    assert _ESPBuilder().build(0, cm).esp_stock is None
    ctx = SimpleNamespace(esp_requests=[1])
    monkeypatch.setattr(esp_step, "current", lambda: ctx)
    md = _ESPBuilder().build(0, cm)
    rows, sub = md.esp_stock
    assert md.num_actual_tokens == 11 and sub.num_actual_tokens == 6
