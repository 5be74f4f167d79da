"""The ESP attention backend: vLLM's own attention kernel for the rows it can compute, the ESP
stack (``ops``) for the rows of requests spread over instances. Nothing is computed twice.

Per step, the metadata builder (``ESPMetadataBuilderMixin``) leaves out of the stock kernel's
metadata the requests whose attention ESP computes (ring members' stripe rows and span
queries: ``ESPStepPlan.computed_here``): it builds the stock metadata for the other requests
only, from a subset of vLLM's ``CommonAttentionMetadata``. Per layer, the impl
(``ESPAttentionMixin``) runs the stock kernel on those rows, then the ring prefill and span
attention (``ops.ring_prefill``, ``ops.span_exchange``) on the rest, with the kernels
``ops.dispatch`` chose for this device and cache layout. The stock K/V write of ring rows is
switched off by the runner (their slots are PAD): the ring writes each keep range itself.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from vllm_esp.integration import esp_step
from vllm_esp.integration.span_support import impl_blockers
from vllm_esp.ops.ring_prefill import ring_layer
from vllm_esp.ops.span_exchange import span_layer
from vllm_esp.ops.step import rows_index

# fields of vLLM's CommonAttentionMetadata the subset rewrites (checked at worker start)
SUBSET_FIELDS = ("query_start_loc", "query_start_loc_cpu", "seq_lens", "num_reqs",
                 "num_actual_tokens", "max_query_len", "block_table_tensor", "slot_mapping")


def stock_subset(cm, keep: list[int]):
    """``(rows, common metadata)`` of the requests ``keep`` (batch indices) of ``cm``: their
    rows in the forward (a slice when contiguous) and vLLM's common metadata as if only they
    were scheduled. None for the metadata when ``keep`` is empty."""
    qsl = cm.query_start_loc_cpu[: cm.num_reqs + 1].numpy()
    ranges = [(int(qsl[i]), int(qsl[i + 1])) for i in keep]
    rows = rows_index(ranges, cm.query_start_loc.device)
    if not keep:
        return rows, None
    lens = np.array([b - a for a, b in ranges], dtype=np.int64)
    cu = torch.from_numpy(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    idx = torch.tensor(keep, dtype=torch.long, device=cm.seq_lens.device)
    changes = dict(
        query_start_loc=cu.to(cm.query_start_loc.device),
        query_start_loc_cpu=cu,
        seq_lens=cm.seq_lens[idx],
        num_reqs=len(keep),
        num_actual_tokens=int(lens.sum()),
        max_query_len=int(lens.max()),
        block_table_tensor=cm.block_table_tensor[idx],
        slot_mapping=cm.slot_mapping[rows],
    )
    for name, take in (("positions", "rows"), ("seq_lens_cpu_upper_bound", "reqs"),
                       ("is_prefilling", "reqs")):
        value = getattr(cm, name, None)
        if value is not None:
            changes[name] = value[rows] if take == "rows" else value[idx.to(value.device)]
    for name in ("logits_indices_padded", "num_logits_indices", "req_idx"):
        if getattr(cm, name, None) is not None:
            changes[name] = None
    return rows, dataclasses.replace(cm, **changes)


class ESPMetadataBuilderMixin:
    """Mixed into a vLLM metadata builder: attaches ``esp_stock = (rows, metadata)``, the
    stock kernel's view of the step without the rows ESP computes (``None``: all rows)."""

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        ctx = esp_step.current()
        md.esp_stock = None
        if ctx is not None and ctx.esp_requests:
            esp = set(ctx.esp_requests)
            keep = [i for i in range(common_attn_metadata.num_reqs) if i not in esp]
            rows, sub = stock_subset(common_attn_metadata, keep)
            md.esp_stock = (rows, None if sub is None else
                            super().build(common_prefix_len, sub, fast_build))
        return md


class ESPAttentionMixin:
    """Mixed into a vLLM attention impl: the stock kernel on the stock rows, then
    ``esp_attention`` over the backend's paged layout ``esp_layout``."""

    esp_layout = None  # staticmethod (kv_cache, head_dim, layer) -> ops.kv_cache layout

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output,
                output_scale=None, output_block_scale=None):
        stock = getattr(attn_metadata, "esp_stock", None)
        if stock is None:
            out = super().forward(layer, query, key, value, kv_cache, attn_metadata, output,
                                  output_scale, output_block_scale)
        else:
            out = output
            rows, sub = stock
            if sub is not None:
                part = output[rows]
                super().forward(layer, query[rows], _rows(key, rows), _rows(value, rows),
                                kv_cache, sub, part, output_scale, output_block_scale)
                if not isinstance(rows, slice):
                    output[rows] = part
        esp_attention(self, self.esp_layout, layer, query, key, value, kv_cache,
                      attn_metadata, output)
        return out


def _rows(x, rows):
    return None if x is None else x[rows]


def esp_attention(impl, layout_of, layer, query, key, value, kv_cache, attn_metadata,
                  output) -> None:
    """Ring prefills, then span queries, of this step on this instance (if any)."""
    ctx = esp_step.current()
    if ctx is None or attn_metadata is None:
        return
    _check_supported(impl)
    n = attn_metadata.num_actual_tokens
    hq, hkv, d = impl.num_heads, impl.num_kv_heads, impl.head_size
    q = query[:n].view(n, hq, d)
    o = output[:n].view(n, hq, d)
    layout = layout_of(kv_cache, d, layer)
    step = ctx.tensors(layout.block_size)
    kernels = esp_step.kernels_for(kv_cache.device, layout)
    for batch in step.rings:
        ring_layer(batch, ctx.comm, kernels, layout, kv_cache, q,
                   key[:n].reshape(n, hkv, d), value[:n].reshape(n, hkv, d), o, impl.scale)
    if step.spans is not None:
        span_layer(step.spans, ctx.comm, kernels, layout, kv_cache, hq, d, impl.scale,
                   query=q, output=o)


def _check_supported(impl) -> None:
    """Stop loudly if this layer has an attention feature span attention lacks (the engine
    should have served the model unspread: ``span_support``)."""
    blockers = impl_blockers(impl)
    if blockers:
        raise RuntimeError(f"ESP span attention cannot compute a layer with "
                           f"{', '.join(blockers)}; this model must be served unspread")


def serve_layer(layer_module, layout, kv_cache, dtype) -> None:
    """An instance with no forward this step serves its chunks for one layer."""
    ctx = esp_step.current()
    step = ctx.tensors(layout.block_size)
    if step.spans is None:
        return
    impl = layer_module.impl
    _check_supported(impl)
    span_layer(step.spans, ctx.comm, esp_step.kernels_for(kv_cache.device, layout), layout,
               kv_cache, impl.num_heads, impl.head_size, impl.scale, dtype=dtype)
