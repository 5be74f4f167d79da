"""Step 3 — batching: split admitted requests over prefill instances with a dynamic program.

Requests are sorted by prefill length, instances by used KV (most free first). A batching is a
sequence of contiguous request groups, each paired with a contiguous run of instances (instances
may be left out). A group's cost is its normalised latency ``T_prefill(k; S1, S2) · Σ 1/l``: every
request in the group waits the whole prefill, and slowdown is judged per prompt token. The DP

    f[i][j] = min( f[i][j-1],  min_{a<i, b<j} f[a][b] + cost(req[a:i], inst[b:j]) )

is exact over that space (tests check it against brute force). A group is feasible only when the
free blocks of its instances hold its KV (``Σ ceil(l/block_size)``: sequential packing wastes no
block, see keep_ranges.py). Pruning: ``k`` is capped by ``max_group_size``, and for a fixed
request group larger ``k`` stops once prefill time no longer decreases (``f[a][b]`` only grows as
``b`` shrinks, so this is exact whenever prefill time is unimodal in k — true for the fitted
``A_k + B_k·S1 + C_k·S2`` profiles and for the ideal-scaling extrapolation).
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
    kmax = min(m, max_group_size or m)
    s1 = [0]
    s2 = [0]
    inv = [0.0]
    need = [0]
    for l in lengths:
        s1.append(s1[-1] + l)
        s2.append(s2[-1] + l * l)
        inv.append(inv[-1] + 1.0 / l)
        need.append(need[-1] + -(-l // block_size))
    fb = [0]
    for b in free_blocks:
        fb.append(fb[-1] + b)
    # f[i][j]: best cost for the first i requests on the first j instances; back[i][j] = choice
    f = [[INF] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    for j in range(m + 1):
        f[0][j] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            best, choice = f[i][j - 1], ("skip",)
            for a in range(i):
                g_s1, g_s2 = s1[i] - s1[a], s2[i] - s2[a]
                g_inv, g_need = inv[i] - inv[a], need[i] - need[a]
                prev_t = INF
                for k in range(1, min(kmax, j) + 1):
                    b = j - k
                    if f[a][b] == INF or fb[j] - fb[b] < g_need:
                        continue
                    t = cost.prefill_time(k, g_s1, g_s2)
                    if t >= prev_t:
                        break  # a smaller k already fitted in memory and was at least as fast
                    prev_t = t
                    v = f[a][b] + t * g_inv
                    if v < best:
                        best, choice = v, (a, b, t)
            f[i][j] = best
            back[i][j] = choice
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
