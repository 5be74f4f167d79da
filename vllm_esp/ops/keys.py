"""Which keys each query row sees: the one description every ESP attention kernel reads.

Every attention ESP computes has the same shape: query row ``i`` of a request attends the
keys ``[0, limit_i)`` of one key source, with ``limit`` non-decreasing over the request's rows
(a *staircase*). The key source is either a contiguous tensor (a ring shard that is passing
through: ``ragged``) or the request's blocks of the paged cache (``paged``):

- a ring hop: query positions ``q_pos`` against a shard at positions ``k_pos`` (both sorted):
  ``limit_i = #{k_pos <= q_pos_i}`` (``by_position``); equal stripes give a shifted diagonal,
  weighted stripes any staircase;
- the asking instance's own chunk: its ``n`` new rows are the last of ``m`` local keys:
  ``limit_i = m - n + i + 1`` (``causal``, flash-attn's bottom-right alignment);
- an earlier chunk (on a peer or here): every key precedes every query: ``limit_i = m``
  (``full``).

A ``KeySegments`` is built once per engine step from the plan (host arithmetic, numpy) and
read by every layer: the tile bounds the CPU kernels loop over are host integers computed
here once, so no layer syncs with the device; the tensors batched kernels want (row limits,
cumulative rows, block tables) are made on the device once, on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Segment", "KeySegments", "full", "causal", "by_position"]


@dataclass(slots=True)
class Segment:
    """One request's query rows ``[q_start, q_end)`` against one key source."""

    q_start: int
    q_end: int
    limits: np.ndarray  # int64 [q_end - q_start], non-decreasing: row i sees keys [0, limits[i])
    k_start: int = 0  # ragged source: the request's first key row in the source tensor
    block_ids: list[int] | None = None  # paged source: its blocks, in token order
    kind: str = "staircase"  # "full" | "causal" | "staircase" (which kernels may take it)
    _tiles: dict = field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        return self.q_end - self.q_start

    @property
    def num_keys(self) -> int:
        """Keys the last row sees (every row sees a prefix of these)."""
        return int(self.limits[-1]) if len(self.limits) else 0

    def query_tiles(self, tile: int) -> list[tuple[int, int, int, int, int]]:
        """``(qa, qb, lo, rb, hi)`` per tile of ``tile`` rows (segment-relative): rows
        ``[qa, qb)`` all see keys ``[0, lo)``; rows ``[rb, qb)`` also see part of
        ``[lo, hi)`` (the band, masked); rows ``[qa, rb)`` see nothing beyond ``lo``."""
        key = ("q", tile)
        if key not in self._tiles:
            out, lim = [], self.limits
            for qa in range(0, len(lim), tile):
                qb = min(qa + tile, len(lim))
                lo, hi = int(lim[qa]), int(lim[qb - 1])
                rb = qa + int(np.searchsorted(lim[qa:qb], lo, side="right"))
                out.append((qa, qb, lo, rb, hi))
            self._tiles[key] = out
        return self._tiles[key]

    def key_tiles(self, tile: int) -> list[tuple[int, int, int, int]]:
        """``(ka, kb, r0, r1)`` per tile of ``tile`` keys: rows ``[r1, n)`` see all of keys
        ``[ka, kb)``, rows ``[r0, r1)`` part of them (masked), rows before ``r0`` none."""
        key = ("k", tile)
        if key not in self._tiles:
            out, lim = [], self.limits
            for ka in range(0, self.num_keys, tile):
                kb = min(ka + tile, self.num_keys)
                r0 = int(np.searchsorted(lim, ka, side="right"))
                r1 = int(np.searchsorted(lim, kb, side="left"))
                out.append((ka, kb, r0, r1))
            self._tiles[key] = out
        return self._tiles[key]


def full(q_start: int, n: int, num_keys: int, **source) -> Segment:
    """``n`` rows that all see ``num_keys`` keys (an earlier chunk)."""
    return Segment(q_start, q_start + n, np.full(n, num_keys, dtype=np.int64), kind="full",
                   **source)


def causal(q_start: int, n: int, num_keys: int, **source) -> Segment:
    """``n`` rows that are the last ``n`` of ``num_keys`` keys (the asker's own chunk)."""
    lim = np.arange(num_keys - n + 1, num_keys + 1, dtype=np.int64)
    if n and lim[0] < 1:
        raise ValueError(f"{n} query rows cannot be the last of {num_keys} keys")
    return Segment(q_start, q_start + n, lim, kind="causal", **source)


def by_position(q_start: int, q_pos: np.ndarray, k_pos: np.ndarray, **source) -> Segment:
    """Rows at prompt positions ``q_pos`` against keys at ``k_pos`` (both ascending): each
    row sees the keys at or before its position (a ring hop)."""
    lim = np.searchsorted(k_pos, q_pos, side="right").astype(np.int64)
    return Segment(q_start, q_start + len(q_pos), lim, kind="staircase", **source)


@dataclass
class KeySegments:
    """The segments of one kernel call (disjoint row ranges of one query tensor)."""

    segments: list[Segment]
    device: torch.device = torch.device("cpu")
    _cache: dict = field(default_factory=dict, repr=False)

    def __iter__(self):
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def num_rows(self) -> int:
        return max((s.q_end for s in self.segments), default=0)

    def row_limits(self) -> torch.Tensor:
        """int32 [num_rows] on the device: each row's key limit (0 outside segments)."""
        if "limits" not in self._cache:
            lim = np.zeros(self.num_rows, dtype=np.int32)
            for s in self.segments:
                lim[s.q_start:s.q_end] = s.limits
            self._cache["limits"] = torch.from_numpy(lim).to(self.device)
        return self._cache["limits"]

    def block_table(self) -> torch.Tensor:
        """int32 [segments, max blocks] on the device (paged sources; padding 0)."""
        if "blocks" not in self._cache:
            ids = [s.block_ids or [] for s in self.segments]
            table = np.zeros((len(ids), max(1, max(map(len, ids), default=1))), dtype=np.int32)
            for i, b in enumerate(ids):
                table[i, :len(b)] = b
            self._cache["blocks"] = torch.from_numpy(table).to(self.device)
        return self._cache["blocks"]

    def block_ids(self, i: int) -> torch.Tensor:
        """int64 block ids of segment ``i`` on the device."""
        key = ("ids", i)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.segments[i].block_ids or [],
                                            dtype=torch.int64, device=self.device)
        return self._cache[key]

    def host_array(self, name: str) -> np.ndarray:
        """Per-segment int arrays for batched kernels: ``q_start``, ``q_end``, ``k_start``,
        ``num_keys``."""
        if name == "num_keys":
            return np.array([s.num_keys for s in self.segments], dtype=np.int32)
        return np.array([getattr(s, name) for s in self.segments], dtype=np.int32)

    def device_array(self, name: str) -> torch.Tensor:
        key = ("dev", name)
        if key not in self._cache:
            self._cache[key] = torch.from_numpy(self.host_array(name)).to(self.device)
        return self._cache[key]
