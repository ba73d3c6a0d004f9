"""Duplicate detection over an indexed library: candidates, verification, tiers, groups, keep rules.

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
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from sqlalchemy import select, update

from searcher import decisions, store
from searcher.decode import DecodeError, open_image
from searcher.files import absolute, content_hash, discover
from searcher.store import STATUS_OK, ImageRow, ModelRow
from searcher.verify import VERIFY_VERSION, FeatureCache, verify_symmetric

if TYPE_CHECKING:
    from searcher.library import Library, Progress

TIERS = ("exact", "pixels", "near", "similar")
DEFAULT_K = 10
PIXEL_COSINE = 0.995  # pairs at least this close get a pixel-hash comparison
DEFAULT_CANDIDATE_COSINE = 0.5  # below this the CNN says "different picture": not verified
DEFAULT_SIMILAR_COSINE = 0.85  # "similar" suggestions (not verified copies)
FALLBACK_THRESHOLD = 0.95  # verified-score threshold when nothing was calibrated for a model
IVF_MIN = 50_000  # exact search below this many vectors, inverted lists above
MAX_LAZY_COMPONENT = 64  # verify representative-vs-member pairs not among candidates in components this small
TRY_REPRESENTATIVES = 3  # in such components, the first representative is the best of this many candidates


# --- thresholds --------------------------------------------------------------------------------


def shipped_defaults() -> dict[str, Any]:
    """The calibration shipped in ``searcher/data/duplicate_thresholds.json`` (per backbone)."""
    try:
        text = resources.files("searcher").joinpath("data/duplicate_thresholds.json").read_text()
    except (FileNotFoundError, OSError):
        return {}
    return json.loads(text).get("backbones", {})


@dataclass
class Thresholds:
    """The numbers duplicate detection runs with, and where the verified one came from."""

    verified: float
    candidate_cosine: float = DEFAULT_CANDIDATE_COSINE
    similar_cosine: float = DEFAULT_SIMILAR_COSINE
    source: str = "fallback"


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


# --- keep rules --------------------------------------------------------------------------------


def _under(path: str, folders: Sequence[str]) -> int:
    """Index of the first folder that holds ``path``, or -1."""
    for i, folder in enumerate(folders):
        if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
            return i
    return -1


COPY_NAME = re.compile(
    r"(^copy of\b)|(\bcopy\b)|(_copy\d*$)|(\(\d+\)$)|((?<![\d-])[-_]\d$)", re.IGNORECASE
)  # "Copy of x", "x copy", "x (1)", "x-1", "x_copy", "x - Copy 2"


def looks_like_copy(path: str) -> bool:
    """Whether a file's name (without extension) reads like a copy someone made of another file."""
    stem = Path(path).stem.strip()
    return bool(COPY_NAME.search(stem))


KEEP_REASONS = (
    "in a reference folder",
    "in a preferred folder",
    "highest resolution",
    "largest file",
    "oldest",
    "name does not look like a copy",
    "shortest path",
    "first by path",
)


@dataclass
class KeepRules:
    """Which copy of a group is kept: in a ``reference`` folder (never touched), then in a
    ``prefer`` folder (earlier folders first), then highest resolution, largest file, oldest,
    then a name that does not look like a copy (``copy``, ``(1)``, ``-1``, ``Copy of``), then
    the shorter path."""

    prefer: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefer = [absolute(os.path.expanduser(p)) for p in self.prefer]
        self.reference = [absolute(os.path.expanduser(p)) for p in self.reference]

    def is_reference(self, path: str) -> bool:
        return _under(path, self.reference) >= 0

    def sort_key(self, m: Member) -> tuple[Any, ...]:
        """One entry per :data:`KEEP_REASONS` (lower wins)."""
        pref = _under(m.path, self.prefer)
        return (
            0 if self.is_reference(m.path) else 1,
            pref if pref >= 0 else len(self.prefer),
            -((m.width or 0) * (m.height or 0)),
            -m.size,
            m.mtime_ns,
            1 if looks_like_copy(m.path) else 0,
            len(m.path),
            m.path,
        )

    def reason(self, kept: Member, others: Sequence[Member]) -> str:
        """Why ``kept`` wins over ``others``: the first rule that tells it from the runner-up."""
        if self.is_reference(kept.path):
            return KEEP_REASONS[0]
        if not others:
            return "only file"
        mine = self.sort_key(kept)
        runner_up = min(self.sort_key(o) for o in others)
        for name, a, b in zip(KEEP_REASONS, mine, runner_up, strict=True):
            if a != b:
                return name
        return KEEP_REASONS[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"prefer": self.prefer, "reference": self.reference}


