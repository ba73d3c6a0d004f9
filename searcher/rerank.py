"""Re-ranking and descriptor post-processing on top of FAISS.

Every technique here works on L2-normalised vectors and a ``search(queries, k) -> (scores, ids)``
function (a FAISS index, :class:`searcher.vector_index.VectorIndex`, or a plain matrix), so the
same code serves :meth:`searcher.Library.query` and :mod:`searcher.evaluate`:

- **transform-invariant search** (:func:`invariant_search`): the probe is embedded in several
  orientations (90-degree rotations, flips); each database image scores the best of them. Exact
  (merging the per-variant top-k lists gives the top-k of the maximum), costs nothing at index
  time; at query time one forward pass and one search per variant.
- **alpha query expansion** (:func:`alpha_qe`, Radenovic et al. 2018): a second search with the
  query plus its top-``k`` results weighted by ``similarity ** alpha``.
- **database-side augmentation** (:func:`dba`): every database vector becomes the weighted mean of
  itself and its top-``k`` neighbours; the result is a derived index (same ids).
- **PCA-whitening** (:class:`Whitening`): ``faiss.PCAMatrix`` with ``eigen_power=-0.5`` learned on
  the library's own vectors, applied to database and queries, then re-normalised.
- **power normalisation** (:func:`power_normalise`): signed ``x ** p`` then L2 (``p = 0.5``: the
  square root), which damps the few dominant channels; with it, DBA and QE run inside the first
  ``shortlist`` results (:func:`retrieve`), since the FAISS index holds the plain vectors.

Two presets (:data:`PRESETS`): ``instance`` (the default: the same scene, object or photo, edited
or turned) and ``category`` (the same kind of thing: a flower species, a product type).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from searcher.frames import Original
    from searcher.verify import Evidence, FeatureCache

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

# The eight symmetries of the square, as PIL transposes (None = identity).
DIHEDRAL: dict[str, Image.Transpose | None] = {
    "identity": None,
    "rot90": Image.Transpose.ROTATE_90,
    "rot180": Image.Transpose.ROTATE_180,
    "rot270": Image.Transpose.ROTATE_270,
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT,
    "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "transpose": Image.Transpose.TRANSPOSE,
    "transverse": Image.Transpose.TRANSVERSE,
}
ROTATIONS: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270")
ROTATIONS_AND_FLIPS: tuple[str, ...] = tuple(DIHEDRAL)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def power_normalise(x: np.ndarray, power: float) -> np.ndarray:
    """Signed power normalisation: ``sign(x) * |x| ** power``, L2-normalised (``power`` 1 = as is)."""
    x = np.asarray(x, dtype=np.float32)
    if power == 1.0:
        return l2_normalise(x)
    return l2_normalise(np.sign(x) * np.abs(x) ** power)


def transformed(image: Image.Image, kinds: Sequence[str]) -> list[Image.Image]:
    """``image`` under each of ``kinds`` (names from :data:`DIHEDRAL`)."""
    out = []
    for kind in kinds:
        try:
            op = DIHEDRAL[kind]
        except KeyError:
            raise ValueError(f"unknown transform {kind!r}; choose from {', '.join(DIHEDRAL)}") from None
        out.append(image if op is None else image.transpose(op))
    return out


def array_variants(pixels: np.ndarray, kinds: Sequence[str]) -> list[np.ndarray]:
    """A (H, W, 3) array under each of ``kinds``: the same pixels as the PIL transposes of
    :data:`DIHEDRAL` (for the square model inputs, transforming the squashed image equals squashing
    the transformed one, so no second decode is needed)."""
    out = []
    for kind in kinds:
        if kind not in _ARRAY_OPS:
            raise ValueError(f"unknown transform {kind!r}; choose from {', '.join(DIHEDRAL)}")
        out.append(np.ascontiguousarray(_ARRAY_OPS[kind](pixels)))
    return out


_ARRAY_OPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "transpose": lambda a: a.transpose(1, 0, 2),
    "transverse": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
}


def probe_views(
    pixels: np.ndarray, kinds: Sequence[str], trim: bool = True, original: Original | None = None
) -> list[np.ndarray]:
    """The model inputs to embed for one probe: ``kinds`` of it, and of its inside when it has a
    frame (:func:`searcher.frames.inner_picture`, cut from ``original`` when given: every kind inside
    a solid frame, the first inside a screenshot)."""
    from searcher.frames import inner_picture  # OpenCV, imported only when a probe is embedded

    views = array_variants(pixels, kinds)
    inner, framed = inner_picture(pixels, original) if trim else (None, False)
    if inner is not None:
        views += array_variants(inner, kinds if framed else kinds[:1])
    return views


def invariance_kinds(invariant: bool | str | Sequence[str]) -> tuple[str, ...]:
    """Normalise an ``invariant`` option: False -> identity only; True / "rotations" -> the four
    rotations; "flips" or "all" -> rotations and flips; or an explicit list of transform names."""
    if invariant is False or invariant is None or invariant == "none":
        return ("identity",)
    if invariant is True or invariant == "rotations":
        return ROTATIONS
    if invariant in ("all", "flips", "rotations+flips"):
        return ROTATIONS_AND_FLIPS
    if isinstance(invariant, str):
        invariant = [s.strip() for s in invariant.split(",") if s.strip()]
    kinds = tuple(invariant)
    for k in kinds:
        if k not in DIHEDRAL:
            raise ValueError(f"unknown transform {k!r}; choose from {', '.join(DIHEDRAL)}")
    return kinds if "identity" in kinds else ("identity", *kinds)


def matrix_search(database: np.ndarray, ids: np.ndarray | None = None) -> SearchFn:
    """A ``search`` function over an in-memory matrix of unit vectors (exact inner product)."""
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    id_map = np.arange(len(database), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, min(k, index.ntotal))
        scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)

    return search


@dataclass
class Ranked:
    """One probe's results, best first: ``variant[i]`` = which probe variant gave ``scores[i]``."""

    scores: np.ndarray
    ids: np.ndarray
    variant: np.ndarray


