"""Candidate pairs for duplicate detection: each unit's nearest CNN neighbours (FAISS, in batches),
the nearest thumbnails (blurred copies, which the CNN sees as other pictures), and with ``--rotations``
the neighbours of each picture turned by 90 and 180 degrees (cached)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import faiss
import numpy as np

from searcher import decisions
from searcher.decode import DecodeError
from searcher.store import ModelRow

if TYPE_CHECKING:
    from searcher.dup_keep import _Unit
    from searcher.library import Library, Progress

DEFAULT_K = 10
DEFAULT_CANDIDATE_COSINE = 0.5  # below this the CNN says "different picture": not verified
IVF_MIN = 50_000  # exact search below this many vectors, inverted lists above
REDUCED_DIM = 128  # candidate search on large libraries runs on PCA-reduced vectors, then re-scores exactly
OVERSEARCH = 3  # approximate search: fetch this many times k neighbours, keep the k best by exact cosine
ROTATION_TURNS = (1, 2)  # quarter turns probed: 90 and 180 degrees (90 from the other side covers 270)
ROTATION_K = 5  # nearest pictures of each turned probe that become candidates
THUMB_K = 10  # nearest thumbnails of each picture that may become candidates
THUMB_CANDIDATE = 0.9  # thumbnail correlation from which a pair of the same aspect ratio is verified
THUMB_MAX = 200_000  # above this many pictures the thumbnail search (exact, O(n^2)) is skipped
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


def thumbnail_pairs(
    thumbs: np.ndarray,
    aspects: np.ndarray,
    k: int = THUMB_K,
    min_ncc: float = THUMB_CANDIDATE,
    aspect_tol: float = 0.02,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) among each other's ``k`` nearest thumbnails (rows of ``thumbs``: zero-mean, unit-norm
    16 x 16 grey thumbnails, see :attr:`searcher.verify.Features.thumb`; rows of zeros for none) with
    correlation >= ``min_ncc`` and aspect ratios (width / height) within ``aspect_tol`` of each other.

    A heavy blur moves a picture's CNN vector far from the original's (cosine 0.4), but hardly changes
    its thumbnail: such copies become candidates here, and verification compares them as they lie.
    Exact search (FAISS, inner product); skipped above :data:`THUMB_MAX` pictures.
    """
    thumbs = np.ascontiguousarray(thumbs, dtype=np.float32)
    n = len(thumbs)
    if n < 2 or n > THUMB_MAX:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    index = faiss.IndexFlatIP(thumbs.shape[1])
    index.add(thumbs)
    i, j, s = _knn_pairs(index, None, thumbs, thumbs, k, min_ncc, 4096, skip_self=True)
    ratio = aspects[i] / aspects[j]
    keep = np.abs(ratio - 1.0) <= aspect_tol
    return _unique_pairs(i[keep], j[keep], s[keep], n)


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