# --- results -----------------------------------------------------------------------------------


@dataclass
class Member:
    image_id: int
    path: str
    content_hash: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    format: str | None
    score: float = 1.0  # vs the representative: 1 for exact/pixels, verified score for near, cosine for similar
    cosine: float = 1.0
    match: str = "exact"  # how this member relates to the representative
    keep: bool = True
    reference: bool = False
    reason: str = ""  # why a kept member is kept (empty for members marked to move)

    @property
    def mtime(self) -> str:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC).isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "score": round(self.score, 4), "cosine": round(self.cosine, 4),
            "match": self.match, "keep": self.keep, "reference": self.reference, "reason": self.reason,
            "width": self.width, "height": self.height, "size": self.size, "format": self.format,
            "mtime": self.mtime, "mtime_ns": self.mtime_ns, "content_hash": self.content_hash,
        }  # fmt: skip


@dataclass
class Group:
    tier: str
    members: list[Member]  # the kept copy first
    spread: float
    representative: str = ""  # the file every member was compared with (scores are against it)

    @property
    def kept(self) -> Member:
        return self.members[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "spread": round(self.spread, 4), "representative": self.representative,
            "members": [m.as_dict() for m in self.members],
        }  # fmt: skip


@dataclass
class DuplicateReport:
    groups: list[Group]
    model: str
    thresholds: Thresholds
    rules: KeepRules
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threshold": self.thresholds.verified,
            "threshold_source": self.thresholds.source,
            "keep_rules": self.rules.as_dict(),
            "stats": self.stats,
            "groups": [g.as_dict() for g in self.groups],
        }


# --- candidate generation ------------------------------------------------------------------------


REDUCED_DIM = 128  # candidate search on large libraries runs on PCA-reduced vectors, then re-scores exactly
OVERSEARCH = 3  # approximate search: fetch this many times k neighbours, keep the k best by exact cosine
ROTATION_TURNS = (1, 2)  # quarter turns probed: 90 and 180 degrees (90 from the other side covers 270)
ROTATION_K = 5  # nearest pictures of each turned probe that become candidates
INCOMING_TURNS = (1, 2, 3)  # query --duplicates-only: the library is not turned, so every turn of the probe


