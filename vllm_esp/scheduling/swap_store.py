"""Host-memory store for the KV blocks of preempted requests (worker side, torch only).

"Swap out" copies a request's blocks out of the paged KV cache into tensors owned by the store
(optionally int8-quantized per token-head), so the pool blocks can be freed; "swap in" writes
them into whatever blocks the request is given when it resumes. On the CPU platform the paged
cache already lives in host RAM, so a swap is a memcpy out of the pool into a private buffer —
what matters is that the pool blocks become free and the data survives their reuse.

On a GPU the store's copies are in pinned host memory (``_to_host``): the blocks leave the
device, which is the point of swapping; they come back with one host-to-device copy.

Layout: vLLM's CPU cache per layer is ``[num_blocks, num_kv_heads, block_size, 2*head_dim]`` and
the element order inside a (block, head) slab depends on the kernel ISA. Raw swaps copy whole
slabs (layout-agnostic, exact). Quantized swaps need to know which slab offsets hold token t's
K and V: ``token_maps(block_size, head_dim, dtype) -> (k_idx, v_idx)``, each ``[block_size,
head_dim]`` flat offsets (vllm_esp.ops.kv_cache probes them with vLLM's own write op).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_esp.scheduling.kv_quant import dequantize_int8, quantize_int8

TokenMaps = Callable[[int, int, torch.dtype], tuple[torch.Tensor, torch.Tensor]]


@dataclass(slots=True)
class SwappedKV:
    num_tokens: int  # tokens of valid KV (the tail of the last block is garbage)
    num_blocks: int
    quantized: bool
    layers: dict  # layer name -> (slabs,) raw, or (qk, sk, qv, sv) quantized
    nbytes: int  # host bytes held


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy of ``t`` (pinned when it comes from a GPU, so the copy back is fast)."""
    if t.device.type == "cpu":
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)
    return host


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class HostKVStore:
    def __init__(self, quantize: bool = False, token_maps: TokenMaps | None = None,
                 capacity_bytes: int | None = None):
        """``quantize`` is the default for ``swap_out``; each swap may override it."""
        self.quantize, self.token_maps, self.capacity_bytes = quantize, token_maps, capacity_bytes
        self._entries: dict[str, SwappedKV] = {}
        self.nbytes = 0
        self.swapped_out = 0  # counters, for tests and stats
        self.swapped_in = 0

    def __contains__(self, req_id: str) -> bool:
        return req_id in self._entries

    def get(self, req_id: str) -> SwappedKV | None:
        return self._entries.get(req_id)

    @staticmethod
    def _check(kv: torch.Tensor) -> tuple[int, int, int, int]:
        if kv.dim() != 4 or kv.shape[-1] % 2:
            raise ValueError(
                f"expected a CPU paged KV tensor [blocks, heads, block_size, 2*head_dim], "
                f"got shape {tuple(kv.shape)}")
        nb, h, bs, d2 = kv.shape
        return nb, h, bs, d2 // 2

    def swap_out(self, req_id: str, kv_caches: dict[str, torch.Tensor], block_ids: list[int],
                 num_tokens: int, quantize: bool | None = None) -> bool:
        """Copy ``block_ids`` of every layer into the store. False if over capacity."""
        quantize = self.quantize if quantize is None else quantize
        if quantize and self.token_maps is None:
            raise ValueError("quantized swap needs token_maps (per-token K/V offsets)")
        if req_id in self._entries:
            self.drop(req_id)  # a newer preemption supersedes an unused old copy
        if not block_ids:
            return False
        ids = torch.as_tensor(block_ids, dtype=torch.long)
        layers, total = {}, 0
        for name, kv in kv_caches.items():
            nb, h, bs, d = self._check(kv)
            slabs = kv.view(nb, h, bs * 2 * d)[ids.to(kv.device)]  # advanced indexing copies
            if quantize:
                k_idx, v_idx = (m.to(kv.device) for m in self.token_maps(bs, d, kv.dtype))
                k = slabs[..., k_idx.reshape(-1)].view(len(block_ids), h, bs, d)
                v = slabs[..., v_idx.reshape(-1)].view(len(block_ids), h, bs, d)
                entry = (*quantize_int8(k), *quantize_int8(v))
            else:
                entry = (slabs,)
            entry = tuple(_to_host(t) for t in entry)
            layers[name] = entry
            total += _nbytes(entry)
        if self.capacity_bytes is not None and self.nbytes + total > self.capacity_bytes:
            return False
        self._entries[req_id] = SwappedKV(num_tokens, len(block_ids), quantize, layers,
                                          total)
        self.nbytes += total
        self.swapped_out += 1
        return True

    def swap_in(self, req_id: str, kv_caches: dict[str, torch.Tensor], block_ids: list[int],
                first_block: int = 0) -> None:
        """Write stored blocks ``first_block .. first_block+len(block_ids)`` into ``block_ids``.

        ``first_block`` > 0 when the leading blocks were recovered elsewhere (prefix cache).
        The entry is dropped afterwards: once resumed the pool copy is the live one.
        """
        entry = self._entries.get(req_id)
        if entry is None:
            raise KeyError(f"no swapped KV for request {req_id!r}")
        if first_block < 0 or first_block + len(block_ids) > entry.num_blocks:
            raise ValueError(
                f"swap_in of blocks [{first_block}, {first_block + len(block_ids)}) but "
                f"{entry.num_blocks} stored for {req_id!r}")
        sel = slice(first_block, first_block + len(block_ids))
        for name, kv in kv_caches.items():
            nb, h, bs, d = self._check(kv)
            ids = torch.as_tensor(block_ids, dtype=torch.long, device=kv.device)
            flat = kv.view(nb, h, bs * 2 * d)
            stored = [t.to(kv.device, non_blocking=True) for t in entry.layers[name]]
            if entry.quantized:
                qk, sk, qv, sv = stored
                k_idx, v_idx = (m.to(kv.device) for m in self.token_maps(bs, d, kv.dtype))
                slabs = flat[ids]
                k = dequantize_int8(qk[sel], sk[sel], kv.dtype).view(len(block_ids), h, bs * d)
                v = dequantize_int8(qv[sel], sv[sel], kv.dtype).view(len(block_ids), h, bs * d)
                slabs[..., k_idx.reshape(-1)] = k
                slabs[..., v_idx.reshape(-1)] = v
                flat[ids] = slabs
            else:
                flat[ids] = stored[0][sel]
        self.swapped_in += 1
        self.drop(req_id)

    def drop(self, req_id: str) -> None:
        entry = self._entries.pop(req_id, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
