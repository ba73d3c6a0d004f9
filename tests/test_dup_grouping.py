"""Grouping around representatives: never chains, verifies only representative-to-member pairs."""

from __future__ import annotations

from searcher.dup_grouping import centrality_order, group_around_representatives


def _both_ways(edges: dict[int, set[int]]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for a, bs in edges.items():
        for b in bs:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


class Scorer:
    """Scores from a table; records every pair asked for."""

    def __init__(self, table: dict[tuple[int, int], float]) -> None:
        self.table = table
        self.asked: list[tuple[int, int]] = []

    def __call__(self, pairs: list[tuple[int, int]]) -> list[float | None]:
        self.asked.extend((min(a, b), max(a, b)) for a, b in pairs)
        return [self.table.get((min(a, b), max(a, b))) for a, b in pairs]


def test_no_chaining_and_only_representative_pairs() -> None:
    # 0 ~ 1 and 1 ~ 2 pass, 0 ~ 2 fails: 2 must not join 0's group through 1
    score = Scorer({(0, 1): 0.95, (1, 2): 0.99, (0, 2): 0.2})
    groups = group_around_representatives([0, 1, 2], _both_ways({0: {1, 2}, 1: {2}}), score, 0.9, alternates=0)
    assert groups == [(0, [(1, 0.95)])]
    assert (1, 2) not in score.asked  # a member is never verified against another member
    assert len(score.asked) == len(set(score.asked)) == 2
    # 1 matches 0 at 0.95, under the score that makes a member an anchor (0.97): 2 stays out
    groups = group_around_representatives([0, 1, 2], _both_ways({0: {1, 2}, 1: {2}}), score, 0.9, alternate_score=0.97)
    assert groups == [(0, [(1, 0.95)])]


def test_near_identical_members_anchor_one_step_only() -> None:
    # 1 is a near-identical version of the representative 0 (0.99): 2, which fails against 0, matches 1
    # and joins; 3 matches only 2 (which matched an anchor, not 0 itself): 2 is no anchor, 3 stays out
    nbrs = _both_ways({0: {1, 2, 3}, 1: {2, 3}, 2: {3}})
    table = {(0, 1): 0.99, (0, 2): 0.3, (1, 2): 0.96, (0, 3): 0.1, (1, 3): 0.2, (2, 3): 0.98}
    score = Scorer(table)
    groups = group_around_representatives([0, 1, 2, 3], nbrs, score, 0.9)
    assert groups == [
        (0, [(1, 0.99), (2, 0.96)]),
    ]
    assert (2, 3) not in score.asked


def test_copies_reached_through_members_join_the_original() -> None:
    # 3 is no neighbour of the original 0, only of its copy 1; it is verified against 0 when reachable
    nbrs = _both_ways({0: {1, 2}, 1: {3}})
    table = {(0, 1): 0.97, (0, 2): 0.96, (0, 3): 0.95, (1, 3): 0.99}
    score = Scorer(table)
    assert group_around_representatives([0, 1, 2, 3], nbrs, score, 0.9) == [(0, [(1, 0.97), (2, 0.96), (3, 0.95)])]
    assert (1, 3) not in score.asked
    # not reachable (the CNN says 3 is too far from 0): 3 stays out, and is never verified against 0
    score = Scorer(table)
    far = group_around_representatives([0, 1, 2, 3], nbrs, score, 0.9, reachable=lambda rep, u: u != 3)
    assert far == [(0, [(1, 0.97), (2, 0.96)])]
    assert (0, 3) not in score.asked


def test_refusals_and_unscorable_pairs() -> None:
    nbrs = _both_ways({0: {1, 2}, 1: {2}})
    table = {(0, 1): 0.99, (0, 2): 0.98, (1, 2): 0.97}
    # 1 and 2 were said not to be duplicates: they never share a group (2 leads nothing alone)
    groups = group_around_representatives([0, 1, 2], nbrs, Scorer(table), 0.9, allowed=lambda a, b: {a, b} != {1, 2})
    assert groups == [(0, [(1, 0.99)])]
    # a representative refused with its neighbour is not even scored with it
    score = Scorer(table)
    groups = group_around_representatives([0, 1, 2], nbrs, score, 0.9, allowed=lambda a, b: {a, b} != {0, 1})
    assert groups == [(0, [(2, 0.98)])] and (0, 1) not in score.asked
    # a pair that cannot be scored (an unreadable file) is no match; the order decides who leads
    assert group_around_representatives([1, 0, 2], nbrs, Scorer({(1, 2): 0.95}), 0.9) == [(1, [(2, 0.95)])]


def test_centrality_order_puts_the_original_first() -> None:
    # the original (3) resembles each copy; copies resemble each other less; keep order breaks ties
    edges = {(0, 3): 0.9, (1, 3): 0.92, (2, 3): 0.88, (0, 1): 0.7, (1, 2): 0.6, (4, 5): 0.3}
    assert centrality_order([0, 1, 2, 3, 4, 5], edges, 0.5)[:1] == [3]
    assert centrality_order([5, 4], {(4, 5): 0.3}, 0.5) == [5, 4]  # under the floor: keep-rule order


def test_what_fails_against_an_edited_representative_is_tried_against_the_group_centre() -> None:
    # 0 leads (a recoloured copy, chosen before verifying); 1 is the original, 2 and 3 copies of it: 3 (a
    # sticker) fails against 0 but matches 1, the group's centre, so it joins once the group stops growing
    nbrs = _both_ways({0: {1, 2, 3}, 1: {2, 3}})
    table = {(0, 1): 0.93, (0, 2): 0.92, (0, 3): 0.5, (1, 2): 0.99, (1, 3): 0.95, (2, 3): 0.6}
    without = group_around_representatives([0, 1, 2, 3], nbrs, Scorer(table), 0.9, alternates=0)
    assert without == [(0, [(1, 0.93), (2, 0.92)])]
    score = Scorer(table)
    groups = group_around_representatives(
        [0, 1, 2, 3], nbrs, score, 0.9, alternates=0, centre=lambda units: 1 if 1 in units else units[0]
    )
    assert groups == [(0, [(1, 0.93), (2, 0.92), (3, 0.95)])]
    assert (2, 3) not in score.asked and (1, 2) not in score.asked  # members are not verified against the centre
    # a centre that is the representative itself adds nothing (and asks nothing more)
    score = Scorer(table)
    same = group_around_representatives([0, 1, 2, 3], nbrs, score, 0.9, alternates=0, centre=lambda units: 0)
    assert same == without and (1, 3) not in score.asked