def _search_index(
    vectors: np.ndarray, nprobe: int = 12
) -> tuple[faiss.Index, Callable[[np.ndarray], np.ndarray] | None]:
    """An inner-product index over ``vectors`` and how to turn query vectors into its space.

    Small sets: exact search on the vectors (the projection is None: queries as they are).
    Large sets (>= :data:`IVF_MIN`): PCA to :data:`REDUCED_DIM` dimensions (trained on a
    fixed sample), re-normalised, in an inverted-file index; candidates found this way are
    re-scored with the full vectors by the caller.
    """
    n, dim = vectors.shape
    if n < IVF_MIN:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, None
    rng = np.random.default_rng(0)
    nlist = int(2 * np.sqrt(n))
    sample = vectors[np.sort(rng.choice(n, size=min(n, nlist * 40), replace=False))]
    red = min(REDUCED_DIM, dim)
    pca = faiss.PCAMatrix(dim, red)
    pca.train(sample)

    def project(x: np.ndarray) -> np.ndarray:
        out = pca.apply(np.ascontiguousarray(x, dtype=np.float32))
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-12
        return out

    quantizer = faiss.IndexFlatIP(red)
    index = faiss.IndexIVFFlat(quantizer, red, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.train(project(sample))
    for start in range(0, n, 65536):
        index.add(project(vectors[start : start + 65536]))
    index.nprobe = nprobe
    return index, project


def _knn_pairs(
    index: faiss.Index,
    project: Callable[[np.ndarray], np.ndarray] | None,
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    min_cosine: float,
    batch: int,
    skip_self: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query row, vector row, exact cosine) of each query's ``k`` nearest vectors with cosine >= ``min_cosine``.

    With a projection (the approximate index), :data:`OVERSEARCH` times as many neighbours are
    fetched in the reduced space and the ``k`` best by exact cosine are kept: the reduced space
    ranks neighbours differently, and re-ranking a few more recovers most of the exact ones.
    """
    n = len(vectors)
    want = k + 1 if skip_self else k
    kk = min(n, want if project is None else want * OVERSEARCH)
    rows, cols, sims = [], [], []
    if project is not None:
        batch = min(batch, 256)  # batch x kk full vectors are gathered for re-ranking
    for start in range(0, len(queries), batch):
        part = queries[start : start + batch]
        scores, ids = index.search(part if project is None else project(part), kk)
        q = np.repeat(np.arange(start, start + len(ids)), kk).reshape(ids.shape)
        ok = ids >= 0
        if skip_self:
            ok &= ids != q
        if project is not None:  # exact cosines on the full vectors, then the best k of each query
            safe = np.where(ok, ids, 0)
            scores = np.einsum("qd,qkd->qk", part, vectors[safe])
            scores = np.where(ok, scores, -np.inf)
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            ids = np.take_along_axis(ids, best, axis=1)
            scores = np.take_along_axis(scores, best, axis=1)
            q = q[:, :k]
            ok = np.isfinite(scores)
        c, s, q = ids.ravel(), scores.ravel(), q.ravel()
        keep = ok.ravel() & (s >= min_cosine)
        rows.append(q[keep])
        cols.append(c[keep])
        sims.append(s[keep])
    if not rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims).astype(np.float32)


def _unique_pairs(i: np.ndarray, j: np.ndarray, s: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unordered pairs (lo < hi), each once with its highest score, sorted by (lo, hi); self-pairs dropped."""
    keep = i != j
    i, j, s = i[keep], j[keep], s[keep]
    lo, hi = np.minimum(i, j).astype(np.int64), np.maximum(i, j).astype(np.int64)
    key = lo * n + hi
    order = np.lexsort((-s, key))
    key, lo, hi, s = key[order], lo[order], hi[order], s[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return lo[first], hi[first], np.minimum(s[first], 1.0).astype(np.float32)


def candidate_pairs(
    vectors: np.ndarray,
    k: int = DEFAULT_K,
    min_cosine: float = DEFAULT_CANDIDATE_COSINE,
    batch: int = 1024,
    probes: np.ndarray | None = None,
    probe_k: int = ROTATION_K,
    probe_cosine: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of rows of ``vectors`` among each other's ``k`` nearest neighbours with cosine >= ``min_cosine``.

    Returns ``(i, j, cosine)`` sorted by (i, j), cosines from the full vectors; memory is O(n k), never O(n^2).
    ``probes`` (optional, ``(n, p, dim)``): more query vectors per row (the picture turned, say); their
    ``probe_k`` nearest rows with cosine >= ``probe_cosine`` (default ``min_cosine``) are candidates of
    that row too, under the probe's cosine. The index is built once for both.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    index, project = _search_index(vectors)
    i, j, s = _knn_pairs(index, project, vectors, vectors, k, min_cosine, batch, skip_self=True)
    if probes is not None and len(probes):
        p = probes.shape[1]
        flat = np.ascontiguousarray(probes.reshape(n * p, -1), dtype=np.float32)
        floor = min_cosine if probe_cosine is None else probe_cosine
        pi, pj, ps = _knn_pairs(index, project, flat, vectors, probe_k, floor, batch, skip_self=False)
        i, j, s = np.concatenate([i, pi // p]), np.concatenate([j, pj]), np.concatenate([s, ps])
    return _unique_pairs(i, j, s, n)


# --- turned probes (``--rotations``) -----------------------------------------------------------------


def rotated_vectors(
    lib: Library,
    model: ModelRow,
    units: Sequence[_Unit],
    *,
    turns: Sequence[int] = ROTATION_TURNS,
    batch: int = 32,
    progress: Progress | None = None,
) -> np.ndarray:
    """``(len(units), len(turns), dim)`` vectors of each unit's picture turned by ``turns`` quarter turns.

    The model's input (the picture squashed to its square size) is turned, which is the same as
    turning the picture first. Cached by content hash in ``rotated_vectors``: embedded once.
    An undecodable picture gets zero vectors (they match nothing).
    """
    from searcher.decode import load_for_model
    from searcher.library import Progress

    progress = progress or Progress()
    out = np.zeros((len(units), len(turns), model.dim), np.float32)
    with lib.sessions() as session:
        cached = decisions.cached_rotations(session, model.key, [u.content_hash for u in units], turns)
    missing = []
    for ui, u in enumerate(units):
        for ti, t in enumerate(turns):
            blob = cached.get((u.content_hash, t))
            if blob is None:
                missing.append(ui)
                break
            out[ui, ti] = np.frombuffer(blob, np.float32)
    if not missing:
        return out
    embedder = lib.embedder_for(model)
    size = embedder.input_size
    progress.begin("Embedding turned pictures", len(missing))

    def load(ui: int) -> np.ndarray | None:
        try:
            return load_for_model(units[ui].rows[0].path, size)[0]
        except (DecodeError, OSError):
            return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(missing), batch):
            part = missing[start : start + batch]
            arrays = list(pool.map(load, part))
            ok = [ui for ui, a in zip(part, arrays, strict=True) if a is not None]
            stack = [np.rot90(a, t) for a in arrays if a is not None for t in turns]
            new: dict[tuple[str, int], bytes] = {}
            if stack:
                vecs = embedder.embed(np.stack(stack)).reshape(len(ok), len(turns), -1)
                for ui, v in zip(ok, vecs, strict=True):
                    out[ui] = v
                    for t, vt in zip(turns, v, strict=True):
                        new[(units[ui].content_hash, t)] = np.ascontiguousarray(vt, np.float32).tobytes()
            with lib.sessions() as session, session.begin():
                decisions.store_rotations(session, model.key, new)
            progress.advance(len(part))
    progress.end()
    return out


# --- the grouping algorithm (pure: no files, no database) -------------------------------------------


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


@dataclass
class _Unit:
    """One distinct content (one or more files with the same bytes)."""

    content_hash: str
    rows: list[Member]
    pixel_hash: str | None = None


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

    # verification, cached by content hash
    cache = FeatureCache()
    scores: dict[tuple[int, int], float | None] = {}
    verified_new: dict[tuple[str, str], float] = {}
    to_verify = sorted([key for key, s in hcos.items() if s >= th.candidate_cosine] + list(hturned))
    with lib.sessions() as session:
        stored = decisions.cached_scores(
            session,
            {
                decisions.pair_key(units[head_unit[a]].content_hash, units[head_unit[b]].content_hash)
                for a, b in to_verify
            },
            VERIFY_VERSION,
        )

    def pair_hashes(a: int, b: int) -> tuple[str, str]:
        return decisions.pair_key(units[head_unit[a]].content_hash, units[head_unit[b]].content_hash)

    def compute(a: int, b: int) -> float | None:
        ua, ub = units[head_unit[a]], units[head_unit[b]]
        # canonical order (by content hash) so the score does not depend on who asks
        if ua.content_hash > ub.content_hash:
            ua, ub = ub, ua
        fa = cache.get(ua.content_hash, ua.rows[0].path)
        fb = cache.get(ub.content_hash, ub.rows[0].path)
        if fa is None or fb is None:
            return None
        return verify_symmetric(fa, fb).score

    def score_of(a: int, b: int) -> float | None:
        key = (min(a, b), max(a, b))
        if key not in scores:
            ph = pair_hashes(*key)
            if ph in stored:
                scores[key] = stored[ph]
            else:
                s = compute(*key)
                scores[key] = s
                if s is not None:
                    verified_new[ph] = s
        return scores[key]

    pending = [key for key in to_verify if pair_hashes(*key) not in stored]
    if pending:
        progress.begin("Verifying", len(pending))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for key, s in zip(pending, pool.map(lambda p: compute(*p), pending), strict=True):
                scores[key] = s
                if s is not None:
                    verified_new[pair_hashes(*key)] = s
                progress.advance()
        progress.end()
    t_verify = time.monotonic()

    hub_order = representative_order(order, to_verify, score_of, head_allowed, th.verified)
    near = group_units(
        len(units), hub_order, score_of, near_nbrs, th.verified, allowed=head_allowed,
        lazy_limit=MAX_LAZY_COMPONENT, try_first=TRY_REPRESENTATIVES,
    )  # fmt: skip
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
        "verified_pairs": len(verified_new),
        "verified_from_cache": len(stored),
        "seconds": {
            "load": round(t_load - t0, 3), "turned_embedding": round(t_turn - t_load, 3),
            "candidates": round(t_cand - t_turn, 3),
            "verify": round(t_verify - t_cand, 3), "group": round(t_end - t_verify, 3),
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
