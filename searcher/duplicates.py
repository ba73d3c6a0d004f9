"""Duplicate detection over an indexed library: candidates, verification, tiers, groups, keep rules.

The stages live in their own modules: :mod:`searcher.dup_candidates` (CNN neighbour pairs),
:mod:`searcher.dup_grouping` (representatives, groups that never chain), :mod:`searcher.dup_keep`
(keep rules and the result types); this module runs them over a library (:func:`find_duplicates`)
and checks incoming files (:func:`check_incoming`).

    from searcher import Library
    from searcher.duplicates import find_duplicates, KeepRules
    with Library.open() as lib:
        report = find_duplicates(lib, ["~/Pictures"], rules=KeepRules(prefer=["~/Pictures/best"]))
        for group in report.groups:
            print(group.tier, [(m.path, m.keep) for m in group.members])

Tiers, strongest first:

* ``exact``: the same bytes (same ``content_hash``).
* ``pixels``: the same decoded picture in different files (a PNG and a BMP of it,
  or a JPEG whose metadata changed). Checked only for pairs whose CNN cosine is
  about 1; the pixel hash is cached in ``images.pixel_hash``.
* ``near``: a verified edited copy (resized, recompressed, cropped, flipped,
  rotated, recoloured, bordered, captioned): :mod:`searcher.verify` scores the
  pair on the pixels and the score passes the model's calibrated threshold.
* ``similar``: CNN neighbours that are not verified copies (other shots of a
  scene, bursts). Suggestions only: every member is kept, nothing acts on them.

How: every distinct content is one *unit* with one vector. Candidate pairs are the
k nearest neighbours of every unit (FAISS, in batches: no all-pairs matrix; PCA plus
an inverted-file index, re-scored exactly, above :data:`IVF_MIN` vectors) with cosine
above a floor. A CNN sees a picture turned by 90 or 180 degrees as another picture
(cosine often below the floor), so with ``rotations=True`` every unit is also embedded
turned by 90 and 180 degrees (cached in ``rotated_vectors``) and the nearest units of
those turned vectors are candidates too. Pairs are verified (cached by content hash in
``pair_scores``) and grouped around representatives: units are ranked by how many
others they match (an original matches each of its edited copies; two copies, each
edited its own way, match each other less often), then by the keep rules; a unit that
matches no better-ranked representative is one, and every other unit joins the
representative it scores best against, so a member always matches its own
representative and A~B~C never pulls a far C in with A. Which file of a group is
kept is decided by the keep rules alone. A group's ``spread`` is
1 minus the lowest member score (0 = all identical).

Known limitation of the keep rules: they look at resolution, size and age, not at
content, so of two copies at one resolution the larger file is kept even when it is
the one with a caption or watermark drawn on it (use ``--prefer`` / ``--reference``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, update

from searcher import decisions, store
from searcher.decode import DecodeError, open_image
from searcher.dup_candidates import (  # noqa: F401  (re-exported: the public names stay importable from here)
    DEFAULT_CANDIDATE_COSINE,
    DEFAULT_K,
    INCOMING_TURNS,
    IVF_MIN,
    OVERSEARCH,
    REDUCED_DIM,
    ROTATION_K,
    ROTATION_TURNS,
    THUMB_MAX,
    _knn_pairs,
    _search_index,
    _unique_pairs,
    candidate_pairs,
    rotated_vectors,
    thumbnail_pairs,
)
from searcher.dup_grouping import centrality_order, group_around_representatives, group_units
from searcher.dup_keep import (  # noqa: F401
    COPY_NAME,
    DEFAULT_SIMILAR_COSINE,
    KEEP_REASONS,
    DuplicateReport,
    Group,
    KeepRules,
    Member,
    Thresholds,
    _Unit,
    looks_like_copy,
)
from searcher.files import absolute, content_hash, discover
from searcher.store import STATUS_OK, ImageRow, ModelRow
from searcher.verify import (
    THUMB_SIDE,
    VERIFY_VERSION,
    FeatureCache,
    Features,
    aligned_check,
    feature_cache_capacity,
    single_threaded_blas,
    verify_symmetric,
)

if TYPE_CHECKING:
    from searcher.library import Library, Progress

TIERS = ("exact", "pixels", "near", "similar")
PIXEL_COSINE = 0.995  # pairs at least this close get a pixel-hash comparison
FALLBACK_THRESHOLD = 0.95  # verified-score threshold when nothing was calibrated for a model


# --- thresholds --------------------------------------------------------------------------------


def shipped_defaults() -> dict[str, Any]:
    """The calibration shipped in ``searcher/data/duplicate_thresholds.json`` (per backbone)."""
    try:
        text = resources.files("searcher").joinpath("data/duplicate_thresholds.json").read_text()
    except (FileNotFoundError, OSError):
        return {}
    return json.loads(text).get("backbones", {})


def thresholds_for(model: ModelRow, override: float | None = None) -> Thresholds:
    """``override`` > the library's own calibration (``searcher calibrate``) > the shipped default."""
    shipped = shipped_defaults().get(model.backbone, {})
    cand = float(shipped.get("candidate_cosine", DEFAULT_CANDIDATE_COSINE))
    similar = float(shipped.get("similar_cosine", DEFAULT_SIMILAR_COSINE))
    if override is not None:
        return Thresholds(float(override), cand, similar, "command line")
    if model.duplicate_threshold is not None:
        return Thresholds(float(model.duplicate_threshold), cand, similar, "library calibration")
    if "threshold" in shipped:
        return Thresholds(float(shipped["threshold"]), cand, similar, "shipped calibration")
    return Thresholds(FALLBACK_THRESHOLD, cand, similar, "fallback")