def merge_max(scores: np.ndarray, ids: np.ndarray, k: int, exclude: Sequence[int] = ()) -> Ranked:
    """Merge the top-k lists of several probe variants ((v, k') arrays) by the best score per id."""
    scores = np.atleast_2d(scores)
    ids = np.atleast_2d(ids)
    variant = np.repeat(np.arange(scores.shape[0]), scores.shape[1])
    s, i = scores.ravel(), ids.ravel()
    keep = i >= 0
    if len(exclude):
        keep &= ~np.isin(i, np.asarray(list(exclude), np.int64))
    s, i, variant = s[keep], i[keep], variant[keep]
    order = np.lexsort((i, -s))  # best score first, ties by id
    s, i, variant = s[order], i[order], variant[order]
    _, first = np.unique(i, return_index=True)  # first occurrence = best score of that id
    first = np.sort(first)[:k]
    return Ranked(s[first].astype(np.float32), i[first].astype(np.int64), variant[first].astype(np.int64))


def invariant_search(
    search: SearchFn, variants: np.ndarray, k: int, exclude: Sequence[int] = (), margin: float = 0.0
) -> Ranked:
    """Top-``k`` database ids by the best score over the probe's ``variants`` ((v, d) unit vectors;
    row 0 is the probe as it is). Every other variant's score counts ``margin`` less: most photos are
    upright, so a rotated view only wins when it matches clearly better (still exact: a constant
    offset per variant does not change that variant's own top-k)."""
    variants = np.atleast_2d(variants)
    scores, ids = search(variants, k + len(exclude))
    if margin and len(scores) > 1:
        scores = scores.copy()
        scores[1:] -= margin
    return merge_max(scores, ids, k, exclude)


def expansion_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    return np.maximum(np.asarray(scores, np.float32), 0.0) ** alpha


