"""The grouping algorithm of duplicate detection (pure: no files, no database): representatives
ranked by how many others they match, groups that never chain."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

MAX_LAZY_COMPONENT = 64  # verify representative-vs-member pairs not among candidates in components this small
TRY_REPRESENTATIVES = 3  # in such components, the first representative is the best of this many candidates


def group_units(
    n: int,
    order: Sequence[int],
    edge_score: Callable[[int, int], float | None],
    neighbours: dict[int, set[int]],
    threshold: float,
    allowed: Callable[[int, int], bool] = lambda a, b: True,
    lazy_limit: int = MAX_LAZY_COMPONENT,
    try_first: int = 1,
) -> list[tuple[int, list[tuple[int, float]]]]:
    """Representative-based grouping that never chains.

    ``order`` ranks units best-first as representatives; ``neighbours`` are the candidate
    edges; ``edge_score(a, b)`` gives (or computes) the score of a pair, ``None`` if it
    cannot be scored. Within each connected component of edges scoring >= ``threshold``,
    units are taken best first; one that scores >= ``threshold`` against no representative
    so far becomes a representative. Every other unit then joins the representative it
    scores *best* against (not merely the first it passes), so each member matches its
    own representative directly (pairs not among the candidates are scored too when the
    component has at most ``lazy_limit`` units), and no two members of a group are a pair
    that ``allowed`` refuses. ``try_first`` > 1: in components scored in full (at most
    ``lazy_limit`` units), the first representative is whichever of the ``try_first``
    best-ranked units passes the most others. Returns
    ``[(representative, [(member, score), ...]), ...]`` for groups of two or more.
    """
    rank = {u: r for r, u in enumerate(order)}
    adjacent: dict[int, set[int]] = {}  # candidate edges, both ways
    for a, nbrs in neighbours.items():
        for b in nbrs:
            adjacent.setdefault(a, set()).add(b)
            adjacent.setdefault(b, set()).add(a)
    strong: dict[int, set[int]] = {}
    for a, nbrs in adjacent.items():
        for b in nbrs:
            if a < b and allowed(a, b):
                s = edge_score(a, b)
                if s is not None and s >= threshold:
                    strong.setdefault(a, set()).add(b)
                    strong.setdefault(b, set()).add(a)
    seen: set[int] = set()
    groups: list[tuple[int, list[tuple[int, float]]]] = []
    for start in sorted(strong, key=lambda u: rank[u]):
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            u = stack.pop()
            comp.append(u)
            for v in strong.get(u, ()):
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        comp.sort(key=lambda u: rank[u])
        lazy = len(comp) <= lazy_limit

        def score(rep: int, u: int) -> float | None:
            if not allowed(rep, u):
                return None
            s = edge_score(rep, u)
            return s if s is not None and s >= threshold else None

        if lazy and try_first > 1 and len(comp) > 2:
            passes = [sum(score(c, u) is not None for u in comp if u != c) for c in comp[:try_first]]
            first = comp[int(np.argmax(passes))]  # the earliest of the best
            comp.remove(first)
            comp.insert(0, first)
        crank = {u: i for i, u in enumerate(comp)}  # rank within the component

        def rivals(u: int, reps: Iterable[int], lazy: bool = lazy, crank: dict[int, int] = crank) -> list[int]:
            """The representatives ``u`` may be scored against, best-ranked first."""
            if lazy:
                return sorted(reps, key=crank.__getitem__)
            near = adjacent.get(u, set())
            return sorted((r for r in near if r in reps), key=crank.__getitem__)

        # 1. representatives, best first: a unit that passes no better-ranked representative is one
        reps: set[int] = set()
        rep_order: list[int] = []
        for u in comp:
            if all(score(r, u) is None for r in rivals(u, reps)):
                reps.add(u)
                rep_order.append(u)
        # 2. every other unit joins the representative it scores best against (ties: the better-ranked),
        # unless a pair of its group is not allowed (then the next best; failing all, it stays alone)
        members: dict[int, list[tuple[int, float]]] = {r: [] for r in rep_order}
        for u in comp:
            if u in reps:
                continue
            passed = [(s, -crank[r], r) for r in rivals(u, reps) if (s := score(r, u)) is not None]
            for s, _, r in sorted(passed, reverse=True):
                if all(allowed(m, u) for m, _ in members[r]):
                    members[r].append((u, s))
                    break
        groups.extend((r, members[r]) for r in rep_order if members[r])
    return groups


def representative_order(
    order: Sequence[int],
    edges: Iterable[tuple[int, int]],
    score: Callable[[int, int], float | None],
    allowed: Callable[[int, int], bool],
    threshold: float,
) -> list[int]:
    """Units ranked as representatives (the pictures group members are compared with).

    The one most others match first. Of an original and its edited copies, the original matches
    every copy, whereas two copies (each edited its own way) match each other less often; a copy as
    representative (say, a noisy one of the same resolution and a bigger file) would leave its crops
    and borders out. Ties: the mean matching score, then ``order`` (the keep rules). Which file of a
    group is *kept* is decided by the keep rules alone.
    """
    matched: dict[int, int] = {}
    matched_sum: dict[int, float] = {}
    for a, b in edges:
        v = score(a, b)
        if v is not None and v >= threshold and allowed(a, b):
            for u in (a, b):
                matched[u] = matched.get(u, 0) + 1
                matched_sum[u] = matched_sum.get(u, 0.0) + v
    rank = {h: i for i, h in enumerate(order)}
    return sorted(order, key=lambda h: (-matched.get(h, 0), -matched_sum.get(h, 0.0), rank[h]))