# --- pixel hashes ----------------------------------------------------------------------------------


def pixel_hash(path: str) -> str | None:
    """BLAKE2b-128 of the decoded RGB pixels and their size (EXIF orientation applied); None if undecodable."""
    try:
        img = open_image(path).image
    except DecodeError:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{img.width}x{img.height}:".encode())
    digest.update(np.asarray(img, dtype=np.uint8).tobytes())
    return digest.hexdigest()


# --- the library-level entry point -----------------------------------------------------------------


def _members_of(rows: Iterable[ImageRow]) -> list[Member]:
    return [Member(r.id, r.path, r.content_hash or "", r.width, r.height, r.size, r.mtime_ns, r.format) for r in rows]


def load_units(lib: Library, model: ModelRow, roots: Sequence[str] | None) -> tuple[list[_Unit], np.ndarray]:
    """Distinct contents under ``roots`` (all of the library when None) that still exist, and one vector each."""
    with lib.sessions() as session:
        if roots:
            rows = list(store.rows_under(session, [Path(absolute(r)) for r in roots]))
        else:
            rows = list(session.execute(select(ImageRow)).scalars())
        rows = [r for r in rows if r.status == STATUS_OK and r.content_hash]
        vectors = store.vectors_for(session, model.id, [r.id for r in rows])
    by_hash: dict[str, list[ImageRow]] = {}
    for r in sorted(rows, key=lambda r: r.path):
        if r.id in vectors:
            by_hash.setdefault(r.content_hash, []).append(r)  # type: ignore[arg-type]
    units: list[_Unit] = []
    vecs: list[np.ndarray] = []
    for digest in sorted(by_hash):
        group = by_hash[digest]
        pix = next((r.pixel_hash for r in group if r.pixel_hash), None)
        units.append(_Unit(digest, _members_of(group), pix))
        vecs.append(vectors[group[0].id])
    matrix = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, model.dim), np.float32)
    return units, matrix


def _exists(m: Member) -> bool:
    try:
        st = os.stat(m.path)
    except OSError:
        return False
    return st.st_size == m.size


