"""Step 3 — batching: split admitted requests over prefill instances with a dynamic program.

Requests are sorted by prefill length, instances by used KV (most free first). A batching is a
sequence of contiguous request groups, each paired with a contiguous run of instances (instances
may be left out). A group's cost is its normalised latency ``T_prefill(k; S1, S2) · Σ 1/l``: every
request in the group waits the whole prefill, and slowdown is judged per prompt token. The DP

    f[i][j] = min( f[i][j-1],  min_{a<i, b<j} f[a][b] + cost(req[a:i], inst[b:j]) )

is exact over that space (tests check it against brute force). A group is feasible only when the
free blocks of its instances hold its KV (``Σ ceil(l/block_size)``: sequential packing wastes no
block, see keep_ranges.py). Speed: group times ``T(k)`` are tabulated once per request range
(they do not depend on which instances); ``f[a][b]`` only grows as ``b`` shrinks, so a request
range is skipped when ``f[a][j-1] + min_k T·Σ1/l`` cannot beat the best so far, and the k loop
stops once time no longer decreases (exact when T is unimodal in k — true for fitted
``A_k + B_k·S1 + C_k·S2`` profiles and the ideal-scaling extrapolation). k is capped by
``max_group_size`` and, above 16, tried on a 25% geometric grid (``candidate_group_sizes``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cost_model import CostModel

INF = float("inf")


@dataclass(slots=True)
class Group:
    """One concurrent prefill: request indices ``[r0, r1)`` on instance indices ``[i0, i1)``."""

    r0: int
    r1: int
    i0: int
    i1: int
    time: float  # seconds, predicted prefill time


def candidate_group_sizes(m: int, kmax: int) -> list[int]:
    """Instance counts the DP tries: every k up to 16, then a ~25% geometric grid, then kmax.

    Exact for groups of at most 16 instances; beyond that a group may get up to 25% more
    instances than strictly optimal (it never gets too few for memory: more k = more memory).
    """
    ks = list(range(1, min(kmax, 16) + 1))
    k = 16
    while k < kmax:
        k = min(kmax, max(k + 1, int(k * 1.25)))
        ks.append(k)
    return ks


def plan_groups(
    lengths: list[int],
    free_blocks: list[int],
    block_size: int,
    cost: CostModel,
    max_group_size: int | None = None,
) -> tuple[float, list[Group]]:
    """Optimal contiguous grouping of sorted ``lengths`` over ordered ``free_blocks``.

    Args:
        lengths: prefill lengths (tokens), already sorted ascending.
        free_blocks: free KV blocks of the candidate instances in their DP order.
    Returns:
        (Σ T·Σ1/l, groups) — groups empty and cost INF when no feasible batching exists.
    """
    n, m = len(lengths), len(free_blocks)
    if n == 0:
        return 0.0, []
    ks = candidate_group_sizes(m, min(m, max_group_size or m))
    coef = [(c.a, c.b, c.c) for c in (cost.prefill_coeffs(k) for k in ks)]
    s1, s2, inv, need = [0], [0], [0.0], [0]
    for l in lengths:
        s1.append(s1[-1] + l)
        s2.append(s2[-1] + l * l)
        inv.append(inv[-1] + 1.0 / l)
        need.append(need[-1] + -(-l // block_size))
    fb = [0]
    for b in free_blocks:
        fb.append(fb[-1] + b)
    # group tables, independent of instances: times[a][i][x] = T(ks[x]) for requests [a, i)
    times = [[None] * (n + 1) for _ in range(n + 1)]
    tmin = [[INF] * (n + 1) for _ in range(n + 1)]
    for a in range(n):
        for i in range(a + 1, n + 1):
            g1, g2 = s1[i] - s1[a], s2[i] - s2[a]
            ts = [ca + cb * g1 + cc * g2 for ca, cb, cc in coef]
            times[a][i] = ts
            tmin[a][i] = min(ts)
    # f[i][j]: best cost for the first i requests on the first j instances; back[i][j] = choice
    f = [[INF] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    f[0] = [0.0] * (m + 1)
    for i in range(1, n + 1):
        fi, bi = f[i], back[i]
        for j in range(1, m + 1):
            best, choice = fi[j - 1], ("skip",)
            for a in range(i):
                fa = f[a]
                g_inv, g_need = inv[i] - inv[a], need[i] - need[a]
                if fa[j - 1] + tmin[a][i] * g_inv >= best:
                    continue  # even the fastest k cannot beat the best found (f[a][·] ↓ in b)
                ts = times[a][i]
                prev_t = INF
                for x, k in enumerate(ks):
                    if k > j:
                        break
                    b = j - k
                    if fa[b] == INF:
                        break  # f[a][b] only grows as b shrinks
                    if fb[j] - fb[b] < g_need:
                        continue
                    t = ts[x]
                    if t >= prev_t:
                        break  # a smaller k already fitted in memory and was at least as fast
                    prev_t = t
                    v = fa[b] + t * g_inv
                    if v < best:
                        best, choice = v, (a, b, t)
            fi[j] = best
            bi[j] = choice
    if f[n][m] == INF:
        return INF, []
    return f[n][m], _trace(back, n, m)


def _trace(back, i: int, j: int) -> list[Group]:
    groups: list[Group] = []
    while i > 0:
        choice = back[i][j]
        if choice[0] == "skip":
            j -= 1
            continue
        a, b, t = choice
        groups.append(Group(a, i, b, j, t))
        i, j = a, b
    groups.reverse()
    return groups
