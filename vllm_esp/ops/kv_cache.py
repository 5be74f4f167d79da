"""Paged KV cache layouts: writing slots and reading blocks back, per platform.

Three layouts, one interface (``allocate``, ``write``, ``gather``):

- ``CpuPagedKV`` — vLLM's CPU attention backend (``CPU_ATTN``): one tensor
  ``[num_blocks, num_kv_heads, block_size, 2 * head_dim]``. Inside each (block, head) slab the
  element order depends on the kernel ISA (``vec``: K stored transposed ``[head_dim,
  block_size]`` then V ``[block_size, head_dim]``; ``vec16``/``amx`` pack differently). We
  never hand-roll it: writes go through vLLM's own ``cpu_attn_reshape_and_cache`` (which skips
  slot -1), and reads use an index map *probed* once per (isa, block_size, head_dim, dtype) by
  writing known values with that same op and locating them. So if vLLM changes the in-block
  layout, reads follow automatically.
- ``NhdPagedKV`` — the GPU flash-attn layout ``[2, num_blocks, block_size, num_kv_heads,
  head_dim]`` that the Triton kernel reads. Written with plain indexing (slot -1 skipped).
- ``FlashPagedKV`` — the cache vLLM 0.32's ``FLASH_ATTN`` backend hands its impl: one tensor
  ``[num_blocks, num_kv_heads, block_size, 2 * head_dim]`` that the backend splits as
  ``kv_cache.transpose(1, 2).split(head_dim, dim=-1)`` into K and V ``[num_blocks,
  block_size, num_kv_heads, head_dim]`` views. Reads and writes go through those same views,
  so they follow vLLM's own definition (the engine's GPU path; device-agnostic torch).

vLLM is imported only when a CPU layout is constructed.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["CpuPagedKV", "FlashPagedKV", "NhdPagedKV"]


def _vllm_ops():
    import vllm._custom_ops as ops  # noqa: PLC0415  (heavy; CPU layout only)

    return ops


class _PagedKV:
    """What every layout reads the same way: ``gather`` is ``gather_blocks`` token-major."""

    def gather_blocks(self, kv_cache: torch.Tensor, block_ids: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def gather(self, kv_cache: torch.Tensor, block_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``block_ids [..., n]`` -> ``(k, v)`` each ``[..., n * block_size, Hkv, D]``."""
        k, v = self.gather_blocks(kv_cache, block_ids)
        return _token_major(k), _token_major(v)

    def block_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """K and V of every block as strided views ``[num_blocks, Hkv, block_size, D]`` of the
        cache itself (no copy: kernels read blocks in place), or None if the layout has no
        such view."""
        return None


