"""Analytical cost model: prefill, decode and KV-migration time, fitted from a profile.

* Prefill of a batch on an ESP group of ``k`` instances:
  ``T = A_k + B_k·S1 + C_k·S2`` seconds with ``S1 = Σ l`` (tokens) and ``S2 = Σ l²`` (tokens²):
  linear layers cost per token, attention per token pair.
* Decode iteration of a batch on ``k`` instances: ``T = D_k + E_k·b + F_k·c`` seconds, ``b`` the
  batch size (requests) and ``c`` the total context (KV tokens read): weights are streamed once
  per iteration (D), per-request compute (E), attention reads KV (F).
* Migration of KV: ``latency + tokens·kv_bytes_per_token / bandwidth`` seconds.
* A static tensor-parallel group of ``k`` instances (the baselines' TP engines) is derived from
  the ``k = 1`` coefficients with the weight read and compute split over the group and its
  all-reduces charged (``tp_group.py``; ``tp_*_time``).

Coefficients are fitted by least squares on *relative* error (weights ``1/t²``), because a
profile spans 1 ms to seconds and absolute error would ignore the short iterations.

A ``k`` that was not profiled is extrapolated from the nearest profiled ``k0 < k`` assuming
ideal scaling of the per-token terms (``B·k0/k``, ``C·k0/k``; overhead unchanged). This is an
optimistic guess, marked as such by ``CostModel.is_profiled``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tp_group import TPGroupTerms, group_allreduce_time, tp_decode_terms, tp_prefill_terms


@dataclass(slots=True)
class Linear3:
    """``t = a + b·x + c·y``: prefill (x=S1, y=S2) or decode (x=batch, y=context)."""

    a: float  # seconds
    b: float  # seconds per unit of x
    c: float  # seconds per unit of y

    def __call__(self, x: float, y: float) -> float:
        return self.a + self.b * x + self.c * y


@dataclass(slots=True)
class ProfileMeta:
    """Where a profile comes from; the planner refuses nothing, but humans must know."""

    model: str
    dtype: str
    tp_size: int
    device: str
    source: str = "measured"  # "measured" | "estimated" (FLOP/bandwidth arithmetic)
    notes: str = ""
    fit_mean_rel_error: dict[str, float] = field(default_factory=dict)  # "prefill/k=1" -> 0.03


@dataclass
class CostModel:
    meta: ProfileMeta
    prefill: dict[int, Linear3]  # instances k -> coefficients
    decode: dict[int, Linear3]  # instances k -> coefficients
    kv_bytes_per_token: int  # bytes of K+V for one token across all layers of one instance
    migration_bandwidth: float  # bytes per second between two instances
    migration_latency: float = 0.0  # seconds per migration operation
    tp_group: TPGroupTerms | None = None  # static TP-group terms (None: ideal split, no AR)
    # memo of extrapolated coefficients, never saved
    _extrapolated: dict = field(default_factory=dict, repr=False, compare=False)

    # ---- evaluation (hot path of the planner) --------------------------------------------
    def prefill_time(self, k: int, s1: float, s2: float) -> float:
        return self._coeffs(self.prefill, k)(s1, s2)

    def decode_time(self, k: int, batch_size: int, context_tokens: float) -> float:
        if batch_size == 0:
            return 0.0
        return self._coeffs(self.decode, k)(batch_size, context_tokens)

    def migration_time(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return self.migration_latency + tokens * self.kv_bytes_per_token / self.migration_bandwidth

    # ---- a static tensor-parallel group of k instances (baselines) -----------------------
    def tp_mixed_time(self, k: int, s1: float, s2: float, decodes: int, ctx: float) -> float:
        """Seconds of one iteration of a TP group of ``k`` instances running prefill tokens
        ``s1`` (attention pairs ``s2``) and ``decodes`` decode requests reading ``ctx`` KV
        tokens: ``max(A, D)`` once when both kinds run, each kind's own constant otherwise."""
        a, b, c = tp_prefill_terms(*self._k1(self.prefill), k)
        d, e, f = tp_decode_terms(*self._k1(self.decode), k, self.tp_group)
        t = group_allreduce_time(self.tp_group, max(1, self.meta.tp_size), k, s1 + decodes)
        if s1 and decodes:
            return t + max(a, d) + b * s1 + c * s2 + e * decodes + f * ctx
        if s1:
            return t + a + b * s1 + c * s2
        if decodes:
            return t + d + e * decodes + f * ctx
        return 0.0

    def tp_prefill_time(self, k: int, s1: float, s2: float) -> float:
        return self.tp_mixed_time(k, s1, s2, 0, 0.0)

    def tp_decode_time(self, k: int, batch_size: int, context_tokens: float) -> float:
        return self.tp_mixed_time(k, 0, 0.0, batch_size, context_tokens)

    def _k1(self, table: dict[int, Linear3]) -> tuple[float, float, float]:
        c = self._coeffs(table, 1)
        return c.a, c.b, c.c

    def prefill_coeffs(self, k: int) -> Linear3:
        """Coefficients for k instances (profiled or extrapolated); hot loops inline them."""
        return self._coeffs(self.prefill, k)

    def is_profiled(self, k: int) -> bool:
        return k in self.prefill

    def _coeffs(self, table: dict[int, Linear3], k: int) -> Linear3:
        got = table.get(k)
        if got is not None:
            return got
        key = (id(table), k)
        got = self._extrapolated.get(key)
        if got is None:
            below = [k0 for k0 in table if k0 < k]
            k0 = max(below) if below else min(table)
            base = table[k0]
            got = Linear3(base.a, base.b * k0 / k, base.c * k0 / k)
            self._extrapolated[key] = got
        return got

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "format": "vllm-esp-profile/1",
            "meta": asdict(self.meta),
            "prefill": {str(k): asdict(v) for k, v in sorted(self.prefill.items())},
            "decode": {str(k): asdict(v) for k, v in sorted(self.decode.items())},
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "migration_bandwidth": self.migration_bandwidth,
            "migration_latency": self.migration_latency,
        }
        if self.tp_group is not None:
            d["tp_group"] = asdict(self.tp_group)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CostModel":
        if not d.get("prefill") or not d.get("decode"):
            raise ValueError("the profile has no fitted prefill/decode coefficients (an empty "
                             "fit); measure it again with `vllm-esp profile`")
        return cls(
            meta=ProfileMeta(**d["meta"]),
            prefill={int(k): Linear3(**v) for k, v in d["prefill"].items()},
            decode={int(k): Linear3(**v) for k, v in d["decode"].items()},
            kv_bytes_per_token=int(d["kv_bytes_per_token"]),
            migration_bandwidth=float(d["migration_bandwidth"]),
            migration_latency=float(d.get("migration_latency", 0.0)),
            tp_group=TPGroupTerms(**d["tp_group"]) if d.get("tp_group") else None,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        return cls.from_dict(json.loads(Path(path).read_text()))


def builtin_profiles() -> list[str]:
    """Names of the JSON profiles shipped in ``vllm_esp/planner/profiles/``."""
    return sorted(p.stem for p in (Path(__file__).parent / "profiles").glob("*.json"))


def load_builtin(name: str) -> CostModel:
    return CostModel.load(Path(__file__).parent / "profiles" / f"{name}.json")


# ---- fitting -------------------------------------------------------------------------------
def fit_linear3(points: list[tuple[float, float, float]]) -> Linear3:
    """Fit ``t = a + b·x + c·y`` to ``(x, y, t)`` minimising Σ ((pred − t)/t)².

    Weighted normal equations, 3×3, solved by Gaussian elimination with partial pivoting;
    columns are scaled first so S2 (up to 1e12) and the constant stay well conditioned.
    """
    if len(points) < 3:
        raise ValueError("need at least 3 points to fit 3 coefficients")
    rows = [(1.0, float(x), float(y), float(t)) for x, y, t in points if t > 0]
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(3)]
    ata = [[0.0] * 3 for _ in range(3)]
    atb = [0.0] * 3
    for r in rows:
        w = 1.0 / (r[3] * r[3])
        v = [r[j] / scale[j] for j in range(3)]
        for i in range(3):
            atb[i] += w * v[i] * r[3]
            for j in range(3):
                ata[i][j] += w * v[i] * v[j]
    sol = _solve3(ata, atb)
    return Linear3(*(sol[j] / scale[j] for j in range(3)))


def _solve3(m: list[list[float]], rhs: list[float]) -> list[float]:
    n = len(rhs)
    a = [row[:] + [rhs[i]] for i, row in enumerate(m)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-300:
            a[piv][col] = 1e-300  # degenerate grid (e.g. y constant): coefficient -> ~0
        a[col], a[piv] = a[piv], a[col]
        for r in range(col + 1, n):
            f = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= f * a[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][c] * x[c] for c in range(r + 1, n))) / a[r][r]
    return x


def mean_relative_error(fn: Linear3, points: list[tuple[float, float, float]]) -> float:
    errs = [abs(fn(x, y) - t) / t for x, y, t in points if t > 0]
    return sum(errs) / len(errs)