@dataclass(frozen=True)
class RerankSettings:
    """Query expansion and database-side augmentation settings (0 neighbours = off).

    ``shortlist``: how many first-pass results are re-scored with DBA vectors (and searched again
    after query expansion); results beyond it keep their plain order. ``power`` other than 1:
    probe and shortlist are power-normalised (:func:`power_normalise`) and DBA and QE stay within
    the shortlist.
    """

    qe_k: int = 0
    qe_alpha: float = 3.0
    dba_k: int = 0
    dba_alpha: float = 3.0
    shortlist: int = 100
    margin: float = 0.0  # handicap of the probe's transformed views (see :func:`invariant_search`)
    dba_local: bool = False  # DBA neighbours taken among the shortlist only (no search of the database)
    power: float = 1.0

    @property
    def active(self) -> bool:
        return bool(self.qe_k or self.dba_k or self.power != 1.0)


@dataclass(frozen=True)
class Preset:
    """What :meth:`searcher.Library.query` and ``searcher eval`` use unless told otherwise.

    ``augment``/``expand`` switch DBA/alpha-QE on by default (either can be asked for or turned off
    per query; ``dba_k``/``qe_k`` say with how many neighbours).
    """

    name: str
    description: str
    invariant: str = "rotations"  # probe views of a new photo: rotations, all, or none
    trim: bool = True  # invariant probes with a solid frame are also searched without it
    margin: float = 0.05  # a rotated / unframed view must beat the upright one by this much
    dba_local: bool = True  # DBA among the shortlist: no O(shortlist x n) neighbour search per query
    augment: bool = True
    dba_k: int = 2
    dba_alpha: float = 3.0
    expand: bool = False
    qe_k: int = 2
    qe_alpha: float = 3.0
    shortlist: int = 100
    power: float = 1.0
    # pixel verification of the first results by default (``query(verify=None)``): the first
    # ``verify_top`` are verified when the first two cosines differ by less than ``verify_gap``
    verify_top: int = 0
    verify_gap: float = float("inf")
    # when verification ties none of the first ``verify_top`` (nor the thumbnail neighbours) to the
    # probe, the next ``verify_deeper`` results are verified too (:func:`searcher.querying.verified_order`)
    verify_deeper: int = 0
    # regional probes (:mod:`searcher.regions`): a new probe's regions (windows of its feature map,
    # from the same forward pass) are searched against the global vectors too, each image keeping
    # max(global, regional - regional_margin); ``None``: off
    regional_margin: float | None = None


SPATIAL_INLIERS = 20  # homography inliers (verify.geometric_inliers) that count as the same thing seen again


def verified_head(
    cosines: Sequence[float],
    verified: Sequence[float],
    inliers: Sequence[int] | None = None,
    copy_at: float = 0.0,
    min_inliers: int = SPATIAL_INLIERS,
    turned: Sequence[bool] | None = None,
) -> list[int]:
    """Positions of the verified head in their new order: copies first (a verified score of at
    least ``copy_at``: the duplicates threshold), those lying as the probe does before those
    ``turned`` a quarter or mirrored (Holidays holds a photo twice, once turned: the probe's own
    orientation is the closer copy), best first; then what a homography ties to the probe (at least
    ``min_inliers`` inliers: a photo of a print, another shot of the same facade), most inliers
    first; then the rest by verified score. Ties (e.g. every result 0: nothing is a copy) keep the
    CNN order. With only ``verified``: best verified score first."""
    del cosines  # the CNN order is the positions' order
    counts = list(inliers) if inliers is not None else [0] * len(verified)
    turns = list(turned) if turned is not None else [False] * len(verified)

    def key(j: int) -> tuple[bool, bool, float, int, float, int]:
        copy = verified[j] if verified[j] >= copy_at else 0.0
        spatial = counts[j] if counts[j] >= min_inliers else 0
        return (copy <= 0, copy > 0 and turns[j], -copy, -spatial, -verified[j], j)

    return sorted(range(len(verified)), key=key)


