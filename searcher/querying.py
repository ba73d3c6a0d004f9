"""Querying: the nearest indexed images of probe images or vectors, re-ranked.

The query half of :class:`searcher.library.Library` (``Library.query``, ``search_vectors`` and
``search_probes`` are the functions here): reuse a stored vector or embed the probe (with its
rotated views), search the model's FAISS index, re-rank (:mod:`searcher.rerank`) and optionally
verify the first results pixel by pixel (:mod:`searcher.verify`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from searcher import regions, store
from searcher.files import absolute, discover, fingerprint
from searcher.reports import Hit, QueryResult
from searcher.store import STATUS_OK, ImageRow, ModelRow

if TYPE_CHECKING:
    from searcher.library import Library
    from searcher.vector_index import VectorIndex
    from searcher.verify import FeatureCache


REGIONAL_DEPTH = 100  # results per probe region: ``REGIONAL_DEPTH // 4`` (searcher.regions.regional_scores)


THUMBNAIL_EXTRAS = 5  # thumbnail neighbours of a probe verified beside its first results
# verified score at which a thumbnail neighbour joins the results although it is not a copy and no
# homography ties it to the probe (a shaky, watermarked copy leaves SIFT too little to match). Chosen on
# the tune samples of the widened edits (README): the look-alikes that were not the picture verified at
# most 0.29; 4 of the 18 originals among them stayed out at 0.17-0.67, and this bar lets in 0.35 and 0.67
EXTRA_VERIFIED = 0.3


def verified_order(
    probe: str,
    hits: list[Hit],
    top: int,
    cache: FeatureCache,
    copy_at: float = 1.0,
    extra: Sequence[Hit] = (),
    deeper: int = 0,
) -> list[Hit]:
    """``hits`` with the first ``top`` re-ranked by pixel verification against ``probe``
    (:func:`searcher.rerank.verified_head`: copies, verified score at least ``copy_at``, first; then
    results a homography ties to the probe) and their ``verified`` score and ``inliers`` set; the
    rest follow unchanged. ``extra``: more candidates (thumbnail neighbours the CNN ranked lower,
    :func:`thumbnail_candidates`), verified with the head and kept only when they are copies, a
    homography ties them to the probe, or they verify at :data:`EXTRA_VERIFIED` or more, ordered
    with the head. ``deeper``: when verification ties none of those to the probe, the next
    ``deeper`` hits are verified too, and those it ties join the head (an original the CNN ranked
    11th-30th: a photo of a cropped print, a shaky watermarked copy). The list keeps its length."""
    from searcher.rerank import is_tied, verify_and_order

    head, tail = hits[:top], hits[top:]
    tried = [*head, *extra]
    shallow = len(tried)
    more = tail[: max(0, deeper)]
    order, evidence = verify_and_order(probe, [h.path for h in tried], cache, copy_at, [h.path for h in more])
    if len(evidence) > shallow:  # nothing among the first was tied: the deeper ones were verified too
        tried += more
    for hit, (score, inliers, _) in zip(tried, evidence, strict=True):
        hit.verified = score
        hit.inliers = inliers if score < copy_at else None
    # an extra joins when it is a copy, a homography ties it to the probe (a blurred, watermarked copy),
    # or it verifies well for a look-alike (a shaky copy with too few local features left to match);
    # a deeper hit only when it is tied
    joins = [
        j < len(head) or is_tied(e, copy_at) or (j < shallow and e.score >= min(copy_at, EXTRA_VERIFIED))
        for j, e in enumerate(evidence)
    ]
    head = [tried[j] for j in order if joins[j]]
    joined = {id(h) for h in head}
    ranked = [*head, *(h for h in tail if id(h) not in joined)][: len(hits)]
    for rank, hit in enumerate(ranked, 1):
        hit.rank = rank
    return ranked


def thumbnail_candidates(
    lib: Library,
    model: ModelRow,
    probe: str,
    probe_vector: np.ndarray,
    hits: Sequence[Hit],
    cache: FeatureCache,
    skip: int | None = None,
    k: int | None = None,
) -> list[Hit]:
    """Indexed pictures whose stored thumbnails (:mod:`searcher.thumbnails`) correlate with the
    probe's at 0.9 or more, with the same shape, that are not among ``hits`` (nor ``skip``): up to
    ``k`` (default :data:`THUMBNAIL_EXTRAS`; 0 = none), best first, with their cosine to ``probe_vector``
    as the score. A heavy blur or a shaky, watermarked copy is far from its original for the CNN (the
    original ranks 30-70th in a Holidays-sized library) and next to it for the thumbnails;
    verification then decides."""
    from searcher.verify import probe_views

    k = THUMBNAIL_EXTRAS if k is None else k
    if k <= 0:
        return []
    index = lib.thumbnail_index()
    exclude = [*(x.image_id for x in hits), *([skip] if skip else [])]
    best: dict[int, float] = {}
    for feats in probe_views(cache, probe):  # the probe, and the picture inside its frame if any
        if feats.thumb is None:
            continue
        h, w = feats.shape
        for i, correlation in index.search(feats.thumb, w / h, k, exclude=exclude):
            best[i] = max(best.get(i, -1.0), correlation)
    found = sorted(best.items(), key=lambda item: -item[1])[:k]
    if not found:
        return []
    ids = [i for i, _ in found]
    rows = lib._rows_by_id(ids)
    with lib.sessions() as session:
        stored = store.vectors_for(session, model.id, ids)
    view = np.atleast_2d(probe_vector)[0]
    return [
        Hit(0, rows[i].path, float(view @ stored[i]), rows[i].width, rows[i].height, i)
        for i in ids
        if i in rows and i in stored
    ]


def query(
    lib: Library,
    probes: Sequence[str | os.PathLike[str]],
    k: int = 10,
    *,
    backbone: str | None = None,
    pooling: str | None = None,
    include_self: bool = False,
    invariant: bool | str | Sequence[str] | None = None,
    expand: bool | None = None,
    augment: bool | None = None,
    preset: str | None = None,
    verify: int | None = None,
) -> list[QueryResult]:
    """Nearest neighbours of each probe image (files or folders of images), best first.

    A probe that is already indexed is embedded again like a new photo (its turned views and
    regional probes rank better than its stored vector: Holidays mAP 0.878 -> 0.922, README), unless
    the query asks for the upright view only (``invariant="none"`` or ``False``, or a preset without
    turned views or regions, as ``"category"``): then, when the file is unchanged (same path, size and
    mtime), its stored vector is reused and no network is loaded. The probe's own file is left out
    of its results unless ``include_self``.

    Retrieval techniques (:mod:`searcher.rerank`): ``preset`` ``"instance"`` (default: the same
    scene, object or photo) or ``"category"`` (the same kind of thing) picks the defaults of the
    options below (:data:`searcher.rerank.PRESETS`).
    ``invariant`` matches rotated copies: ``None`` (default) is the preset's (instance: a probe is
    embedded in its four 90-degree rotations, and, when it has a solid frame, the same views of its
    inside, and each image keeps its best score); ``True``/``"rotations"``, ``"all"`` (rotations and
    flips) or ``False``/``"none"`` (the upright view: an indexed probe's stored vector) force a choice.
    ``augment``: database-side augmentation (DBA) of the
    shortlist; ``expand``: alpha query expansion. ``Hit.score`` stays the plain cosine
    similarity (of the probe's view that matched); re-ranking only changes the order.

    ``verify``: re-rank the first ``verify`` results by pixel verification (SIFT matches, a
    similarity transform, aligned pixel correlation: :mod:`searcher.verify`, as ``searcher
    duplicates`` confirms copies): copies first (at the duplicates threshold), then results that a
    homography ties to the probe (a photo of a print, another shot of a facade), then the rest;
    ``Hit.verified`` holds the score, ``Hit.inliers`` the homography's inliers of those that are not
    copies. It finds the original of an edited copy (near-duplicate recall@1 0.961 -> 0.998 in the
    README) for about 7-15 ms per verified result. ``None`` (default): as the preset says
    (:attr:`searcher.rerank.Preset.verify_top`: instance, the first 10 of every query); ``0``: never.
    """
    from searcher import rerank

    chosen = rerank.preset(preset)
    settings = rerank.settings(expand=expand, augment=augment, preset_name=chosen.name)
    kinds_new = rerank.invariance_kinds(chosen.invariant if invariant is None else invariant)
    model = lib.find_model(backbone, pooling)
    lib.vector_index(model)  # loaded (and reconciled) before any network is built
    # regional probes: only for the average pooling the global vectors use (others: global only)
    regional = chosen.regional_margin is not None and model.pooling == "avg"
    # an indexed probe is embedded again like a new photo (turned views, regional probes: Holidays mAP
    # 0.878 -> 0.922, README) unless the upright view is all the query asks for: ``invariant="none"``
    # (the fast path: its stored vector, no network), or a preset with neither
    reuse_stored = len(kinds_new) == 1 and (invariant is not None or not regional)
    probe_paths: list[str] = []
    for probe in probes:
        p = absolute(probe)
        if os.path.isdir(p):
            probe_paths.extend(e.path for e in discover([p], exclude=[lib.root]))
        else:
            probe_paths.append(p)
    vectors: dict[str, np.ndarray] = {}
    probe_regions: dict[str, np.ndarray] = {}  # a new probe's region vectors (searcher.regions)
    errors: dict[str, str] = {}
    embedded: set[str] = set()
    self_ids: dict[str, int] = {}
    with lib.sessions() as session:
        for p in probe_paths:
            row = session.execute(select(ImageRow).where(ImageRow.path == p)).scalar_one_or_none()
            if row is None:
                continue
            self_ids[p] = row.id
            if not reuse_stored:
                continue  # embedded below like a new photo: turned views and regions
            try:
                entry = fingerprint(p)
            except OSError:
                continue
            if (row.size, row.mtime_ns, row.status) == (entry.size, entry.mtime_ns, STATUS_OK):
                found = store.vectors_for(session, model.id, [row.id])
                if row.id in found:
                    vectors[p] = found[row.id][None]
    todo = []
    for p in probe_paths:
        if p in vectors:
            continue
        if os.path.exists(p):
            todo.append(p)
        else:
            errors[p] = "no such file"
    if todo:
        from searcher.pipeline import batched, decode_stream  # decoding (Pillow) only for probes not indexed

        embedder = lib.embedder_for(model)
        stream = decode_stream(todo, lambda p: p, embedder.input_size, window=64)
        for batch in batched(stream, 32):
            for d in batch:
                if d.error is not None:
                    errors[d.item] = d.error
            good = [d for d in batch if d.pixels is not None]
            if good:
                trim = chosen.trim and len(kinds_new) > 1  # invariant probes: also without a frame
                views = [
                    rerank.probe_views(d.pixels, kinds_new, trim, full_picture(d.item, embedder.input_size))
                    for d in good
                ]
                stacked = np.stack([v for vs in views for v in vs])
                if regional:  # one forward pass: the global vectors are the map's average
                    maps = embedder.feature_maps(stacked)
                    out = regions.global_vectors(maps)
                else:
                    out = embedder.embed(stacked)
                start = 0
                for d, vs in zip(good, views, strict=True):
                    vectors[d.item] = out[start : start + len(vs)]
                    if regional:  # the probe's regions, and those of the picture inside its frame if any
                        inside = [start + len(kinds_new)] if len(vs) > len(kinds_new) else []
                        probe_regions[d.item] = regions.region_vectors(maps[[start, *inside]]).reshape(
                            -1, maps.shape[-1]
                        )
                    start += len(vs)
                    embedded.add(d.item)
    ok = [p for p in probe_paths if p in vectors]
    results: dict[str, list[Hit]] = {}
    if ok:
        exclude = [None if include_self else self_ids.get(p) for p in ok]
        top = chosen.verify_top if verify is None else verify
        gap = chosen.verify_gap if verify is None else float("inf")
        deeper = chosen.verify_deeper if top > 0 and verify is None else 0  # the default looks deeper when it must
        found = lib.search_probes(
            [vectors[p] for p in ok], max(k, top + deeper) if deeper else k, model=model, exclude=exclude,
            settings=settings, probe_regions=[probe_regions.get(p) for p in ok],
            regional_margin=chosen.regional_margin,
        )  # fmt: skip
        results = dict(zip(ok, found, strict=True))
        todo_verify = {p for p, hits in results.items() if rerank.needs_verification([h.score for h in hits], top, gap)}
        if todo_verify:
            from searcher.duplicates import thresholds_for

            copy_at = thresholds_for(model).verified
            cache = lib.verify_cache()  # queries of one open library share their results' features
            for p in todo_verify:
                skip = None if include_self else self_ids.get(p)
                extra = thumbnail_candidates(lib, model, p, vectors[p], results[p][:k], cache, skip)
                results[p] = verified_order(p, results[p], top, cache, copy_at, extra, deeper)
        results = {p: hits[:k] for p, hits in results.items()}
    return [QueryResult(p, results.get(p, []), errors.get(p), embedded=p in embedded) for p in probe_paths]


def full_picture(path: str, input_size: tuple[int, int]) -> Callable[[], Image.Image | None]:
    """A function that decodes ``path`` large enough to cut the picture inside its frame at full
    detail (:func:`searcher.frames.inner_picture`; called only for probes that have a frame), or
    returns None when it can no longer be read (then the model input is cut instead)."""

    def load() -> Image.Image | None:
        from searcher.decode import DecodeError, open_image

        try:
            return open_image(path, min_side=4 * max(input_size)).image
        except (DecodeError, OSError):
            return None

    return load


def search_vectors(
    lib: Library,
    vectors: np.ndarray,
    k: int = 10,
    *,
    model: ModelRow | None = None,
    exclude: Sequence[int | None] | None = None,
) -> list[list[Hit]]:
    """The ``k`` indexed images nearest to each row of ``vectors`` (unit vectors of ``model``).

    ``model`` defaults to the library's default model; ``exclude[i]`` is an image id to leave
    out of row ``i``'s results (the probe itself). No network is loaded.
    """
    model = model or lib.find_model()
    matrix = np.asarray(vectors, np.float32).reshape(-1, model.dim)
    if len(matrix) == 0:
        return []
    scores, ids = lib.vector_index(model).search(matrix, k + 1)
    rows = lib._rows_by_id({int(i) for i in ids.ravel() if i >= 0})
    out: list[list[Hit]] = []
    for n, (srow, irow) in enumerate(zip(scores, ids, strict=True)):
        skip = exclude[n] if exclude is not None else None
        hits: list[Hit] = []
        for s, i in zip(srow, irow, strict=True):
            if i < 0 or i == skip or int(i) not in rows:
                continue
            r = rows[int(i)]
            hits.append(Hit(len(hits) + 1, r.path, float(s), r.width, r.height, int(i)))
        out.append(hits[:k])
    return out


def search_probes(
    lib: Library,
    probes: Sequence[np.ndarray],
    k: int = 10,
    *,
    model: ModelRow | None = None,
    exclude: Sequence[int | None] | None = None,
    settings: Any = None,
    probe_regions: Sequence[np.ndarray | None] | None = None,
    regional_margin: float | None = None,
) -> list[list[Hit]]:
    """The ``k`` indexed images nearest to each probe, given as a (variants, dim) array of unit
    vectors (rotated views of one image), with re-ranking (:func:`searcher.rerank.retrieve`;
    ``settings`` defaults to :func:`searcher.rerank.settings`). ``exclude[i]`` is an image id to
    leave out of probe ``i``'s results. ``Hit.score`` is the plain cosine similarity (of the
    view that ranked the hit); the order is the re-ranked one. No network is loaded.
    ``probe_regions[i]``: region vectors of probe ``i`` (:mod:`searcher.regions`), searched against
    the global vectors too when ``regional_margin`` is set; an image keeps
    ``max(global, regional - regional_margin)``."""
    from searcher import rerank

    model = model or lib.find_model()
    settings = rerank.settings() if settings is None else settings
    index = lib.vector_index(model)
    cache = _neighbour_cache(lib, model, index, settings)
    ranked = []
    for n, variants in enumerate(probes):
        skip = exclude[n] if exclude is not None else None
        skipped = [] if skip is None else [skip]
        r = rerank.retrieve(index.search, cache.vectors, variants, k + 1, settings, exclude=skipped, cache=cache)
        own = probe_regions[n] if probe_regions is not None else None
        if own is not None and regional_margin is not None and len(index):
            probe = rerank.l2_normalise(np.atleast_2d(np.asarray(variants, np.float32)))[0]
            found = regions.regional_scores(probe, own, None, index.search, REGIONAL_DEPTH, skipped)
            r = regions.merge_regional(r, found, k + 1, regional_margin)
        ranked.append(r)
    rows = lib._rows_by_id({int(i) for r in ranked for i in r.ids})
    out: list[list[Hit]] = []
    for variants, r in zip(probes, ranked, strict=True):
        views = np.atleast_2d(variants)[r.variant]  # the view that ranked each hit
        plain = np.einsum("nd,nd->n", views, cache.vectors(r.ids)) if len(r.ids) else r.scores
        hits: list[Hit] = []
        for s, i in zip(plain, r.ids, strict=True):
            if int(i) in rows and len(hits) < k:
                row = rows[int(i)]
                hits.append(Hit(len(hits) + 1, row.path, float(s), row.width, row.height, int(i)))
        out.append(hits)
    return out


def _neighbour_cache(lib: Library, model: ModelRow, index: VectorIndex, settings: Any) -> Any:
    """Stored vectors and DBA neighbour lists, kept while the model's vectors do not change."""
    from searcher import rerank

    with lib.sessions() as session:
        revision = session.get(ModelRow, model.id).revision  # type: ignore[union-attr]
    caches = lib.__dict__.setdefault("_neighbour_caches", {})
    token = (revision, len(index), settings.dba_k)
    held = caches.get(model.key)
    if held is None or held[0] != token:

        def reconstruct(ids: np.ndarray) -> np.ndarray:
            return np.stack([index.reconstruct(int(i)) for i in ids])

        held = (token, rerank.NeighbourCache(index.search, reconstruct, settings.dba_k + 2))
        caches[model.key] = held
    return held[1]
