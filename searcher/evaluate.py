"""Retrieval quality, measured like the literature.

    from searcher import Library
    from searcher.evaluate import GroundTruth, RetrievalOptions, evaluate_folder
    with Library.open("lib") as lib:
        report = evaluate_folder(lib, "holidays/", GroundTruth.load("holidays/groundtruth.json"))
        print(report.metrics.map, report.metrics.precision[10])

Protocol: every query is ranked against every other image of the folder (the query itself is
removed from its own ranking); images of the folder that no ground-truth entry names are
distractors. Metrics per query, averaged over queries:

- **AP** (``map``): non-interpolated average precision, the mean of precision@rank over the ranks
  of the positives, divided by the number of positives (TREC / scikit-learn definition);
- **AP, trapezoid** (``map_trapezoid``): the area under the precision/recall curve by trapezoids,
  as computed by the official INRIA Holidays script (``holidays_map.py``) and the Oxford/Paris
  ``compute_ap``; a little lower when the first positive is not at rank 1;
- **precision@k** (positives among the first k / k) and **recall@k** (/ number of positives).

Ground truth JSON: ``groups`` (lists of file names that all match each other; every member is a
query, the rest of its group its positives) and/or ``queries`` (query -> list of positives; the
Holidays protocol). File names are relative to the folder, or match by base name.

The near-duplicate benchmark (:func:`near_duplicate_benchmark`) writes edited copies
(:mod:`searcher.edits`) of a sample of the folder's photos, uses them as probes against the whole
folder, and reports recall@1 of the source per kind of edit.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from searcher.files import absolute

if TYPE_CHECKING:
    from searcher.library import Library, Progress

DEFAULT_KS = (1, 5, 10)


# --- ground truth --------------------------------------------------------------------------------


class GroundTruthError(ValueError):
    """The ground-truth file is malformed or does not match the folder."""


@dataclass
class GroundTruth:
    """``queries``: query name -> positive names (as written in the file)."""

    queries: dict[str, list[str]]
    protocol: str  # "groups" or "queries"
    source: str = ""

    @classmethod
    def load(cls, path: str | os.PathLike[str], protocol: str = "auto") -> GroundTruth:
        """Read a ground-truth JSON. ``protocol``: ``queries``, ``groups``, or ``auto`` (``queries``
        when the file has them, else ``groups``)."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise GroundTruthError(f"cannot read ground truth {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise GroundTruthError(f"ground truth {path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, protocol, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], protocol: str = "auto", source: str = "") -> GroundTruth:
        if protocol not in ("auto", "queries", "groups"):
            raise GroundTruthError(f"protocol must be auto, queries or groups, not {protocol!r}")
        if protocol == "auto":
            protocol = "queries" if data.get("queries") else "groups"
        if protocol == "queries":
            raw = data.get("queries")
            if not isinstance(raw, Mapping) or not raw:
                raise GroundTruthError("the ground truth has no 'queries' (query -> list of positives)")
            queries = {str(q): [str(p) for p in pos] for q, pos in raw.items()}
        else:
            groups = data.get("groups")
            if not isinstance(groups, list) or not groups:
                raise GroundTruthError("the ground truth has no 'groups' (lists of matching file names)")
            queries = {}
            for group in groups:
                members = [str(m) for m in group]
                for m in members:
                    others = [o for o in members if o != m]
                    if others:
                        queries.setdefault(m, []).extend(others)
        return cls(queries, protocol, source)

    def names(self) -> set[str]:
        out = set(self.queries)
        for pos in self.queries.values():
            out.update(pos)
        return out


def resolve_names(names: Iterable[str], folder: str, paths: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Map ground-truth names to library paths under ``folder``: by path relative to the folder, else
    by base name when that is unique. Returns (name -> path, names not found or ambiguous)."""
    by_path = set(paths)
    by_base: dict[str, list[str]] = {}
    for p in paths:
        by_base.setdefault(os.path.basename(p), []).append(p)
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        candidate = os.path.normpath(os.path.join(folder, name))
        if candidate in by_path:
            found[name] = candidate
            continue
        same = by_base.get(os.path.basename(name), [])
        if len(same) == 1:
            found[name] = same[0]
        else:
            missing.append(name)
    return found, sorted(missing)


# --- metrics -------------------------------------------------------------------------------------


def average_precision(relevant: Sequence[bool] | np.ndarray, n_positives: int) -> float:
    """Non-interpolated AP of one ranking: ``relevant[r]`` says whether rank ``r`` (0-based) is a
    positive; positives never retrieved count as precision 0."""
    if n_positives <= 0:
        return 0.0
    hits = np.flatnonzero(np.asarray(relevant, dtype=bool))
    return float(np.sum((np.arange(len(hits)) + 1.0) / (hits + 1.0)) / n_positives)


def average_precision_trapezoid(relevant: Sequence[bool] | np.ndarray, n_positives: int) -> float:
    """AP as the official INRIA Holidays script computes it (trapezoids under the P/R curve)."""
    if n_positives <= 0:
        return 0.0
    ap = 0.0
    for ntp, rank in enumerate(np.flatnonzero(np.asarray(relevant, dtype=bool))):
        p0 = 1.0 if rank == 0 else ntp / rank
        p1 = (ntp + 1) / (rank + 1)
        ap += (p0 + p1) / 2.0 / n_positives
    return float(ap)


@dataclass
class RetrievalMetrics:
    map: float
    map_trapezoid: float
    precision: dict[int, float]
    recall: dict[int, float]
    queries: int
    per_query: dict[str, float] = field(default_factory=dict)  # query -> AP

    def as_dict(self, per_query: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mAP": round(self.map, 6),
            "mAP_trapezoid": round(self.map_trapezoid, 6),
            "precision": {str(k): round(v, 6) for k, v in self.precision.items()},
            "recall": {str(k): round(v, 6) for k, v in self.recall.items()},
            "queries": self.queries,
        }
        if per_query:
            out["per_query_ap"] = {q: round(v, 6) for q, v in self.per_query.items()}
        return out


def score_rankings(
    rankings: Mapping[str, Sequence[Any] | np.ndarray],
    positives: Mapping[str, Iterable[Any]],
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalMetrics:
    """Metrics of complete rankings (``query -> ids best first``, the query itself already removed)
    against ``query -> positive ids``. Queries without positives are skipped."""
    aps, apts = {}, []
    prec: dict[int, list[float]] = {k: [] for k in ks}
    rec: dict[int, list[float]] = {k: [] for k in ks}
    for q, ranking in rankings.items():
        pos = set(positives.get(q, ()))
        if not pos:
            continue
        rel = np.fromiter((r in pos for r in ranking), dtype=bool, count=len(ranking))
        aps[q] = average_precision(rel, len(pos))
        apts.append(average_precision_trapezoid(rel, len(pos)))
        for k in ks:
            hits = int(rel[:k].sum())
            prec[k].append(hits / k)
            rec[k].append(hits / len(pos))
    n = len(aps)
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    return RetrievalMetrics(
        map=mean(list(aps.values())),
        map_trapezoid=mean(apts),
        precision={k: mean(v) for k, v in prec.items()},
        recall={k: mean(v) for k, v in rec.items()},
        queries=n,
        per_query=aps,
    )


# --- retrieval with the optional techniques --------------------------------------------------------


@dataclass(frozen=True)
class RetrievalOptions:
    """Which retrieval techniques to apply (see :mod:`searcher.rerank`); the defaults are plain search.

    - ``invariant``: probe transforms whose best score counts (``("identity",)`` = off);
    - ``trim``: probes with a solid frame or letterbox bars are also searched without them;
    - ``margin``: transformed probe views score this much less than the probe as it is;
    - ``qe_k``/``qe_alpha``: alpha query expansion over the top ``qe_k`` results (0 = off);
    - ``dba_k``/``dba_alpha``: database-side augmentation with ``dba_k`` neighbours (0 = off);
      ``dba_local``: neighbours among the first ``shortlist`` results only (what queries do);
    - ``whiten``: PCA-whitening learned on the folder's own vectors (``whiten_dim`` components);
    - ``mode``/``scales``: how images become vectors: ``squash`` at scale 1 reuses the library's
      stored vectors; ``aspect`` (short side at the input size) or other scales re-embed the folder;
    - ``power``: signed power normalisation of probe and shortlist (1 = off); with it, DBA and QE
      stay within the shortlist (see :func:`searcher.rerank.retrieve`);
    - ``regional_margin``: the probe's regions (:mod:`searcher.regions`) also search the global
      vectors, an image keeping max(global, regional - margin) (``None`` = off).
    """

    invariant: tuple[str, ...] = ("identity",)
    qe_k: int = 0
    qe_alpha: float = 3.0
    dba_k: int = 0
    dba_alpha: float = 3.0
    whiten: bool = False
    whiten_dim: int | None = None
    mode: str = "squash"
    scales: tuple[float, ...] = (1.0,)
    shortlist: int = 100
    trim: bool = False
    margin: float = 0.0
    dba_local: bool = False
    power: float = 1.0
    regional_margin: float | None = None

    @classmethod
    def from_preset(cls, name: str | None = None, **changes: Any) -> RetrievalOptions:
        """What :meth:`searcher.Library.query` does for a new photo with preset ``name``
        (:data:`searcher.rerank.PRESETS`; ``None`` = instance), with ``changes`` applied."""
        from searcher import rerank

        p = rerank.preset(name)
        base = cls(
            invariant=rerank.invariance_kinds(p.invariant), trim=p.trim, margin=p.margin,
            dba_k=p.dba_k if p.augment else 0, dba_alpha=p.dba_alpha, dba_local=p.dba_local,
            qe_k=p.qe_k if p.expand else 0, qe_alpha=p.qe_alpha, shortlist=p.shortlist, power=p.power,
            regional_margin=p.regional_margin,
        )  # fmt: skip
        return replace(base, **changes)

    @property
    def stored_vectors(self) -> bool:
        return self.mode == "squash" and tuple(self.scales) == (1.0,)

    def describe(self) -> str:
        parts = []
        if not self.stored_vectors:
            parts.append(f"{self.mode}@{'+'.join(f'{s:g}' for s in self.scales)}")
        if self.whiten:
            parts.append(f"whiten{self.whiten_dim or ''}")
        if self.power != 1.0:
            parts.append(f"power {self.power:g} (top {self.shortlist})")
        if len(self.invariant) > 1:
            parts.append("invariant(" + ",".join(k for k in self.invariant if k != "identity") + ")")
        if self.trim:
            parts.append("unframed")
        if self.margin and (len(self.invariant) > 1 or self.trim):
            parts.append(f"margin {self.margin:g}")
        if self.dba_k:
            parts.append(f"DBA(k={self.dba_k},a={self.dba_alpha:g}{',local' if self.dba_local else ''})")
        if self.qe_k:
            parts.append(f"aQE(k={self.qe_k},a={self.qe_alpha:g})")
        if self.regional_margin is not None:
            parts.append(f"probe regions (margin {self.regional_margin:g})")
        return " + ".join(parts) or "plain"

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["invariant"] = list(self.invariant)
        out["scales"] = list(self.scales)
        out["description"] = self.describe()
        return out


class Ranker:
    """Ranks probes against a fixed set of database vectors with the chosen techniques (the same
    :func:`searcher.rerank.retrieve` that :meth:`searcher.Library.query` runs).

    Built once per evaluation (whitening is learned here); neighbour lists for DBA are cached
    across probes.
    """

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, options: RetrievalOptions) -> None:
        from searcher import rerank

        self.options = options
        self.ids = np.asarray(ids, np.int64)
        vectors = rerank.l2_normalise(vectors)
        self.whitening = rerank.Whitening.fit(vectors, options.whiten_dim) if options.whiten else None
        if self.whitening is not None:
            vectors = self.whitening.apply(vectors)
        self.vectors = vectors
        self._row = {int(i): r for r, i in enumerate(self.ids)}
        self.search = rerank.matrix_search(vectors, self.ids)
        self.settings = rerank.RerankSettings(
            qe_k=options.qe_k, qe_alpha=options.qe_alpha, dba_k=options.dba_k, dba_alpha=options.dba_alpha,
            shortlist=options.shortlist, margin=options.margin, dba_local=options.dba_local, power=options.power,
        )  # fmt: skip
        self.cache = rerank.NeighbourCache(self.search, self.reconstruct, options.dba_k + 2)

    def probe(self, variants: np.ndarray) -> np.ndarray:
        """Probe vectors in the database's space (whitened when whitening is on)."""
        variants = np.atleast_2d(np.asarray(variants, np.float32))
        return self.whitening.apply(variants) if self.whitening is not None else variants

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[[self._row[int(i)] for i in ids]]

    def rank(
        self,
        variants: np.ndarray,
        k: int | None = None,
        exclude: Sequence[int] = (),
        probe_regions: np.ndarray | None = None,
    ):  # -> rerank.Ranked
        """The ``k`` best ids for one probe's ``variants``; with ``probe_regions`` (and
        ``options.regional_margin`` set, no whitening) merged with its regional matches."""
        from searcher import regions, rerank

        k = len(self.ids) if k is None else k
        cache = self.cache if len(exclude) <= 1 else None
        probes = self.probe(variants)
        ranked = rerank.retrieve(self.search, self.reconstruct, probes, k, self.settings, exclude=exclude, cache=cache)
        margin = self.options.regional_margin
        if probe_regions is None or margin is None or self.whitening is not None:
            return ranked
        found = regions.regional_scores(probes[0], probe_regions, None, self.search, REGIONAL_DEPTH, exclude)
        return regions.merge_regional(ranked, found, k, margin)

    def plain_scores(self, variants: np.ndarray, ranked: Any) -> np.ndarray:
        """The plain cosine of each ranked id with the probe view that ranked it (``Hit.score`` of
        :meth:`searcher.Library.query`, what the default verification's gap rule reads)."""
        if len(ranked.ids) == 0:
            return np.zeros(0, np.float32)
        views = self.probe(variants)[ranked.variant]
        return np.einsum("nd,nd->n", views, self.reconstruct(ranked.ids))


# --- evaluating a folder -------------------------------------------------------------------------


@dataclass
class EvalReport:
    folder: str
    groundtruth: str
    protocol: str
    backbone: str
    model_key: str
    images: int
    metrics: RetrievalMetrics
    options: RetrievalOptions
    missing: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self, per_query: bool = False) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "groundtruth": self.groundtruth,
            "protocol": self.protocol,
            "backbone": self.backbone,
            "model_key": self.model_key,
            "images": self.images,
            "options": self.options.as_dict(),
            **self.metrics.as_dict(per_query),
            "missing": self.missing,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def folder_vectors(lib: Library, model: Any, folder: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(ids, paths, vectors) of every indexed image under ``folder`` for ``model``, in path order."""
    from searcher import store
    from searcher.store import STATUS_OK

    with lib.sessions() as session:
        rows = sorted(
            {r.id: r for r in store.rows_under(session, [Path(folder)]) if r.status == STATUS_OK}.values(),
            key=lambda r: r.path,
        )
        found = store.vectors_for(session, model.id, [r.id for r in rows])
    rows = [r for r in rows if r.id in found]
    ids = np.array([r.id for r in rows], np.int64)
    vectors = np.stack([found[r.id] for r in rows]) if rows else np.zeros((0, model.dim), np.float32)
    return ids, [r.path for r in rows], vectors.astype(np.float32)


def _prepare(
    lib: Library,
    folder: str | os.PathLike[str],
    *,
    backbone: str | None,
    weights: str | None,
    pooling: str | None,
    index: bool,
    progress: Progress | None,
    seconds: dict[str, float],
) -> tuple[str, Any, np.ndarray, list[str], np.ndarray]:
    from searcher.library import LibraryError

    root = absolute(folder)
    if not os.path.isdir(root):
        raise LibraryError(f"no such folder: {root}")
    started = time.monotonic()
    if index:
        report = lib.index([root], backbone=backbone, weights=weights, pooling=pooling or "avg", progress=progress)
        backbone = report.backbone
    seconds["index"] = time.monotonic() - started
    model = lib.find_model(backbone, pooling)
    ids, paths, vectors = folder_vectors(lib, model, root)
    if len(ids) < 2:
        raise LibraryError(f"fewer than two images of {root} are indexed with {model.backbone}")
    return root, model, ids, paths, vectors


REGIONAL_DEPTH = 100  # as :func:`searcher.querying.search_probes`

# Probe vectors already computed in this process: (model key, file digest, mode, scales) -> {transform: vector}.
# Lets several option sets (plain, rotations, rotations + flips, ...) share one embedding of each probe.
_PROBE_CACHE: dict[tuple[str, str, str, tuple[float, ...]], dict[str, np.ndarray]] = {}


def _digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.blake2b(handle.read(), digest_size=16).hexdigest()


def _embed_paths(lib: Library, model: Any, paths: Sequence[str], options: RetrievalOptions) -> list[np.ndarray]:
    """(v, dim) probe vectors per image file, decoded and transformed as :meth:`Library.query` does
    (``options.invariant`` views, plus the same views of the inside of a frame when ``options.trim``)."""
    from searcher import frames, rerank
    from searcher.decode import load_for_model, open_image
    from searcher.querying import full_picture

    embedder = lib.embedder_for(model)
    kinds = options.invariant
    out = []
    for p in paths:
        key = (model.key, _digest(p), options.mode, tuple(options.scales))
        have = _PROBE_CACHE.setdefault(key, {})
        wanted = [*kinds, *(f"trim:{k}" for k in kinds)] if options.trim else list(kinds)
        todo = [k for k in wanted if k not in have]
        if options.regional_margin is not None and options.stored_vectors and "regions" not in have:
            from searcher.regions import region_vectors

            pixels, _ = load_for_model(p, embedder.input_size)
            original = full_picture(p, embedder.input_size)  # as Library.query: cut at full detail
            inner = frames.inner_picture(pixels, original)[0] if options.trim and len(kinds) > 1 else None
            views = pixels[None] if inner is None else np.stack([pixels, inner])  # as Library.query
            found = region_vectors(embedder.feature_maps(views))
            have["regions"] = found.reshape(-1, found.shape[-1])
        if todo:
            if options.stored_vectors:
                pixels, _ = load_for_model(p, embedder.input_size)
                original = full_picture(p, embedder.input_size)
                inner, framed = frames.inner_picture(pixels, original) if options.trim else (None, False)
                views = []
                for k in todo:
                    base = pixels if not k.startswith("trim:") else inner
                    if k.startswith("trim:") and not framed and k != f"trim:{kinds[0]}":
                        base = None  # a screenshot's picture: upright only (as rerank.probe_views)
                    views.append(None if base is None else rerank.array_variants(base, [k.removeprefix("trim:")])[0])
                good = [v for v in views if v is not None]
                vectors = iter(embedder.embed(np.stack(good)) if good else [])
                have.update({k: (None if v is None else next(vectors)) for k, v in zip(todo, views, strict=True)})
            else:
                views = rerank.transformed(open_image(p).image, kinds)
                have.update(
                    zip(kinds, embedder.embed_images(views, mode=options.mode, scales=options.scales), strict=True)
                )
                have.update({k: None for k in todo if k.startswith("trim:")})  # frames: squash mode only
        out.append(np.stack([have[k] for k in wanted if have[k] is not None]))
    return out


def _probe_regions(lib: Library, model: Any, paths: Sequence[str], options: RetrievalOptions) -> list[Any]:
    """The region vectors (:mod:`searcher.regions`) of each probe file, or ``None`` for each when
    ``options`` has no regional matching."""
    if options.regional_margin is None or not options.stored_vectors:
        return [None] * len(paths)
    _embed_paths(lib, model, paths, options)  # computed there, cached
    return [_PROBE_CACHE[(model.key, _digest(p), options.mode, tuple(options.scales))]["regions"] for p in paths]


def _database_vectors(
    lib: Library, model: Any, paths: Sequence[str], stored: np.ndarray, options: RetrievalOptions
) -> np.ndarray:
    """The stored vectors, or (for another embedding mode or scales) the folder embedded again."""
    if options.stored_vectors:
        return stored
    plain = RetrievalOptions(mode=options.mode, scales=options.scales)
    return np.stack([v[0] for v in _embed_paths(lib, model, paths, plain)])


def evaluate_folder(
    lib: Library,
    folder: str | os.PathLike[str],
    groundtruth: GroundTruth,
    options: RetrievalOptions | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    backbone: str | None = None,
    weights: str | None = None,
    pooling: str | None = None,
    index: bool = True,
    progress: Progress | None = None,
    verify_top: int = 0,
    verify_gap: float = float("inf"),
    verify_deeper: int = 0,
) -> EvalReport:
    """Index ``folder`` (only new work; ``index=False`` uses what is there), then rank every query of
    ``groundtruth`` against every other image of the folder and score the rankings.

    ``verify_top``, ``verify_gap``, ``verify_deeper``: re-rank the first results by pixel verification as
    the default query does (:func:`searcher.rerank.needs_verification`, :func:`searcher.rerank.verify_and_order`;
    the next ``verify_deeper`` when none of the first is tied to the probe)."""
    from searcher.rerank import needs_verification

    options = options or RetrievalOptions()
    seconds: dict[str, float] = {}
    root, model, ids, paths, vectors = _prepare(
        lib, folder, backbone=backbone, weights=weights, pooling=pooling, index=index,
        progress=progress, seconds=seconds,
    )  # fmt: skip
    found, missing = resolve_names(groundtruth.names(), root, paths)
    row_of = {p: r for r, p in enumerate(paths)}
    queries = [q for q in groundtruth.queries if q in found]
    if not queries:
        from searcher.library import LibraryError

        raise LibraryError(
            f"none of the {len(groundtruth.queries)} ground-truth queries is an indexed image of {root} "
            f"(e.g. {next(iter(groundtruth.queries))!r})"
        )
    started = time.monotonic()
    vectors = _database_vectors(lib, model, paths, vectors, options)
    qrows = [row_of[found[q]] for q in queries]
    if len(options.invariant) > 1 or options.trim:
        probes = _embed_paths(lib, model, [paths[r] for r in qrows], options)
    else:
        probes = [vectors[r][None] for r in qrows]
    probe_regions = _probe_regions(lib, model, [paths[r] for r in qrows], options)
    seconds["embed"] = time.monotonic() - started
    started = time.monotonic()
    ranker = Ranker(ids, vectors, options)
    seconds["prepare"] = time.monotonic() - started
    started = time.monotonic()
    rankings: dict[str, np.ndarray] = {}
    positives: dict[str, set[int]] = {}
    verifier = None
    if verify_top:
        from searcher.duplicates import thresholds_for

        verifier = _Verifier(thresholds_for(model).verified)
    path_of = {int(i): p for p, i in zip(paths, ids, strict=True)}
    for q, r, variants, own in zip(queries, qrows, probes, probe_regions, strict=True):
        ranked = ranker.rank(variants, exclude=[int(ids[r])], probe_regions=own)
        rankings[q] = ranked.ids
        if verifier is not None and needs_verification(ranker.plain_scores(variants, ranked), verify_top, verify_gap):
            rankings[q], _ = verifier.rerank(paths[r], ranked.ids, path_of, verify_top, verify_deeper)
        positives[q] = {int(ids[row_of[found[p]]]) for p in groundtruth.queries[q] if p in found}
    seconds["rank"] = time.monotonic() - started
    metrics = score_rankings(rankings, positives, ks)
    return EvalReport(
        folder=root, groundtruth=groundtruth.source, protocol=groundtruth.protocol, backbone=model.backbone,
        model_key=model.key, images=len(ids), metrics=metrics, options=options, missing=missing, seconds=seconds,
    )  # fmt: skip


# --- near-duplicate benchmark --------------------------------------------------------------------


@dataclass
class NearDuplicateReport:
    folder: str
    backbone: str
    model_key: str
    sources: int
    copies: int
    images: int  # database size: the sources plus the rest of the folder as distractors
    options: RetrievalOptions
    per_kind: dict[str, dict[str, float]]  # kind -> {"copies", "recall@1", "recall@5", "recall@10"}
    overall: dict[str, float]
    seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    misses: list[dict[str, Any]] = field(default_factory=list)  # copies whose source is not first
    verify_top: int = 0
    # with verify_top: pairs (copy, one of its first verify_top results) called duplicates at the
    # model's shipped threshold, as `searcher duplicates` calls them: precision and recall
    pairs: dict[str, Any] = field(default_factory=dict)
    split: str | None = None  # the edits' parameter split (tune/report), None = whole ranges
    verify_gap: float = float("inf")  # verified only when the two best cosines are closer than this
    verified_share: float = 0.0  # the share of copies whose first results were verified

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "backbone": self.backbone,
            "model_key": self.model_key,
            "sources": self.sources,
            "copies": self.copies,
            "images": self.images,
            "seed": self.seed,
            "split": self.split,
            "options": self.options.as_dict(),
            "verify_top": self.verify_top,
            "verify_gap": self.verify_gap if self.verify_gap != float("inf") else "inf",
            "verified_share": self.verified_share,
            "overall": self.overall,
            **({"pairs": self.pairs} if self.pairs else {}),
            "per_kind": self.per_kind,
            "misses": self.misses,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def sample_sources(paths: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """A reproducible sample of ``n`` paths (all of them when ``n`` >= their number)."""
    if n >= len(paths):
        return list(paths)
    rng = np.random.default_rng(seed)
    return sorted(paths[i] for i in rng.choice(len(paths), n, replace=False))


def near_duplicate_benchmark(
    lib: Library,
    folder: str | os.PathLike[str],
    *,
    sources: int | Sequence[str] = 50,
    kinds: Sequence[str] | None = None,
    seed: int = 0,
    options: RetrievalOptions | None = None,
    workdir: str | os.PathLike[str] | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    pooling: str | None = None,
    index: bool = True,
    progress: Progress | None = None,
    verify_top: int = 0,
    split: str | None = None,
    verify_gap: float = float("inf"),
    verify_deeper: int = 0,
) -> NearDuplicateReport:
    """Edited copies (:func:`searcher.edits.make_benchmark`) of ``sources`` photos sampled from
    ``folder`` (or of the named ones) query the folder (sources + every other image as distractors; the copies are not
    indexed): recall@1/5/10 of the source, per kind of edit and overall.

    ``verify_top``: re-rank the first results by the pixel verification of the duplicates module
    (:func:`searcher.verify.verify_symmetric`, SIFT + a similarity transform + dense correlation),
    as ``searcher duplicates`` and ``query --duplicates-only`` confirm CNN candidates.
    ``split``: ``"tune"`` or ``"report"`` parameters of the edits (:data:`searcher.edits.SPLITS`;
    report figures on ``"report"``, tune on ``"tune"``); ``None``: the whole ranges.
    ``verify_gap``: verify only when the two best cosines of the first ``verify_top`` are closer
    than this (the default query's rule, :func:`searcher.rerank.needs_verification`); ``verify_deeper``:
    the next results verified when none of the first is tied to the probe (the default query's 20)."""
    import tempfile

    from searcher.edits import EDIT_KINDS, make_benchmark
    from searcher.rerank import needs_verification

    options = options or RetrievalOptions()
    kinds = tuple(kinds or EDIT_KINDS)
    seconds: dict[str, float] = {}
    root, model, ids, paths, vectors = _prepare(
        lib, folder, backbone=backbone, weights=weights, pooling=pooling, index=index,
        progress=progress, seconds=seconds,
    )  # fmt: skip
    if isinstance(sources, int):
        chosen = sample_sources(paths, sources, seed)
    else:
        found, missing = resolve_names(sources, root, paths)
        if missing:
            from searcher.library import LibraryError

            raise LibraryError(f"not indexed images of {root}: {', '.join(missing[:5])}")
        chosen = [found[s] for s in sources]
    id_of = {p: int(i) for p, i in zip(paths, ids, strict=True)}
    path_of = {int(i): p for p, i in zip(paths, ids, strict=True)}
    tmp = tempfile.TemporaryDirectory(prefix="searcher-neardup-") if workdir is None else None
    hits: dict[str, list[int]] = {k: [] for k in kinds}  # 0-based rank of the source, or 10 when beyond
    misses = []
    found_at_threshold: dict[str, list[bool]] = {k: [] for k in kinds}  # source called a duplicate
    wrong_pairs: list[dict[str, Any]] = []  # other images called duplicates of a copy
    if verify_top:
        from searcher.duplicates import thresholds_for

        th = thresholds_for(model)
    try:
        out_dir = workdir if workdir is not None else tmp.name  # type: ignore[union-attr]
        started = time.monotonic()
        manifest = make_benchmark(chosen, out_dir, kinds, seed=seed, split=split)
        seconds["edit"] = time.monotonic() - started
        started = time.monotonic()
        vectors = _database_vectors(lib, model, paths, vectors, options)
        probes = _embed_paths(lib, model, [m["copy"] for m in manifest], options)
        probe_regions = _probe_regions(lib, model, [m["copy"] for m in manifest], options)
        seconds["embed"] = time.monotonic() - started
        verified_queries = 0
        started = time.monotonic()
        ranker = Ranker(ids, vectors, options)
        verifier = _Verifier(th.verified) if verify_top else None
        for entry, variants, own in zip(manifest, probes, probe_regions, strict=True):
            ranked = ranker.rank(variants, k=10 + (verify_deeper if verify_top else 0), probe_regions=own)
            order = ranked.ids
            if verifier is not None and not needs_verification(
                ranker.plain_scores(variants, ranked), verify_top, verify_gap
            ):
                found_at_threshold[entry["kind"]].append(False)  # not verified: not called a copy
            elif verifier is not None:
                verified_queries += 1
                order, verified = verifier.rerank(entry["copy"], order, path_of, verify_top, verify_deeper)
                cosine = dict(zip(ranked.ids.tolist(), ranked.scores.tolist(), strict=True))
                called = {i for i, v in verified.items() if v >= th.verified and cosine[i] >= th.candidate_cosine}
                found_at_threshold[entry["kind"]].append(id_of[entry["source"]] in called)
                for i in sorted(called - {id_of[entry["source"]]}):
                    wrong_pairs.append(
                        {
                            "source": entry["source"],
                            "kind": entry["kind"],
                            "called": path_of[i],
                            "verified": verified[i],
                        }
                    )
            where = np.flatnonzero(order[:10] == id_of[entry["source"]])
            rank = int(where[0]) if len(where) else 10
            hits[entry["kind"]].append(rank)
            if rank:
                deep = ranker.rank(variants, k=100, probe_regions=own).ids if rank >= 10 else order
                where = np.flatnonzero(deep == id_of[entry["source"]])
                misses.append({
                    "source": entry["source"], "kind": entry["kind"], "rank": rank + 1 if rank < 10 else None,
                    "rank_in_100": int(where[0]) + 1 if len(where) else None,  # in the CNN order (before verifying)
                    "top": path_of[int(order[0])],
                    "top_score": round(float(ranked.scores[list(ranked.ids).index(order[0])]), 4),
                })  # fmt: skip
        seconds["rank"] = time.monotonic() - started
    finally:
        if tmp is not None:
            tmp.cleanup()

    def recalls(ranks: list[int]) -> dict[str, float]:
        arr = np.asarray(ranks)
        return {
            "copies": len(arr),
            **{f"recall@{k}": round(float(np.mean(arr < k)), 6) if len(arr) else 0.0 for k in (1, 5, 10)},
        }

    per_kind = {k: recalls(v) for k, v in hits.items()}
    pairs: dict[str, Any] = {}
    if verify_top:
        for kind, found_list in found_at_threshold.items():
            per_kind[kind]["recall_at_threshold"] = round(float(np.mean(found_list)), 6) if found_list else 0.0
        right = sum(sum(v) for v in found_at_threshold.values())
        pairs = {
            "threshold": th.verified, "threshold_source": th.source, "candidate_cosine": th.candidate_cosine,
            "right_pairs": right, "wrong_pairs": len(wrong_pairs),
            "precision": round(right / (right + len(wrong_pairs)), 6) if right + len(wrong_pairs) else 1.0,
            "recall": round(right / len(manifest), 6) if manifest else 0.0,
            # which pairs of originals the wrong calls come from (source -> other image: how many copies)
            "wrong_by_source": dict(Counter(f"{w['source']} -> {w['called']}" for w in wrong_pairs).most_common()),
            "wrong": wrong_pairs[:200],
        }  # fmt: skip
    return NearDuplicateReport(
        folder=root, backbone=model.backbone, model_key=model.key, sources=len(chosen), copies=len(manifest),
        images=len(ids), options=options, per_kind=per_kind, overall=recalls([r for v in hits.values() for r in v]),
        seed=seed, seconds=seconds, misses=misses, verify_top=verify_top, pairs=pairs,
        split=split, verify_gap=verify_gap, verified_share=round(verified_queries / max(1, len(manifest)), 4),
    )  # fmt: skip


class _Verifier:
    """Re-ranks CNN candidates as the default query does (:func:`searcher.rerank.verified_head`:
    verified copies first, then what a homography ties to the probe), features cached across
    probes (the same sources come back again and again)."""

    def __init__(self, copy_at: float = 1.0) -> None:
        from searcher.verify import FeatureCache

        self.cache = FeatureCache()
        self.copy_at = copy_at

    def rerank(
        self, probe: str, order: np.ndarray, path_of: Mapping[int, str], top: int, deeper: int = 0
    ) -> tuple[np.ndarray, dict[int, float]]:
        """The new order, and the verified score of each id verified: the first ``top``, and the next
        ``deeper`` when none of those is tied to the probe (those tied join the head, as
        :func:`searcher.querying.verified_order` does)."""
        from searcher.rerank import is_tied, verify_and_order

        tried = [int(i) for i in order[:top]]
        head = len(tried)
        more = [int(i) for i in order[top : top + max(0, deeper)]]
        best, evidence = verify_and_order(
            probe, [path_of[i] for i in tried], self.cache, self.copy_at, [path_of[i] for i in more]
        )  # fmt: skip
        if len(evidence) > head:  # nothing among the first was tied: the deeper ones were verified too
            tried += more
        joined = [tried[j] for j in best if j < head or is_tied(evidence[j], self.copy_at)]
        taken = set(joined)
        new_order = np.asarray(joined + [int(i) for i in order[top:] if int(i) not in taken], np.int64)
        return new_order, {i: e.score for i, e in zip(tried, evidence, strict=True)}
