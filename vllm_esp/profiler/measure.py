"""Timing grid, resumable point cache and fit — independent of how an engine is started.

A *timer* answers two questions for one ESP group size ``k``:
``prefill(batch, length)`` — seconds to prefill ``batch`` prompts of ``length`` tokens, and
``decode(batch, length, steps)`` — seconds per decode iteration for ``batch`` requests whose
context grows from ``length`` by ``steps`` tokens. ``run_grid`` walks batch sizes × lengths ×
instance counts, skipping points already in the cache file (one JSON object per line, appended
as soon as a point is measured, so an interrupted run resumes where it stopped). ``fit_profile``
turns the points into a :class:`CostModel` and records each fit's mean relative error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from vllm_esp.planner.cost_model import CostModel, ProfileMeta, fit_linear3, mean_relative_error


class Timer(Protocol):
    def prefill(self, batch: int, length: int) -> float: ...

    def decode(self, batch: int, length: int, steps: int) -> float: ...


@dataclass(frozen=True)
class Grid:
    instances: tuple[int, ...] = (1,)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    lengths: tuple[int, ...] = (32, 128, 512, 1024)  # prompt tokens
    decode_steps: int = 16  # tokens generated when timing decode

    def check(self) -> None:
        """ValueError unless every (phase, k) group can be fitted: three coefficients need
        points that vary in both features, i.e. 2+ batch sizes and 2+ lengths (one length
        makes S2 proportional to S1; one batch size makes the batch term a constant)."""
        if not self.instances:
            raise ValueError("no ESP group size to measure (--instances)")
        if len(set(self.batch_sizes)) < 2 or len(set(self.lengths)) < 2:
            raise ValueError(
                f"a fit needs at least 2 batch sizes and 2 lengths, got --batch-sizes "
                f"{','.join(map(str, self.batch_sizes))} --lengths "
                f"{','.join(map(str, self.lengths))}")


@dataclass(frozen=True)
class Point:
    phase: str  # "prefill" | "decode"
    k: int  # instances
    batch: int  # requests
    length: int  # prompt tokens
    seconds: float  # prefill: whole prefill; decode: one iteration

    def key(self) -> str:
        return f"{self.phase}|{self.k}|{self.batch}|{self.length}"

    def features(self, decode_steps: int) -> tuple[float, float]:
        """(x, y) of the cost model: prefill (S1, S2); decode (batch, total context)."""
        if self.phase == "prefill":
            return self.batch * self.length, self.batch * self.length**2
        return self.batch, self.batch * (self.length + decode_steps / 2)


@dataclass
class PointCache:
    path: Path | None
    points: dict[str, Point] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path | None) -> "PointCache":
        cache = cls(Path(path) if path else None)
        if cache.path and cache.path.exists():
            for line in cache.path.read_text().splitlines():
                if line.strip():
                    p = Point(**json.loads(line))
                    cache.points[p.key()] = p
        return cache

    def add(self, p: Point) -> None:
        self.points[p.key()] = p
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(p.__dict__) + "\n")


def grid_keys(grid: Grid) -> list[tuple[str, int, int, int]]:
    return [(phase, k, b, l) for k in grid.instances for phase in ("prefill", "decode")
            for b in grid.batch_sizes for l in grid.lengths]


def run_grid(timer_for_k: Callable[[int], Timer], grid: Grid, cache: PointCache,
             progress: Callable | None = None) -> list[Point]:
    """Measure every missing grid point; ``timer_for_k`` is only called for k with work left."""
    todo = [key for key in grid_keys(grid) if "|".join(map(str, key)) not in cache.points]
    bar = progress(total=len(grid_keys(grid)), initial=len(grid_keys(grid)) - len(todo)) if progress else None
    timers: dict[int, Timer] = {}
    for phase, k, b, l in todo:
        timer = timers.get(k) or timers.setdefault(k, timer_for_k(k))
        if phase == "prefill":
            t = timer.prefill(b, l)
        else:
            t = timer.decode(b, l, grid.decode_steps)
        cache.add(Point(phase, k, b, l, t))
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    keys = {"|".join(map(str, key)) for key in grid_keys(grid)}
    return [p for key, p in cache.points.items() if key in keys]


def fit_profile(points: list[Point], grid: Grid, meta: ProfileMeta, kv_bytes_per_token: int,
                migration_bandwidth: float, migration_latency: float = 0.0) -> CostModel:
    """Fit every (phase, k) of ``grid``; ValueError naming the groups with too few points
    (a profile missing a group would make the planner fail later, or never spread)."""
    prefill, decode = {}, {}
    short = []
    for k in grid.instances:
        for phase, table in (("prefill", prefill), ("decode", decode)):
            rows = [(*p.features(grid.decode_steps), p.seconds) for p in points
                    if p.k == k and p.phase == phase and p.seconds > 0]
            if len(rows) < 3:
                short.append(f"{phase} k={k}: {len(rows)}")
                continue
            table[k] = fit_linear3(rows)
            meta.fit_mean_rel_error[f"{phase}/k={k}"] = round(mean_relative_error(table[k], rows), 4)
    if short:
        raise ValueError(f"too few measured points to fit 3 coefficients ({'; '.join(short)} "
                         "points, 3 needed): give more --batch-sizes and --lengths")
    return CostModel(meta, prefill, decode, kv_bytes_per_token, migration_bandwidth, migration_latency)