def verify_and_order(
    probe: str, paths: Sequence[str], cache: FeatureCache, copy_at: float, deeper: Sequence[str] = ()
) -> tuple[list[int], list[Evidence]]:
    """Verify ``paths`` (the first results, in CNN order) against ``probe`` and order them as the
    default query does (:func:`verified_head`): the new order of their positions, and each one's
    (verified score, homography inliers: :func:`searcher.verify.verified_evidence`; a probe with a
    frame, such as a screenshot, has the picture inside it verified too), then a burst twin of the first
    result that the probe is a copy of put first (:func:`searcher.twins.settle_twins`). ``deeper``: the
    next results, verified too (and then among the positions) only when none of ``paths`` is tied to the
    probe (:func:`is_tied`); ``len(evidence)`` says whether they were."""
    from searcher.twins import settle_twins
    from searcher.verify import verified_evidence

    paths = list(paths)
    evidence = verified_evidence(probe, paths, cache, copy_at, SPATIAL_INLIERS, inside=True)
    if deeper and not any(is_tied(e, copy_at) for e in evidence):
        paths += deeper
        evidence += verified_evidence(probe, deeper, cache, copy_at, SPATIAL_INLIERS, inside=True)
    order = verified_head(
        [], [e.score for e in evidence], [e.inliers for e in evidence], copy_at, turned=[e.turned for e in evidence]
    )
    tied = [is_tied(e, copy_at) for e in evidence]
    return settle_twins(probe, paths, order, tied, cache, [e.turned for e in evidence]), evidence


def is_tied(evidence: Evidence, copy_at: float) -> bool:
    """Whether verification ties a result to the probe: a copy, or what one homography explains."""
    return evidence.score >= copy_at or evidence.inliers >= SPATIAL_INLIERS


def needs_verification(cosines: Sequence[float], top: int, gap: float) -> bool:
    """Whether a result list gets its first ``top`` verified: when the two best cosine scores among
    them are closer than ``gap`` (a copy and another shot of the scene compete), always with ``gap=inf``."""
    if top <= 0 or not len(cosines):
        return False
    best = sorted((float(c) for c in cosines[:top]), reverse=True)
    return len(best) < 2 or best[0] - best[1] < gap


# ``instance`` (the default): chosen on Oxford Flowers-17 and a near-duplicate benchmark of
# sample-photos/imagededup, kept on only where they also helped on held-out INRIA Holidays (README,
# "Retrieval quality"): rotation-invariant probes and DBA among the first 100 results; alpha-QE
# (k=2) is available but off (it helps categories, not instances). Exact DBA needs a search of the
# whole database for each shortlisted result: 2.6 s per query at 50,000 flat vectors on the 2-core
# test machine, against 0.07 s for the search itself. Regional probes (margin -0.02) and the
# verification rule were chosen on Flowers-17 with the 'tune' parameters of the widened edits
# (scripts/regions_eval.py, scripts/spatial_eval.py) and reported on holidays-dev with the 'report'
# parameters (README, "Retrieval quality"): the first 10 are verified for every query (copies first,
# then what a homography ties to the probe: verified_head); the rule was "when the two best cosines
# are within 0.05" until the homography order made verifying every query the best choice there.
#
# ``category``: chosen on one half of Flowers-17 (40 photos of each species), confirmed on the other
# half (P@10 0.737 -> 0.812 there; scripts/tune_category.py): square-rooted vectors, DBA with 5
# neighbours and alpha-QE with 5, all within the first 500 results. It costs instance retrieval
# dearly (Holidays mAP 0.86 -> 0.78), so it is a choice, never the default.
PRESETS: dict[str, Preset] = {
    "instance": Preset(
        "instance",
        "the same scene, object or photo (edited, re-framed or turned copies)",
        verify_top=10,
        verify_deeper=20,
        regional_margin=-0.02,
    ),
    "category": Preset(
        "category",
        "the same kind of thing (a flower species, a product type)",
        invariant="none",
        trim=False,
        margin=0.0,
        dba_k=5,
        expand=True,
        qe_k=5,
        shortlist=500,
        power=0.5,
    ),
}
DEFAULTS = PRESETS["instance"]