def find_duplicates(
    lib: Library,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    *,
    rules: KeepRules | None = None,
    threshold: float | None = None,
    k: int = DEFAULT_K,
    similar: bool = True,
    similar_cosine: float | None = None,
    rotations: bool = False,
    backbone: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> DuplicateReport:
    """Find exact, same-pixel, near-duplicate and similar groups among the library's images under ``roots``.

    ``rotations``: also look for copies turned by 90, 180 or 270 degrees (or flipped upside down),
    which a CNN sees as different pictures: each picture is embedded turned by 90 and 180 degrees
    (once: cached in the library) and those vectors' nearest pictures are verified too.
    """
    from searcher.library import Progress

    progress = progress or Progress()
    rules = rules or KeepRules()
    t0 = time.monotonic()
    model = lib.find_model(backbone)
    decisions.ensure_tables(lib.engine)
    th = thresholds_for(model, threshold)
    if similar_cosine is not None:
        th.similar_cosine = similar_cosine
    root_list = [os.fspath(r) for r in roots] if roots else None
    units, vectors = load_units(lib, model, root_list)
    # only files that are still there (apply may have moved some since the last index run)
    for u in units:
        u.rows = [m for m in u.rows if _exists(m)]
    keep_idx = [i for i, u in enumerate(units) if u.rows]
    units = [units[i] for i in keep_idx]
    vectors = vectors[keep_idx] if len(keep_idx) else vectors[:0]
    t_load = time.monotonic()

    probes = None
    if rotations and len(units) > 1:
        probes = rotated_vectors(lib, model, units, progress=progress)
    t_turn = time.monotonic()
    floor = min(th.candidate_cosine, th.similar_cosine)
    ci, cj, cs = candidate_pairs(vectors, k=k, min_cosine=floor, probes=probes, probe_cosine=th.candidate_cosine)
    plain = np.einsum("ij,ij->i", vectors[ci], vectors[cj]) if len(ci) else np.zeros(0, np.float32)
    # cos: the plain CNN cosine of each candidate pair; turned: pairs only a turned probe found (with its cosine)
    cos: dict[tuple[int, int], float] = {}
    turned: dict[tuple[int, int], float] = {}
    for a, b, s, p in zip(ci.tolist(), cj.tolist(), cs.tolist(), plain.tolist(), strict=True):
        if p >= floor:
            cos[(a, b)] = min(p, 1.0)
        else:
            turned[(a, b)] = s
    t_cand = time.monotonic()

    with lib.sessions() as session:
        refused = decisions.not_duplicate_pairs(session)

    def allowed(a: int, b: int) -> bool:
        return decisions.pair_key(units[a].content_hash, units[b].content_hash) not in refused

    # same pixels: hash the decoded pictures of near-identical pairs (cached in images.pixel_hash)
    need = sorted({u for (a, b), s in cos.items() if s >= PIXEL_COSINE for u in (a, b) if units[u].pixel_hash is None})
    if need:
        progress.begin("Hashing pixels", len(need))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for u, ph in zip(need, pool.map(lambda u: pixel_hash(units[u].rows[0].path), need), strict=True):
                units[u].pixel_hash = ph
                progress.advance()
        progress.end()
        with lib.sessions() as session, session.begin():
            for u in need:
                if units[u].pixel_hash:
                    session.execute(
                        update(ImageRow)
                        .where(ImageRow.content_hash == units[u].content_hash)
                        .values(pixel_hash=units[u].pixel_hash)
                    )
    # pixel units: contents with identical pixels (equality is transitive: union is safe)
    parent = list(range(len(units)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (a, b), s in cos.items():
        pa, pb = units[a].pixel_hash, units[b].pixel_hash
        if s >= PIXEL_COSINE and pa and pa == pb and allowed(a, b):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    pixel_sets: dict[int, list[int]] = {}
    for u in range(len(units)):
        pixel_sets.setdefault(find(u), []).append(u)

    def best_member(us: Iterable[int]) -> Member:
        return min((m for u in us for m in units[u].rows), key=rules.sort_key)

    # one "pixel unit" per set; its best file (keep rules) stands for it
    heads = sorted(pixel_sets)
    head_of = {u: h for h, us in pixel_sets.items() for u in us}
    head_best = {h: best_member(pixel_sets[h]) for h in heads}
    order = sorted(heads, key=lambda h: rules.sort_key(head_best[h]))
    head_unit = {h: next(u for u in pixel_sets[h] if any(m is head_best[h] for m in units[u].rows)) for h in heads}

    # candidate edges between pixel units (best cosine over their contents)
    hcos: dict[tuple[int, int], float] = {}
    for (a, b), s in cos.items():
        ha, hb = head_of[a], head_of[b]
        if ha == hb:
            continue
        key = (min(ha, hb), max(ha, hb))
        hcos[key] = max(hcos.get(key, -1.0), s)
    hturned: dict[tuple[int, int], float] = {}  # edges only a turned probe found (not "similar")
    for (a, b), s in turned.items():
        ha, hb = head_of[a], head_of[b]
        key = (min(ha, hb), max(ha, hb))
        if ha != hb and key not in hcos:
            hturned[key] = max(hturned.get(key, -1.0), s)
    nbrs: dict[int, set[int]] = {}  # all candidate edges (for "similar")
    near_nbrs: dict[int, set[int]] = {}  # edges close enough to verify
    for (a, b), s in hcos.items():
        nbrs.setdefault(a, set()).add(b)
        nbrs.setdefault(b, set()).add(a)
        if s >= th.candidate_cosine:
            near_nbrs.setdefault(a, set()).add(b)
            near_nbrs.setdefault(b, set()).add(a)
    for a, b in hturned:
        near_nbrs.setdefault(a, set()).add(b)
        near_nbrs.setdefault(b, set()).add(a)

    def head_allowed(a: int, b: int) -> bool:
        return all(allowed(x, y) for x in pixel_sets[a] for y in pixel_sets[b])

    cache = FeatureCache(capacity=feature_cache_capacity(len(heads)))

    def features(h: int) -> Features | None:
        u = units[head_unit[h]]
        return cache.get(u.content_hash, u.rows[0].path)

    # thumbnail neighbours: blurred copies, which the CNN puts far from their original (verified as they lie)
    hthumb: set[tuple[int, int]] = set()
    if 1 < len(heads) <= THUMB_MAX:
        thumbs = np.zeros((len(heads), THUMB_SIDE * THUMB_SIDE), np.float32)
        aspects = np.ones(len(heads), np.float64)
        progress.begin("Reading thumbnails", len(heads))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for row, f in enumerate(pool.map(features, heads)):
                if f is not None and f.thumb is not None:
                    thumbs[row] = f.thumb
                    aspects[row] = f.shape[1] / f.shape[0]
                progress.advance()
        progress.end()
        ti, tj, _ = thumbnail_pairs(thumbs, aspects)
        for a, b in zip(ti.tolist(), tj.tolist(), strict=True):
            key = (heads[a], heads[b])  # heads are sorted: a < b means heads[a] < heads[b]
            if hcos.get(key, -1.0) < th.candidate_cosine and key not in hturned:
                hthumb.add(key)
                near_nbrs.setdefault(key[0], set()).add(key[1])
                near_nbrs.setdefault(key[1], set()).add(key[0])
    t_thumb = time.monotonic()

    # verification (cached by content hash): representative-to-member pairs only, see group_around_representatives
    to_verify = sorted([key for key, s in hcos.items() if s >= th.candidate_cosine] + list(hturned) + list(hthumb))
    scores: dict[tuple[int, int], float | None] = {}
    verified_new: dict[tuple[str, str], float] = {}

    def pair_hashes(a: int, b: int) -> tuple[str, str]:
        return decisions.pair_key(units[head_unit[a]].content_hash, units[head_unit[b]].content_hash)

    with lib.sessions() as session:
        stored = decisions.cached_scores(session, {pair_hashes(a, b) for a, b in to_verify}, VERIFY_VERSION)
        any_stored = decisions.has_scores(session, VERIFY_VERSION)

    def compute(a: int, b: int) -> float | None:
        ua, ub = units[head_unit[a]], units[head_unit[b]]
        fa, fb = features(a), features(b)
        if fa is None or fb is None:
            return None
        # canonical order (by content hash) so the score does not depend on who asks
        first, second = (fa, fb) if ua.content_hash <= ub.content_hash else (fb, fa)
        key = (min(a, b), max(a, b))
        if key in hthumb and key not in hturned and float(vectors[a] @ vectors[b]) < th.candidate_cosine:
            # only the thumbnails say "alike" (the CNN does not): a blurred copy lines up as it lies, and
            # local features would only confirm, at length, that other pictures are other pictures
            aligned = aligned_check(first, second)
            return 0.0 if aligned is None else aligned.score
        # settled at the threshold: a pair that passes as it lies needs no local features (see verify_symmetric)
        return verify_symmetric(first, second, settle_at=th.verified).score

    with single_threaded_blas(), ThreadPoolExecutor(max_workers=workers) as pool:
        def score_pairs(pairs: list[tuple[int, int]]) -> list[float | None]:
            keys = [(min(a, b), max(a, b)) for a, b in pairs]
            fresh = {pair_hashes(*key) for key in keys if key not in scores} - stored.keys()
            if fresh and any_stored:  # pairs reached through members (no candidate edge): scored in an earlier run?
                with lib.sessions() as session:
                    stored.update(decisions.cached_scores(session, fresh, VERIFY_VERSION))
            todo = []
            for key in keys:
                if key in scores:
                    continue
                ph = pair_hashes(*key)
                if ph in stored:
                    scores[key] = stored[ph]
                else:
                    todo.append(key)
            for key, v in zip(todo, pool.map(lambda p: compute(*p), todo), strict=True):
                scores[key] = v
                if v is not None:
                    verified_new[pair_hashes(*key)] = v
            return [scores[key] for key in keys]

        def reachable(rep: int, u: int) -> bool:
            key = (min(rep, u), max(rep, u))
            if key in hturned or key in hthumb:
                return True
            return float(vectors[rep] @ vectors[u]) >= th.candidate_cosine

        search: list[tuple[Any, Any]] = []  # the neighbour index, built on first use

        def deeper(rep: int, depth: int) -> list[int]:
            """The heads of the ``depth`` units nearest to ``rep`` with a cosine worth verifying."""
            if not search:
                search.append(_search_index(vectors))
            index, project = search[0]
            q = vectors[rep : rep + 1]
            kk = min(len(vectors), depth * (1 if project is None else OVERSEARCH))
            _, ids = index.search(q if project is None else project(q), kk)
            ids = ids[0][ids[0] >= 0]
            cosines = vectors[ids] @ vectors[rep]  # exact, whatever the index
            best = np.argsort(-cosines, kind="stable")
            out: list[int] = []
            for i, c in zip(ids[best].tolist(), cosines[best].tolist(), strict=True):
                if c < th.candidate_cosine:
                    break
                if head_of[i] != rep and head_of[i] not in out:
                    out.append(head_of[i])
            return out

        def centre(group: list[int]) -> int:
            """The group's CNN medoid: the unit with the highest mean cosine to the others."""
            v = vectors[group]
            return group[int(np.argmax(v @ v.sum(axis=0)))]  # sum of cosines to all, without the g x g matrix

        progress.begin("Verifying", len(order))
        near = group_around_representatives(
            centrality_order(order, hcos, th.candidate_cosine), near_nbrs, score_pairs, th.verified,
            allowed=head_allowed, reachable=reachable, visited=progress.advance, deeper=deeper, centre=centre,
        )  # fmt: skip
        progress.end()
    t_verify = time.monotonic()
    if verified_new:
        with lib.sessions() as session, session.begin():
            decisions.store_scores(session, verified_new, VERIFY_VERSION)

    groups: list[Group] = []
    in_near: set[int] = set()
    for rep, members in near:
        in_near.add(rep)
        in_near.update(u for u, _ in members)
        groups.append(_build_group("near", rep, members, pixel_sets, units, rules, hcos))
    for h in heads:
        if h in in_near:
            continue
        files = sum(len(units[u].rows) for u in pixel_sets[h])
        if files < 2:
            continue
        tier = "pixels" if len(pixel_sets[h]) > 1 else "exact"
        groups.append(_build_group(tier, h, [], pixel_sets, units, rules, hcos))
    if similar:
        # suggestions: among what is not already grouped as a copy (plus each copy group's kept picture)
        leaders = [h for h in heads if h not in in_near] + [rep for rep, _ in near]
        leader_set = set(leaders)
        snbrs = {a: {b for b in bs if b in leader_set} for a, bs in nbrs.items() if a in leader_set}

        def sim_score(a: int, b: int) -> float | None:
            s = hcos.get((min(a, b), max(a, b)))
            if s is None:
                return None
            v = scores.get((min(a, b), max(a, b)))
            if v is not None and v >= th.verified:
                return None  # a verified copy is not a mere suggestion
            return s

        sim = group_units(
            len(units), [h for h in order if h in leader_set], sim_score, snbrs, th.similar_cosine,
            allowed=head_allowed, lazy_limit=0,
        )  # fmt: skip
        for rep, members in sim:
            groups.append(_build_group("similar", rep, members, pixel_sets, units, rules, hcos))
    groups = [g for g in groups if len(g.members) >= 2]
    tier_rank = {t: i for i, t in enumerate(TIERS)}
    groups.sort(key=lambda g: (tier_rank[g.tier], -len(g.members), g.members[0].path))
    t_end = time.monotonic()
    stats = {
        "units": len(units),
        "files": sum(len(u.rows) for u in units),
        "candidate_pairs": len(cos),
        "turned_candidate_pairs": len(hturned),
        "thumbnail_candidate_pairs": len(hthumb),
        "verified_pairs": len(verified_new),
        "verified_from_cache": len(stored),
        "seconds": {
            "load": round(t_load - t0, 3), "turned_embedding": round(t_turn - t_load, 3),
            "candidates": round(t_cand - t_turn, 3), "thumbnails": round(t_thumb - t_cand, 3),
            "verify": round(t_verify - t_thumb, 3), "group": round(t_end - t_verify, 3),
            "total": round(t_end - t0, 3),
        },
    }  # fmt: skip
    return DuplicateReport(groups, model.key, th, rules, stats)


def _build_group(
    tier: str,
    rep: int,
    members: list[tuple[int, float]],
    pixel_sets: dict[int, list[int]],
    units: list[_Unit],
    rules: KeepRules,
    hcos: dict[tuple[int, int], float],
) -> Group:
    out: list[Member] = []
    rep_files = [m for u in pixel_sets[rep] for m in units[u].rows]
    rep_best = min(rep_files, key=rules.sort_key)
    for u in pixel_sets[rep]:
        for m in units[u].rows:
            m2 = Member(**{**m.__dict__})
            m2.match = "exact" if m.content_hash == rep_best.content_hash else "pixels"
            m2.score, m2.cosine = 1.0, 1.0
            out.append(m2)
    for h, score in members:
        cosine = hcos.get((min(rep, h), max(rep, h)), 0.0)
        for u in pixel_sets[h]:
            for m in units[u].rows:
                m2 = Member(**{**m.__dict__})
                m2.match = "near" if tier == "near" else "similar"
                m2.score = float(score)
                m2.cosine = float(cosine)
                out.append(m2)
    out.sort(key=rules.sort_key)
    for i, m in enumerate(out):
        m.reference = rules.is_reference(m.path)
        m.keep = tier == "similar" or i == 0 or m.reference
    if tier == "similar":
        for m in out:
            m.reason = "suggestion only"
    else:
        for m in out:
            if m.keep:
                m.reason = rules.reason(m, [o for o in out if not o.keep])
    head, rest = out[0], out[1:]
    rest.sort(key=lambda m: (-m.score, m.path))
    ordered = [head, *rest]
    spread = 1.0 - min(m.score for m in ordered)
    return Group(tier, ordered, max(0.0, spread), rep_best.path)


# --- checking new files against the library ---------------------------------------------------------


@dataclass
class IncomingMatch:
    path: str
    tier: str
    score: float
    matches: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "tier": self.tier, "score": round(self.score, 4), "matches": self.matches}


@dataclass
class IncomingReport:
    checked: int
    duplicates: list[IncomingMatch]
    errors: list[tuple[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "duplicates": [d.as_dict() for d in self.duplicates],
            "errors": [{"path": p, "error": e} for p, e in self.errors],
        }


def check_incoming(
    lib: Library,
    paths: Sequence[str | os.PathLike[str]],
    *,
    threshold: float | None = None,
    k: int = 5,
    rotations: bool = True,
    backbone: str | None = None,
) -> IncomingReport:
    """Which of the files under ``paths`` (files or folders) already exist in the library, as exact,
    same-pixel or verified near-duplicate copies. The library is not changed.

    ``threshold`` overrides the model's verified-score threshold. ``rotations``: each probe is also
    searched turned by 90, 180 and 270 degrees (3 more embeddings per probe), so turned copies are found.
    """
    from searcher.decode import load_for_model

    model = lib.find_model(backbone)
    th = thresholds_for(model, threshold)
    files = [e.path for e in discover([absolute(p) for p in paths], exclude=[lib.root])]
    errors: list[tuple[str, str]] = []
    found: list[IncomingMatch] = []
    cache = FeatureCache(capacity=256)
    index = lib.vector_index(model)
    embedder = None
    for path in files:
        try:
            digest = content_hash(path)
        except OSError as exc:
            errors.append((path, exc.strerror or str(exc)))
            continue
        with lib.sessions() as session:
            same = [
                r.path
                for r in session.execute(
                    select(ImageRow).where(ImageRow.content_hash == digest, ImageRow.status == STATUS_OK)
                ).scalars()
                if r.path != path
            ]
        if same:
            found.append(IncomingMatch(path, "exact", 1.0, sorted(same)))
            continue
        if embedder is None:
            embedder = lib.embedder_for(model)
        try:
            pixels, _ = load_for_model(path, embedder.input_size)
        except DecodeError as exc:
            errors.append((path, str(exc)))
            continue
        # the probe as it is and turned by 90, 180 and 270 degrees (turned copies look unrelated to a CNN)
        turns = INCOMING_TURNS if rotations else ()
        vecs = embedder.embed(np.stack([pixels, *(np.rot90(pixels, t) for t in turns)]))
        scores, ids = index.search(vecs, k)
        closest: dict[int, float] = {}
        for row_ids, row_scores in zip(ids, scores, strict=True):
            for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=True):
                if i >= 0 and s >= th.candidate_cosine:
                    closest[i] = max(closest.get(i, -1.0), s)
        cand = sorted(closest.items(), key=lambda item: (-item[1], item[0]))
        rows = lib._rows_by_id([i for i, _ in cand])
        best: IncomingMatch | None = None
        mine_pixels: str | None = None
        for image_id, s in cand:
            row = rows.get(image_id)
            if row is None or row.path == path or not os.path.exists(row.path):
                continue
            if s >= PIXEL_COSINE:
                if mine_pixels is None:
                    mine_pixels = pixel_hash(path) or ""
                theirs = row.pixel_hash or pixel_hash(row.path)
                if mine_pixels and theirs == mine_pixels:
                    if best is None or best.tier != "pixels":
                        best = IncomingMatch(path, "pixels", 1.0, [])
                    best.matches.append(row.path)
                    continue
            if best is not None and best.tier == "pixels":
                continue
            fa = cache.get(path)
            fb = cache.get(row.content_hash or row.path, row.path)
            if fa is None or fb is None:
                continue
            v = verify_symmetric(fa, fb).score
            if v >= th.verified:
                if best is None:
                    best = IncomingMatch(path, "near", v, [])
                best.score = max(best.score, v)
                best.matches.append(row.path)
        if best is not None:
            best.matches.sort()
            found.append(best)
    return IncomingReport(len(files), found, errors)