class CpuPagedKV(_PagedKV):
    """vLLM CPU_ATTN layout. ``isa`` defaults to what vLLM's backend picks for this shape."""

    def __init__(self, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                 isa: str | None = None):
        if isa is None:
            from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

            isa = _get_attn_isa(dtype, block_size, head_dim)
        self.num_kv_heads, self.head_dim, self.block_size = num_kv_heads, head_dim, block_size
        self.dtype, self.isa = dtype, isa

    def allocate(self, num_blocks: int) -> torch.Tensor:
        return torch.zeros(num_blocks, self.num_kv_heads, self.block_size, 2 * self.head_dim,
                           dtype=self.dtype)

    def _split(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nb, h, bs, _ = kv_cache.shape
        return kv_cache.view(nb, h, bs * 2, -1).chunk(2, dim=2)  # as vLLM's impl does

    def write(self, kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
        """Store ``key/value [T, Hkv, D]`` at ``slot_mapping [T]`` (int64; -1 = skip)."""
        if key.shape[0] == 0:
            return
        kc, vc = self._split(kv_cache)
        _vllm_ops().cpu_attn_reshape_and_cache(
            key.contiguous(), value.contiguous(), kc, vc, slot_mapping.to(torch.int64), self.isa
        )

    def gather_blocks(self, kv_cache: torch.Tensor, block_ids: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``block_ids [..., n]`` -> ``(k, v)`` each ``[..., n, Hkv, block_size, D]``.

        When the probed in-slab order is affine in (token, dim) — true for ``vec``, where K is
        ``[D, bs]`` and V ``[bs, D]`` — this is a strided view plus one block gather; other
        ISAs fall back to an element gather through the probed index map.
        """
        nb, h, bs, d2 = kv_cache.shape
        ids = block_ids.long()
        if _affine_maps(self.isa, bs, self.head_dim, self.dtype) is not None:
            # whole slabs (a plain row gather: fast), then the strided K/V views of the copy
            sel = torch.index_select(kv_cache, 0, ids.reshape(-1))  # (6x faster than [ids])
            k, v = self.block_views(sel)
            lead = tuple(ids.shape)
            return (k.reshape(*lead, h, bs, self.head_dim),
                    v.reshape(*lead, h, bs, self.head_dim))
        d = self.head_dim
        slabs = kv_cache.view(nb, h, bs * d2)
        k_idx, v_idx = _probe_cpu_layout(self.isa, bs, d, self.dtype)
        sel = slabs[block_ids.long()]  # [..., n, H, bs*2D]
        lead = sel.shape[:-1]
        k = sel[..., k_idx.view(-1)].view(*lead, bs, d)
        v = sel[..., v_idx.view(-1)].view(*lead, bs, d)
        return k, v

    def block_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Strided views ``[num_blocks, Hkv, block_size, D]`` of K and V when the probed
        in-slab order is affine in (token, dim), as for ``vec`` (K ``[D, bs]``, V ``[bs, D]``)."""
        nb, h, bs, d2 = kv_cache.shape
        aff = _affine_maps(self.isa, bs, self.head_dim, self.dtype)
        if aff is None:
            return None
        slabs = kv_cache.view(nb, h, bs * d2)
        return tuple(torch.as_strided(slabs, (nb, h, bs, self.head_dim),
                                      (slabs.stride(0), slabs.stride(1), st, sd),
                                      slabs.storage_offset() + off)
                     for off, st, sd in aff)


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``[..., n, H, bs, D]`` -> ``[..., n * bs, H, D]``."""
    *lead, n, h, bs, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, n * bs, h, d)


@functools.lru_cache(maxsize=32)
def _affine_maps(isa: str, block_size: int, head_dim: int, dtype: torch.dtype):
    """``((off, t_stride, d_stride) for K, for V)`` if the probed maps are affine, else None."""
    maps = []
    for idx in _probe_cpu_layout(isa, block_size, head_dim, dtype):
        off = int(idx[0, 0])
        st = int(idx[1, 0] - idx[0, 0]) if block_size > 1 else 0
        sd = int(idx[0, 1] - idx[0, 0]) if head_dim > 1 else 0
        t = torch.arange(block_size).view(-1, 1)
        dd = torch.arange(head_dim).view(1, -1)
        if not torch.equal(idx, off + t * st + dd * sd):
            return None
        maps.append((off, st, sd))
    return tuple(maps)


@functools.lru_cache(maxsize=32)
def _probe_cpu_layout(isa: str, block_size: int, head_dim: int, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat offsets inside one (block, head) slab of token t, dim d: ``(k_idx, v_idx) [bs, D]``.

    Each flat index ``t * D + d`` is written in base-32 digits (values 1..32, exact in every
    float dtype vLLM supports), one vLLM write per digit; K digits positive, V negative.
    """
    ops = _vllm_ops()
    n = block_size * head_dim
    digits = 1
    while 32 ** digits < n:
        digits += 1
    idx = torch.arange(n, dtype=torch.int64)
    k_found = torch.zeros(n, dtype=torch.int64)
    v_found = torch.zeros(n, dtype=torch.int64)
    k_pos = v_pos = None
    for dgt in range(digits):
        val = ((idx // 32 ** dgt) % 32 + 1).to(dtype).view(block_size, 1, head_dim)
        cache = torch.zeros(1, 1, block_size, 2 * head_dim, dtype=dtype)
        kc, vc = cache.view(1, 1, block_size * 2, head_dim).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(val, -val, kc, vc,
                                       torch.arange(block_size, dtype=torch.int64), isa)
        flat = cache.view(-1).float()
        if k_pos is None:  # which slab offsets hold K / V at all
            k_pos = (flat > 0).nonzero().view(-1)
            v_pos = (flat < 0).nonzero().view(-1)
            if k_pos.numel() != n or v_pos.numel() != n:
                raise RuntimeError(f"unexpected CPU KV layout for isa={isa}")
        k_found += (flat[k_pos].round().long() - 1) * 32 ** dgt
        v_found += ((-flat[v_pos]).round().long() - 1) * 32 ** dgt
    k_idx = torch.empty(n, dtype=torch.int64)
    v_idx = torch.empty(n, dtype=torch.int64)
    k_idx[k_found] = k_pos
    v_idx[v_found] = v_pos
    if not (torch.sort(k_found).values == idx).all():
        raise RuntimeError("CPU KV layout probe is not a permutation")
    return k_idx.view(block_size, head_dim), v_idx.view(block_size, head_dim)


class _DevicePagedKV(_PagedKV):
    """A layout whose K and V are plain views ``[num_blocks, block_size, Hkv, D]`` of the
    cache (``_split``): written and read with torch indexing on any device."""

    def __init__(self, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.num_kv_heads, self.head_dim, self.block_size = num_kv_heads, head_dim, block_size
        self.dtype, self.device = dtype, torch.device(device)

    def _split(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def kv_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V as views ``[num_blocks, block_size, Hkv, D]`` (what device kernels read
        in place: flash-attn's paged layout, the Triton kernel)."""
        return self._split(kv_cache)

    def write(self, kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
        """Store ``key/value [T, Hkv, D]`` at ``slot_mapping [T]`` (int64; -1 = skip)."""
        keep = slot_mapping >= 0
        slots = slot_mapping[keep].long()
        blocks, offsets = slots // self.block_size, slots % self.block_size
        kc, vc = self._split(kv_cache)
        kc[blocks, offsets] = key[keep].to(kv_cache.dtype)
        vc[blocks, offsets] = value[keep].to(kv_cache.dtype)

    def gather_blocks(self, kv_cache: torch.Tensor, block_ids: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``block_ids [..., n]`` -> ``(k, v)`` each ``[..., n, Hkv, block_size, D]``."""
        kc, vc = self._split(kv_cache)
        ids = block_ids.long()
        lead = tuple(ids.shape)

        def take(x):  # index_select: a plain row gather (advanced indexing is ~6x slower)
            sel = torch.index_select(x, 0, ids.reshape(-1))
            return sel.reshape(*lead, *x.shape[1:]).transpose(-3, -2)  # from [..., n, bs, H, D]

        return take(kc), take(vc)

    def block_views(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kc, vc = self._split(kv_cache)
        return kc.transpose(1, 2), vc.transpose(1, 2)


class NhdPagedKV(_DevicePagedKV):
    """Flash-attn layout ``[2, num_blocks, block_size, Hkv, D]`` (GPU path, Triton kernel)."""

    def allocate(self, num_blocks: int) -> torch.Tensor:
        return torch.zeros(2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim,
                           dtype=self.dtype, device=self.device)

    def _split(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kv_cache[0], kv_cache[1]


class FlashPagedKV(_DevicePagedKV):
    """vLLM 0.32 ``FLASH_ATTN`` layout ``[num_blocks, Hkv, block_size, 2 * D]`` (see module doc)."""

    def allocate(self, num_blocks: int) -> torch.Tensor:
        return torch.zeros(num_blocks, self.num_kv_heads, self.block_size, 2 * self.head_dim,
                           dtype=self.dtype, device=self.device)

    def _split(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V views ``[num_blocks, block_size, Hkv, D]``, as the backend takes them."""
        return kv_cache.transpose(1, 2).split(self.head_dim, dim=-1)