def preset(name: str | None) -> Preset:
    """The :data:`PRESETS` entry called ``name`` (``None`` = the default, ``instance``)."""
    if name is None:
        return DEFAULTS
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def settings(expand: bool | None = None, augment: bool | None = None, preset_name: str | None = None) -> RerankSettings:
    """:class:`RerankSettings` of a preset (default ``instance``), with DBA and QE switched on or off
    (``None`` = as the preset says)."""
    p = preset(preset_name)
    expand = p.expand if expand is None else expand
    augment = p.augment if augment is None else augment
    return RerankSettings(
        qe_k=p.qe_k if expand else 0, qe_alpha=p.qe_alpha, dba_k=p.dba_k if augment else 0,
        dba_alpha=p.dba_alpha, shortlist=p.shortlist, margin=p.margin, dba_local=p.dba_local, power=p.power,
    )  # fmt: skip


class NeighbourCache:
    """Top neighbours of database vectors (for DBA), computed on demand and kept.

    Valid for one state of the database: drop it when vectors are added or removed. Holds at most
    ``max_items`` vectors (``4 * dim`` bytes each, plus a neighbour list), then starts afresh.
    """

    def __init__(
        self,
        search: SearchFn,
        reconstruct: Callable[[np.ndarray], np.ndarray],
        depth: int,
        max_items: int = 5000,
    ) -> None:
        self.search, self.reconstruct, self.depth, self.max_items = search, reconstruct, depth, max_items
        self._lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._vectors: dict[int, np.ndarray] = {}

    def limit(self) -> None:
        """Start afresh when more than ``max_items`` vectors are held (called between probes)."""
        if len(self._vectors) > self.max_items:
            self._vectors.clear()
            self._lists.clear()

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        missing = [int(i) for i in ids if int(i) not in self._vectors]
        if missing:
            for i, v in zip(missing, self.reconstruct(np.asarray(missing, np.int64)), strict=True):
                self._vectors[i] = np.asarray(v, np.float32)
        return np.stack([self._vectors[int(i)] for i in ids]) if len(ids) else np.zeros((0, 0), np.float32)

    def neighbours(self, ids: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        missing = [int(i) for i in ids if int(i) not in self._lists]
        if missing:
            scores, found = self.search(self.vectors(np.asarray(missing, np.int64)), self.depth)
            for i, s, f in zip(missing, scores, found, strict=True):
                self._lists[i] = (s, f)
        return [self._lists[int(i)] for i in ids]

    def dba_vectors(self, ids: np.ndarray, k: int, alpha: float, exclude: Sequence[int] = ()) -> np.ndarray:
        """DBA vectors of ``ids``: ``x + sum_j sim_j**alpha * x_j`` over each one's top ``k``
        neighbours (itself and ``exclude`` left out), re-normalised (exactly what :func:`dba` gives
        for those rows when ``exclude`` is empty)."""
        base = self.vectors(ids)
        if k <= 0 or len(ids) == 0:
            return base
        skip = {int(e) for e in exclude}
        out = base.copy()
        for row, (i, (scores, found)) in enumerate(zip(ids, self.neighbours(ids), strict=True)):
            keep = [(s, f) for s, f in zip(scores, found, strict=True) if f >= 0 and f != i and int(f) not in skip][:k]
            if keep:
                nb = self.vectors(np.asarray([f for _, f in keep], np.int64))
                out[row] += (expansion_weights(np.asarray([s for s, _ in keep]), alpha)[:, None] * nb).sum(0)
        return l2_normalise(out)


def local_dba(vectors: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """DBA within a set of vectors (a probe's shortlist): each row plus its ``k`` most similar other
    rows, weighted by ``similarity ** alpha``, re-normalised. The neighbours of a good candidate are
    mostly among the probe's other results, so this needs no search of the database: O(m^2 d) for a
    shortlist of m, against O(m n d) for exact DBA (:meth:`NeighbourCache.dba_vectors`)."""
    vectors = np.asarray(vectors, np.float32)
    if k <= 0 or len(vectors) < 2:
        return vectors
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    k = min(k, len(vectors) - 1)
    nb = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    w = expansion_weights(np.take_along_axis(sims, nb, 1), alpha)
    return l2_normalise(vectors + np.einsum("mk,mkd->md", w, vectors[nb]))


def _rescore(probes: np.ndarray, ranked: Ranked, vectors: np.ndarray, k: int, margin: float = 0.0) -> Ranked:
    """Re-score ``ranked`` with new database vectors (best probe variant per item), best first."""
    scores = probes @ vectors.T  # (v, n)
    scores[1:] -= margin
    best = scores.argmax(0)
    s = scores[best, np.arange(scores.shape[1])]
    order = np.lexsort((ranked.ids, -s))[:k]
    return Ranked(s[order].astype(np.float32), ranked.ids[order], best[order].astype(np.int64))


def _append_tail(head: Ranked, tail: Ranked, k: int) -> Ranked:
    """``head`` followed by the items of ``tail`` not in it (their plain order), up to ``k``."""
    if len(head.ids) >= k or len(tail.ids) == 0:
        return head
    extra = ~np.isin(tail.ids, head.ids)
    return Ranked(
        np.concatenate([head.scores, tail.scores[extra]])[:k],
        np.concatenate([head.ids, tail.ids[extra]])[:k],
        np.concatenate([head.variant, tail.variant[extra]])[:k],
    )


def retrieve(
    search: SearchFn,
    reconstruct: Callable[[np.ndarray], np.ndarray],
    variants: np.ndarray,
    k: int,
    settings: RerankSettings = RerankSettings(),
    *,
    exclude: Sequence[int] = (),
    cache: NeighbourCache | None = None,
) -> Ranked:
    """Top-``k`` database ids for one probe: invariant search, then DBA re-scoring and alpha-QE.

    1. search every probe variant and keep each item's best score (:func:`invariant_search`);
    2. DBA: re-score the first ``shortlist`` results with their DBA vectors (computed from their
       own neighbours on demand; ``exclude`` never counts as a neighbour, so a query that is in the
       database does not leak into its results' vectors);
    3. alpha-QE: add the top ``qe_k`` (DBA) vectors, weighted by ``score ** alpha``, to the probe
       variant that matched each, search again, and re-score with DBA vectors as in 2.

    ``reconstruct(ids)`` returns the stored vectors of ``ids``. Cost with DBA and QE: two searches
    of the probe variants and one search of at most ``2 * shortlist`` stored vectors.
    """
    variants = l2_normalise(np.atleast_2d(np.asarray(variants, np.float32)))
    if not settings.active:
        return invariant_search(search, variants, k, exclude, settings.margin)
    depth = max(k, settings.shortlist, settings.qe_k)
    first = invariant_search(search, variants, depth, exclude, settings.margin)
    if cache is None:
        cache = NeighbourCache(search, reconstruct, settings.dba_k + 1 + len(exclude))
    cache.limit()
    if settings.power != 1.0:
        return _rerank_shortlist(first, cache.vectors(first.ids), variants, k, settings)

    def dba_pass(probes: np.ndarray, ranked: Ranked) -> tuple[Ranked, np.ndarray | None]:
        if not settings.dba_k or len(ranked.ids) == 0:  # nothing to re-score (e.g. an empty library)
            return ranked, None
        head = Ranked(*(a[: settings.shortlist] for a in (ranked.scores, ranked.ids, ranked.variant)))
        if settings.dba_local:
            vectors = local_dba(cache.vectors(head.ids), settings.dba_k, settings.dba_alpha)
        else:
            vectors = cache.dba_vectors(head.ids, settings.dba_k, settings.dba_alpha, exclude)
        rescored = _rescore(probes, head, vectors, len(head.ids), settings.margin)
        row = {int(i): r for r, i in enumerate(head.ids)}
        return _append_tail(rescored, ranked, depth), vectors[[row[int(i)] for i in rescored.ids]]

    ranked, head_vectors = dba_pass(variants, first)
    if settings.qe_k and len(ranked.ids):
        top = min(settings.qe_k, len(ranked.ids))
        neighbours = head_vectors[:top] if head_vectors is not None else cache.vectors(ranked.ids[:top])
        expanded = _expanded_probes(variants, ranked, neighbours, settings.qe_alpha)
        ranked, _ = dba_pass(expanded, invariant_search(search, expanded, depth, exclude, settings.margin))
    return Ranked(ranked.scores[:k], ranked.ids[:k], ranked.variant[:k])


def _expanded_probes(probes: np.ndarray, ranked: Ranked, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """alpha-QE: each probe view plus the first results it matched (``neighbours``: their vectors,
    in ``ranked`` order), weighted by ``score ** alpha``, re-normalised."""
    expanded = probes.copy()
    weights = expansion_weights(ranked.scores[: len(neighbours)], alpha)
    for x, w, v in zip(neighbours, weights, ranked.variant[: len(neighbours)], strict=True):
        expanded[v] += w * x
    return l2_normalise(expanded)


def _rerank_shortlist(
    first: Ranked, vectors: np.ndarray, variants: np.ndarray, k: int, settings: RerankSettings
) -> Ranked:
    """Re-rank a first-pass shortlist in the power-normalised space: local DBA among the shortlist,
    then alpha-QE re-scoring the shortlist again (no second search: the index holds plain vectors).
    ``vectors`` are the stored vectors of ``first.ids``."""
    if len(first.ids) == 0:
        return first
    probes = power_normalise(variants, settings.power)
    database = power_normalise(vectors, settings.power)
    if settings.dba_k:
        database = local_dba(database, settings.dba_k, settings.dba_alpha)
    ranked = _rescore(probes, first, database, len(first.ids), settings.margin)
    if settings.qe_k:
        row = {int(i): r for r, i in enumerate(first.ids)}
        top = min(settings.qe_k, len(ranked.ids))
        neighbours = database[[row[int(i)] for i in ranked.ids[:top]]]
        expanded = _expanded_probes(probes, ranked, neighbours, settings.qe_alpha)
        ranked = _rescore(expanded, first, database, len(first.ids), settings.margin)
    return Ranked(ranked.scores[:k], ranked.ids[:k], ranked.variant[:k])


def dba(vectors: np.ndarray, k: int = 1, alpha: float = 3.0, *, batch: int = 4096) -> np.ndarray:
    """Database-side augmentation: each row becomes ``x + sum_i sim_i**alpha * x_i`` over its top-``k``
    neighbours (itself excluded), re-normalised. Exact kNN with FAISS in batches: O(n^2 d) time,
    O(n d) memory (one more copy of the vectors)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if k <= 0 or len(vectors) < 2:
        return vectors.copy()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out = np.empty_like(vectors)
    kk = min(k + 1, len(vectors))
    for start in range(0, len(vectors), batch):
        part = vectors[start : start + batch]
        scores, rows = index.search(part, kk)
        acc = part.copy()
        for j in range(len(part)):
            self_row = start + j
            taken = 0
            for s, r in zip(scores[j], rows[j], strict=True):
                if r < 0 or r == self_row or taken == k:
                    continue
                acc[j] += expansion_weights(s, alpha) * vectors[r]
                taken += 1
        out[start : start + batch] = acc
    return l2_normalise(out)


class Whitening:
    """PCA-whitening learned on a set of unit vectors (``faiss.PCAMatrix``, ``eigen_power=-0.5``).

    ``apply`` centres, projects onto the top ``dim`` components scaled by ``eigenvalue**-0.5``, and
    re-normalises. Needs many more vectors than dimensions to help: learned on the 422 Holidays or
    1,360 Flowers-17 vectors (1280-d) it amplifies noise and costs a lot of quality, so it is off.
    """

    def __init__(self, matrix: faiss.PCAMatrix) -> None:
        self.matrix = matrix

    @classmethod
    def fit(cls, vectors: np.ndarray, dim: int | None = None, eigen_power: float = -0.5) -> Whitening:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        d_in = vectors.shape[1]
        d_out = min(dim or d_in, d_in, max(1, len(vectors) - 1))
        matrix = faiss.PCAMatrix(d_in, d_out, eigen_power)
        matrix.train(vectors)
        return cls(matrix)

    @property
    def dim(self) -> int:
        return int(self.matrix.d_out)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalise(self.matrix.apply(np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)))
