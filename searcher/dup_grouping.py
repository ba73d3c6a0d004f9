"""The grouping algorithm of duplicate detection (pure: no files, no database): representatives
ranked by how many others they match, groups that never chain."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

MAX_LAZY_COMPONENT = 64  # verify representative-vs-member pairs not among candidates in components this small
TRY_REPRESENTATIVES = 3  # in such components, the first representative is the best of this many candidates
MAX_DEPTH = 512  # the deepest neighbour list asked for around one representative
MAX_ALTERNATES = 2  # members that also anchor a group (what fails against the representative is tried on them)
ALTERNATE_SCORE = 0.9  # verified score a member needs against the representative to anchor its group too
SAME_PICTURE_COSINE = 0.95  # CNN cosine of near-identical variants (re-saves, resizes, mirror images)


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


def centrality_order(
    order: Sequence[int], edges: dict[tuple[int, int], float], floor: float, same: float = SAME_PICTURE_COSINE
) -> list[int]:
    """Units ranked as representatives before anything is verified: the most central first.

    A unit's centrality is the sum of its CNN cosines over candidate edges of at least ``floor``. Of an
    original and its edited copies the original is central: every copy resembles it, whereas two copies
    (each edited its own way) resemble each other less. Near-identical variants (cosine >= ``same``: a
    re-save, a resize, a mirror image) are about as central as the original, and whichever the CNN puts
    a hair ahead is chance, so each unit counts the best centrality among them and ties go to ``order``
    (the keep rules: the highest resolution, the largest file, the oldest, a name that is not a copy's).
    Which file of a group is *kept* is decided by the keep rules alone.
    """
    weight: dict[int, float] = {}
    for (a, b), s in edges.items():
        if s >= floor:
            weight[a] = weight.get(a, 0.0) + s
            weight[b] = weight.get(b, 0.0) + s
    best = dict(weight)
    for (a, b), s in edges.items():
        if s >= same:
            top = max(weight.get(a, 0.0), weight.get(b, 0.0))
            best[a] = max(best.get(a, 0.0), top)
            best[b] = max(best.get(b, 0.0), top)
    rank = {h: i for i, h in enumerate(order)}
    return sorted(order, key=lambda h: (-round(best.get(h, 0.0), 6), rank[h]))


def group_around_representatives(
    order: Sequence[int],
    neighbours: dict[int, set[int]],
    score_pairs: Callable[[list[tuple[int, int]]], list[float | None]],
    threshold: float,
    allowed: Callable[[int, int], bool] = lambda a, b: True,
    reachable: Callable[[int, int], bool] = lambda rep, u: True,
    max_rounds: int = 8,
    visited: Callable[[], None] = lambda: None,
    deeper: Callable[[int, int], Iterable[int]] | None = None,
    alternates: int = MAX_ALTERNATES,
    alternate_score: float = ALTERNATE_SCORE,
    centre: Callable[[list[int]], int] | None = None,
) -> list[tuple[int, list[tuple[int, float]]]]:
    """Groups verified around representatives: about one verified pair per copy.

    Units are taken in ``order`` (best representative first). A unit not yet in a group is scored against
    its candidate ``neighbours`` that are not in a group either (``score_pairs`` scores a batch, in
    parallel, ``None`` when a pair cannot be scored); those scoring >= ``threshold`` join it. Then the
    neighbours of the new members that ``reachable(anchor, unit)`` allows (the caller checks the CNN
    cosine) are scored too, for up to ``max_rounds`` rounds: copies of one original that are each
    other's neighbours but not the original's still join it.

    Which copy leads is a guess made before verifying (the CNN's centrality): a colour-jittered copy
    may lead, and a copy with a sticker may fail against it yet match the original. So the ``alternates``
    members that match the representative best, at >= ``alternate_score`` (near-identical versions of
    it: the original, a re-save), are anchors too: what fails against the representative is scored
    against them. Every member matches the representative or one of those directly (at most one step
    away, through a near-identical picture: groups do not drift the way chains of similar pictures do),
    and no two members of a group are a pair ``allowed`` refuses. ``visited`` is called once per unit
    of ``order``. ``deeper(anchor, depth)``: its ``depth`` nearest units (CNN), asked for when most of
    the representative's candidate neighbours turned out to be copies: a picture with many copies has
    more of them than its neighbour list holds (blurred copies, say, are nearer each other than the
    original). ``centre(units)``: the most central of a group's units (the CNN medoid); once a group
    stops growing, its centre (when a member, not yet an anchor) becomes an anchor too and what is left
    is tried against it: the representative is chosen before anything is verified and is often an
    edited copy (a recoloured one, say), whereas the medoid of the verified group is most often the
    original, which matches copies (stickers, captions) that fail against the edited one. Returns
    ``[(representative, [(member, score), ...]), ...]``, each score against the anchor the member matched.
    """
    rank = {u: r for r, u in enumerate(order)}
    taken: set[int] = set()
    groups: list[tuple[int, list[tuple[int, float]]]] = []
    for rep in order:
        visited()
        if rep in taken or rep not in neighbours:
            continue
        members: list[tuple[int, float]] = []
        in_group = {rep}
        anchors = [rep]
        direct: list[tuple[int, float]] = []  # members that matched the representative itself
        searched: dict[int, int] = {}  # anchor -> how deep its neighbours were fetched
        tried: dict[int, int] = {}  # unit -> how many anchors (in order) it was scored against
        frontier = [u for u in neighbours[rep] if u not in taken]
        centred = centre is None
        for _ in range(max_rounds + 1):
            for u in frontier:
                tried.setdefault(u, 0)
            joined: list[int] = []
            for ai, anchor in enumerate(anchors):
                batch = sorted((u for u, n in tried.items() if n <= ai and u not in in_group), key=rank.__getitem__)
                for u in batch:
                    tried[u] = ai + 1
                pairs = [
                    (anchor, u)
                    for u in batch
                    if allowed(anchor, u) and allowed(rep, u) and (anchor == rep or reachable(anchor, u))
                ]
                for (_, u), s in zip(pairs, score_pairs(pairs) if pairs else [], strict=True):
                    if s is not None and s >= threshold and all(allowed(m, u) for m, _ in members):
                        members.append((u, s))
                        in_group.add(u)
                        joined.append(u)
                        if anchor == rep:
                            direct.append((u, s))
            before = len(anchors)
            for u, s in sorted(direct, key=lambda m: (-m[1], rank[m[0]])):  # only the representative's own matches
                if len(anchors) > alternates or s < alternate_score:
                    break
                if u not in anchors:
                    anchors.append(u)
            nearby = [w for u in joined for w in neighbours.get(u, ()) if w not in tried and w not in taken]
            frontier = [w for w in dict.fromkeys(nearby) if w != rep and any(reachable(a, w) for a in anchors)]
            if deeper is not None and joined and 2 * len(members) >= len(neighbours[rep]):
                depth = min(MAX_DEPTH, 2 * (len(members) + len(neighbours[rep])))
                for anchor in anchors:
                    if depth >= 2 * searched.get(anchor, 0):  # again when the group has doubled
                        searched[anchor] = depth
                        extra = (w for w in deeper(anchor, depth) if w not in tried and w not in taken)
                        frontier += [w for w in extra if w != rep and w not in frontier]
            if not frontier and len(anchors) == before:
                if centred or len(members) < 2:
                    break
                centred = True  # the group stopped growing: try what is left against its centre
                middle = centre(sorted(in_group))  # type: ignore[misc]
                if middle in anchors:
                    break
                anchors.append(middle)
                frontier = [w for w in neighbours.get(middle, ()) if w not in tried and w not in taken and w != rep]
                if deeper is not None:
                    depth = min(MAX_DEPTH, 2 * (len(members) + len(neighbours[rep])))
                    searched[middle] = depth
                    frontier += [w for w in deeper(middle, depth) if w not in tried and w not in taken and w != rep]
        if members:
            taken.update(in_group)
            groups.append((rep, members))
    return groups
