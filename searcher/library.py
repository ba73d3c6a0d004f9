"""The library API that the CLI is a thin layer over.

    from searcher import Library
    with Library.open("~/photos-library") as lib:
        report = lib.index(["~/Pictures"])
        for hit in lib.query(["cat.jpg"], k=5)[0].results:
            print(hit.score, hit.path)

A library is one folder: ``library.db`` (SQLite, the source of truth: files,
their metadata and every vector) and ``indexes/<model key>.faiss`` (one FAISS
index per embedding model, rebuilt from SQLite whenever it is missing or stale).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from platformdirs import user_data_dir
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from searcher import store
from searcher.backbones.registry import DEFAULT_BACKBONE, get_backbone
from searcher.embed import ModelIdentity, model_identity
from searcher.files import FileEntry, absolute, content_hash, discover, fingerprint, looks_like_image, read_error
from searcher.locking import WriteLock
from searcher.pipeline import Batch, batched, decode_stream, default_workers, prefetch_batches
from searcher.store import STATUS_FAILED, STATUS_OK, EmbeddingRow, ImageRow, Meta, ModelRow
from searcher.vector_index import INDEX_TYPES, VectorIndex, choose_kind

if TYPE_CHECKING:
    from searcher.embed import Embedder
    from searcher.verify import FeatureCache

DB_NAME = "library.db"
INDEX_DIR = "indexes"
LOCK_NAME = "write.lock"
SAVE_EVERY_S = 60.0


class LibraryError(RuntimeError):
    """A problem a user can act on (shown as one line by the CLI)."""


class LibraryNotFound(LibraryError):
    pass


def default_library_path() -> Path:
    """``$SEARCHER_LIBRARY``, else the per-user data folder (XDG data home on Linux)."""
    env = os.environ.get("SEARCHER_LIBRARY")
    if env:
        return Path(env).expanduser()
    return Path(user_data_dir("searcher", appauthor=False)) / "library"


class Progress:
    """Hooks for long work; the CLI passes one that draws progress bars. The default is silent."""

    def begin(self, label: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def end(self) -> None: ...


@dataclass
class IndexReport:
    """What one ``index`` run did."""

    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    moved: int = 0
    failed: int = 0
    embedded: int = 0
    reused: int = 0  # new files whose content was already indexed: vector copied, not computed
    backbone: str = ""
    model_key: str = ""
    seconds: float = 0.0
    embed_seconds: float = 0.0  # decoding + embedding only, model loading excluded
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["failures"] = [{"path": p, "error": e} for p, e in self.failures]
        return out


@dataclass
class Hit:
    rank: int
    path: str
    score: float
    width: int | None
    height: int | None
    image_id: int
    verified: float | None = None  # pixel verification score (``query(verify=N)``): 1 = same picture


@dataclass
class QueryResult:
    query: str
    results: list[Hit]
    error: str | None = None
    embedded: bool = False  # False when the probe's stored vector was reused

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query,
            "results": [
                {
                    "rank": h.rank,
                    "path": h.path,
                    "score": round(h.score, 6),
                    "width": h.width,
                    "height": h.height,
                    **({} if h.verified is None else {"verified": round(h.verified, 4)}),
                }
                for h in self.results
            ],
        }
        if self.error:
            out["error"] = self.error
        return out


def verified_order(probe: str, hits: list[Hit], top: int, cache: FeatureCache) -> list[Hit]:
    """``hits`` with the first ``top`` re-ranked by pixel verification against ``probe`` (best
    first, ties keep their order) and their ``verified`` score set; the rest follow unchanged."""
    from searcher.verify import verified_scores

    head, tail = hits[:top], hits[top:]
    for hit, score in zip(head, verified_scores(probe, [h.path for h in head], cache), strict=True):
        hit.verified = score
    head.sort(key=lambda h: (-(h.verified or 0.0), h.rank))
    for rank, hit in enumerate([*head, *tail], 1):
        hit.rank = rank
    return [*head, *tail]


@dataclass
class _Work:
    """One file to decode and embed."""

    entry: FileEntry
    content_hash: str
    existing_id: int | None = None  # set when the row exists and only this model's vector is missing


class Library:
    """An image library on disk. Open with :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_path = root / DB_NAME
        self.engine = store.open_engine(self.db_path)
        store.init_schema(self.engine)
        self.sessions = store.make_sessionmaker(self.engine)
        self._lock = WriteLock(root / LOCK_NAME)
        self._indexes: dict[str, VectorIndex] = {}
        self._embedders: dict[str, Embedder] = {}

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> Library:
        """Open the library at ``path`` (default: :func:`default_library_path`), creating it if asked."""
        root = Path(path).expanduser() if path is not None else default_library_path()
        root = Path(absolute(root))
        if not (root / DB_NAME).exists():
            if not create:
                raise LibraryNotFound(
                    f"no library at {root}; create one with `searcher index FOLDER` "
                    "(or point --library / SEARCHER_LIBRARY at an existing one)"
                )
            if root.exists() and not root.is_dir():
                raise LibraryError(f"{root} exists and is not a folder")
            root.mkdir(parents=True, exist_ok=True)
            (root / INDEX_DIR).mkdir(exist_ok=True)
        return cls(root)

    def close(self) -> None:
        self._lock.release()
        self._indexes.clear()
        self._embedders.clear()
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models ------------------------------------------------------------------------------
    def _get_meta(self, session: Session, key: str) -> str | None:
        row = session.get(Meta, key)
        return row.value if row else None

    def _set_meta(self, session: Session, key: str, value: str) -> None:
        row = session.get(Meta, key)
        if row is None:
            session.add(Meta(key=key, value=value))
        else:
            row.value = value

    def _model_row(self, session: Session, identity: ModelIdentity, create: bool) -> ModelRow | None:
        row = session.execute(select(ModelRow).where(ModelRow.key == identity.key)).scalar_one_or_none()
        if row is None and create:
            row = ModelRow(
                key=identity.key,
                backbone=identity.backbone,
                weights_sha256=identity.weights_sha256,
                weights_source=identity.weights_source,
                preprocess_version=identity.preprocess_version,
                pooling=identity.pooling,
                dim=identity.dim,
                revision=0,
            )
            session.add(row)
            session.flush()
            if self._get_meta(session, "default_model") is None:
                self._set_meta(session, "default_model", identity.key)
        return row

    def models(self) -> list[ModelRow]:
        with self.sessions() as session:
            return list(session.execute(select(ModelRow).order_by(ModelRow.id)).scalars())

    def find_model(self, backbone: str | None = None, pooling: str | None = None) -> ModelRow:
        """The model a query should use: the library's default, or the named backbone's vectors."""
        with self.sessions() as session:
            if backbone is None:
                key = self._get_meta(session, "default_model")
                if key is None:
                    raise LibraryError("this library has no indexed images yet; run `searcher index FOLDER`")
                row = session.execute(select(ModelRow).where(ModelRow.key == key)).scalar_one()
                if pooling is None or row.pooling == pooling:
                    return row
                backbone = row.backbone
            name = get_backbone(backbone).name
            stmt = select(ModelRow).where(ModelRow.backbone == name)
            if pooling is not None:
                stmt = stmt.where(ModelRow.pooling == pooling)
            rows = list(session.execute(stmt).scalars())
            if not rows:
                raise LibraryError(
                    f"no images in this library were indexed with {name}"
                    + (f" and {pooling} pooling" if pooling else "")
                    + f"; run `searcher index --backbone {name} FOLDER` first"
                )
            counts = {r.id: session.scalar(select(func.count()).where(EmbeddingRow.model_id == r.id)) for r in rows}
            return max(rows, key=lambda r: (counts[r.id], r.id))

    def embedder_for(self, model: ModelRow) -> Embedder:
        """A loaded network that produces vectors comparable with ``model``'s (built once, kept)."""
        if model.key not in self._embedders:
            from searcher.embed import cached_embedder

            weights: str | None = model.weights_source
            if weights == "random":
                weights = None
            elif weights not in (None, "imagenet") and not os.path.isfile(weights):
                weights = "imagenet"  # e.g. the pip package moved to another virtualenv
            embedder = cached_embedder(model.backbone, weights=weights, pooling=model.pooling)
            if embedder.identity.key != model.key:
                raise LibraryError(
                    f"the weights of {model.backbone} on this machine differ from those that built this "
                    f"library's vectors ({embedder.identity.key} != {model.key}); pass the same --weights"
                )
            self._embedders[model.key] = embedder
        return self._embedders[model.key]

    def vector_index(self, model: ModelRow) -> VectorIndex:
        """The model's FAISS index, loaded from disk and reconciled with SQLite (cached per session)."""
        cached = self._indexes.get(model.key)
        if cached is not None:
            return cached
        path = self.index_path(model)
        with self.sessions() as session:
            db_model = session.get(ModelRow, model.id)
            assert db_model is not None
            revision = db_model.revision
            index, state = None, None
            if path.exists():
                try:
                    index, state = VectorIndex.load(path, model.dim)
                    if state is not None and VectorIndex.file_checksum(path) != state.sha256:
                        raise ValueError("checksum mismatch")  # damaged, or replaced while we read it
                except (ValueError, OSError):
                    index, state = None, None  # rebuilt below from the stored vectors
            if index is None:
                index = VectorIndex(model.dim)
            if state is None or state.revision != revision or state.count != len(index):
                expected = store.vector_ids(session, model.id)

                def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    found = store.vectors_for(session, model.id, ids.tolist())
                    keys = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
                    vecs = np.stack(list(found.values())) if found else np.zeros((0, model.dim), np.float32)
                    return keys, vecs

                index.reconcile(expected, fetch)
        self._indexes[model.key] = index
        return index

    def index_path(self, model: ModelRow) -> Path:
        return self.root / INDEX_DIR / f"{model.key}.faiss"

    def _save_index(self, model: ModelRow, index: VectorIndex) -> None:
        # Reconciled first, so the sidecar never vouches for an index that missed a commit (a Ctrl-C
        # between a batch's commit and its addition to the in-memory index, for example).
        with self.sessions() as session:
            revision = session.get(ModelRow, model.id).revision  # type: ignore[union-attr]
            expected = store.vector_ids(session, model.id)
            index.reconcile(expected, lambda ids: self._stored_vectors(session, model, ids))
        index.save(self.index_path(model), revision)

    @staticmethod
    def _stored_vectors(session: Session, model: ModelRow, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = store.vectors_for(session, model.id, ids.tolist())
        keys = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
        vecs = np.stack(list(found.values())) if found else np.zeros((0, model.dim), np.float32)
        return keys, vecs

    def _remove_temp_files(self) -> None:
        """Temporary files of a FAISS save that was killed (only a writer saves, and this one holds the lock)."""
        for tmp in (self.root / INDEX_DIR).glob(".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    # --- indexing ----------------------------------------------------------------------------
    def index(
        self,
        roots: Sequence[str | os.PathLike[str]],
        *,
        backbone: str | None = None,
        weights: str | None = None,
        pooling: str = "avg",
        batch_size: int = 32,
        workers: int | None = None,
        retry_failed: bool = False,
        wait: float = 0.0,
        max_pixels: int | None = None,
        progress: Progress | None = None,
        index_type: str | None = None,
    ) -> IndexReport:
        """Bring the library up to date with the image files under ``roots``.

        ``backbone``/``weights`` default to those of the library's default model
        (EfficientNet-Lite0 with its bundled ImageNet weights in a new library);
        ``weights`` is ``"imagenet"``, a file path, or ``"none"`` for random init.
        Only new and changed files are embedded; files gone from disk leave the
        library; moved or renamed files (same content) keep their vectors; copies
        of already indexed content reuse the stored vector. Work is committed every
        ``batch_size`` images, so an interrupted run loses at most one batch and the
        next run finishes the job.

        ``index_type`` (``auto``, ``flat``, ``hnsw``, ``ivfpq``; see :mod:`searcher.vector_index`)
        is remembered per model; ``None`` keeps the model's current choice (``auto`` at first).
        """
        if index_type is not None and index_type not in INDEX_TYPES:
            raise LibraryError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
        progress = progress or Progress()
        started = time.monotonic()
        root_paths = [Path(absolute(r)) for r in roots]
        for r in root_paths:
            if not r.exists() and not r.is_symlink():
                raise LibraryError(f"no such file or folder: {r}")
        self._lock.acquire(wait)
        try:
            self._remove_temp_files()
            default = self._default_model()
            spec = get_backbone(backbone or (default.backbone if default else DEFAULT_BACKBONE))
            if weights is None:
                weights = "imagenet"
                if default is not None and default.backbone == spec.name and default.weights_source != "imagenet":
                    weights = "none" if default.weights_source == "random" else default.weights_source
            if weights == "none":
                weights = None
            embedder: Embedder | None = None
            try:
                identity = model_identity(spec, weights, pooling)
            except FileNotFoundError:  # Keras weights not cached yet: building downloads them
                from searcher.embed import Embedder

                embedder = Embedder(spec, weights=weights, pooling=pooling)
                identity = embedder.identity
            with self.sessions() as session, session.begin():
                model = self._model_row(session, identity, create=True)
                assert model is not None
            if embedder is not None:
                self._embedders[model.key] = embedder
            report = IndexReport(backbone=spec.name, model_key=model.key)
            plan = self._plan(root_paths, model, report, retry_failed, progress)
            index = self.vector_index(model)
            self._apply_plan_removals(plan, model, index, report)
            try:
                if plan.to_embed:
                    self._embed_and_store(
                        plan.to_embed, model, index, report, batch_size, workers, max_pixels, progress
                    )
                self._add_late_copies(plan, model, index, report)
                self._apply_index_type(model, index, index_type, progress)
            except KeyboardInterrupt:
                report.interrupted = True
            finally:
                self._save_index(model, index)
            report.seconds = time.monotonic() - started
            if report.interrupted:
                raise IndexInterrupted(report)
            return report
        finally:
            self._lock.release()

    def index_type(self, model: ModelRow) -> str:
        """The index type asked for ``model`` (``auto`` unless ``index --index-type`` chose one)."""
        with self.sessions() as session:
            return self._get_meta(session, f"index_type:{model.key}") or "auto"

    def _apply_index_type(self, model: ModelRow, index: VectorIndex, requested: str | None, progress: Progress) -> None:
        """Record the requested index type and (re)build the approximate index when the size calls for it."""
        if requested is not None:
            with self.sessions() as session, session.begin():
                self._set_meta(session, f"index_type:{model.key}", requested)
        wanted = choose_kind(requested or self.index_type(model), len(index), index.kind)
        if wanted != index.kind or index.kind != "flat":
            progress.begin(f"Building the {wanted} index", 0)
            index.set_kind(wanted)  # no-op unless the type changes or the index outgrew its training
            progress.end()

    def _default_model(self) -> ModelRow | None:
        with self.sessions() as session:
            key = self._get_meta(session, "default_model")
            if key is None:
                return None
            return session.execute(select(ModelRow).where(ModelRow.key == key)).scalar_one_or_none()

    def _plan(
        self,
        roots: list[Path],
        model: ModelRow,
        report: IndexReport,
        retry_failed: bool,
        progress: Progress,
    ) -> _Plan:
        plan = _Plan()
        unreadable: list[tuple[str, str]] = []
        progress.begin("Scanning", 0)
        entries: list[FileEntry] = []
        exclude = [self.root]
        for entry in discover(roots, exclude=exclude, on_error=lambda p, r: unreadable.append((p, r))):
            entries.append(entry)
            progress.advance()
        progress.end()

        with self.sessions() as session:
            existing = {row.path: row for row in store.rows_under(session, roots)}
            have_vector = set(
                session.execute(select(EmbeddingRow.image_id).where(EmbeddingRow.model_id == model.id)).scalars()
            )
        to_hash: list[tuple[FileEntry, ImageRow | None]] = []
        for entry in entries:
            row = existing.pop(entry.path, None)
            if row is None:
                to_hash.append((entry, None))
            elif row.size == entry.size and row.mtime_ns == entry.mtime_ns:
                if row.status == STATUS_FAILED:
                    if retry_failed:
                        plan.delete_ids.append(row.id)
                        to_hash.append((entry, None))
                    else:
                        report.unchanged += 1
                        report.failed += 1
                elif row.id not in have_vector:
                    plan.to_embed.append(_Work(entry, row.content_hash or "", existing_id=row.id))
                    report.unchanged += 1
                else:
                    report.unchanged += 1
            else:
                to_hash.append((entry, row))
        # Paths that were indexed and can no longer be read (deleted, or now a dangling link).
        vanished = list(existing.values())

        hashes = self._hash_all([e for e, _ in to_hash], progress)
        vanished_by_hash: dict[str, list[ImageRow]] = {}
        for row in vanished:
            if row.status == STATUS_OK and row.content_hash:
                vanished_by_hash.setdefault(row.content_hash, []).append(row)

        pending_hashes: set[str] = set()
        with self.sessions() as session:
            for (entry, row), digest in zip(to_hash, hashes, strict=True):
                if digest is None:  # unreadable between scan and hash
                    unreadable.append((entry.path, read_error(entry.path)))
                    if row is not None:
                        plan.delete_ids.append(row.id)
                    continue
                if row is not None:
                    if row.content_hash == digest and row.status == STATUS_OK:
                        plan.touch.append((row.id, entry))  # same bytes, new mtime
                        report.unchanged += 1
                        if row.id not in have_vector:
                            plan.to_embed.append(_Work(entry, digest, existing_id=row.id))
                        continue
                    plan.delete_ids.append(row.id)
                    plan.to_embed.append(_Work(entry, digest))
                    report.changed += 1
                    continue
                moved_from = vanished_by_hash.get(digest)
                if moved_from:
                    old = moved_from.pop()
                    vanished.remove(old)
                    plan.moves.append((old.id, entry))
                    report.moved += 1
                    if old.id not in have_vector:
                        plan.to_embed.append(_Work(entry, digest, existing_id=old.id))
                    continue
                twin = session.execute(
                    select(ImageRow.id)
                    .join(EmbeddingRow, EmbeddingRow.image_id == ImageRow.id)
                    .where(
                        ImageRow.content_hash == digest,
                        ImageRow.status == STATUS_OK,
                        EmbeddingRow.model_id == model.id,
                    )
                    .limit(1)
                ).scalar_one_or_none()
                report.new += 1
                if twin is not None:
                    plan.copies.append((twin, entry, digest))
                elif digest in pending_hashes:  # a second copy of content new in this run
                    plan.late_copies.append((entry, digest))
                else:
                    pending_hashes.add(digest)
                    plan.to_embed.append(_Work(entry, digest))
        plan.delete_ids.extend(row.id for row in vanished)
        report.removed = len(vanished)
        plan.unreadable = unreadable
        return plan

    def _hash_all(self, entries: list[FileEntry], progress: Progress) -> list[str | None]:
        def one(entry: FileEntry) -> str | None:
            try:
                return content_hash(entry.path)
            except OSError:
                return None

        if not entries:
            return []
        progress.begin("Hashing", len(entries))
        out: list[str | None] = []
        with ThreadPoolExecutor(max_workers=4) as pool:
            for digest in pool.map(one, entries):
                out.append(digest)
                progress.advance()
        progress.end()
        return out

    def _apply_plan_removals(self, plan: _Plan, model: ModelRow, index: VectorIndex, report: IndexReport) -> None:
        """Commit deletions, moves, touches, reused copies and unreadable files in one transaction."""
        with self.sessions() as session, session.begin():
            for start in range(0, len(plan.delete_ids), 500):
                part = plan.delete_ids[start : start + 500]
                session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(part)))
                session.execute(delete(ImageRow).where(ImageRow.id.in_(part)))
            session.flush()
            for image_id, entry in plan.moves + plan.touch:
                row = session.get(ImageRow, image_id)
                assert row is not None
                row.path, row.size, row.mtime_ns = entry.path, entry.size, entry.mtime_ns
            reused_ids = [self._copy_row(session, twin_id, entry, digest) for twin_id, entry, digest in plan.copies]
            report.reused += len(reused_ids)
            for path, reason in plan.unreadable:
                if not looks_like_image(path):
                    continue
                self._record_failure(session, path, reason)
                report.failed += 1
                report.failures.append((path, reason))
            if plan.delete_ids or reused_ids:
                for m in session.execute(select(ModelRow)).scalars():
                    m.revision += 1
            session.flush()
            vectors = store.vectors_for(session, model.id, reused_ids)
        index.remove(plan.delete_ids)
        if vectors:
            ids = np.fromiter(vectors.keys(), dtype=np.int64, count=len(vectors))
            index.add(ids, np.stack(list(vectors.values())))

    def _copy_row(self, session: Session, twin_id: int, entry: FileEntry, digest: str) -> int:
        """Add a row for ``entry``, a byte-identical copy of image ``twin_id``, reusing its vectors."""
        twin = session.get(ImageRow, twin_id)
        assert twin is not None
        row = ImageRow(
            path=entry.path, size=entry.size, mtime_ns=entry.mtime_ns, content_hash=digest,
            width=twin.width, height=twin.height, format=twin.format, pixel_hash=twin.pixel_hash,
            status=STATUS_OK,
        )  # fmt: skip
        session.add(row)
        session.flush()
        for emb in session.execute(select(EmbeddingRow).where(EmbeddingRow.image_id == twin_id)).scalars():
            session.add(EmbeddingRow(image_id=row.id, model_id=emb.model_id, vector=emb.vector))
        return row.id

    def _add_late_copies(self, plan: _Plan, model: ModelRow, index: VectorIndex, report: IndexReport) -> None:
        """Copies of content first seen in this run: reuse the vector just computed (or record the failure)."""
        if not plan.late_copies:
            return
        added: list[int] = []
        with self.sessions() as session, session.begin():
            for entry, digest in plan.late_copies:
                twin = session.execute(
                    select(ImageRow).where(ImageRow.content_hash == digest, ImageRow.path != entry.path).limit(1)
                ).scalar_one_or_none()
                if twin is None:
                    continue  # the first copy was never committed (interrupted): the next run embeds it
                if twin.status != STATUS_OK:
                    self._record_failure(session, entry.path, twin.error or "unreadable", digest)
                    report.failed += 1
                    report.failures.append((entry.path, twin.error or "unreadable"))
                    continue
                added.append(self._copy_row(session, twin.id, entry, digest))
            store.bump_revision(session, model.id)
            vectors = store.vectors_for(session, model.id, added)
        report.reused += len(added)
        if vectors:
            index.add(
                np.fromiter(vectors.keys(), dtype=np.int64, count=len(vectors)),
                np.stack(list(vectors.values())),
            )

    def _record_failure(self, session: Session, path: str, reason: str, digest: str | None = None) -> None:
        """Mark ``path`` as failed with ``reason`` (its vectors, if any, are dropped)."""
        try:
            st = os.stat(path)
        except OSError:
            try:
                st = os.lstat(path)  # a dangling link: remember the link itself
            except OSError:
                st = None
        size, mtime = (st.st_size, st.st_mtime_ns) if st else (0, 0)
        row = session.execute(select(ImageRow).where(ImageRow.path == path)).scalar_one_or_none()
        if row is not None and row.status == STATUS_OK:  # was fine, now unreadable: its vectors go
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id == row.id))
            for m in session.execute(select(ModelRow)).scalars():
                m.revision += 1
        if row is None:
            session.add(
                ImageRow(path=path, size=size, mtime_ns=mtime, content_hash=digest, status=STATUS_FAILED, error=reason)
            )
        else:
            row.size, row.mtime_ns, row.status, row.error = size, mtime, STATUS_FAILED, reason
            row.content_hash = digest

    def _embed_and_store(
        self,
        work: list[_Work],
        model: ModelRow,
        index: VectorIndex,
        report: IndexReport,
        batch_size: int,
        workers: int | None,
        max_pixels: int | None,
        progress: Progress,
    ) -> None:
        embedder = self.embedder_for(model)
        size = embedder.input_size
        progress.begin("Embedding", len(work))
        started = time.monotonic()
        saves = {"last": time.monotonic(), "cost": 0.0}

        def commit(batch: Batch[_Work], vectors: np.ndarray | None) -> None:
            """Store one embedded batch (SQLite, then FAISS); runs on the commit thread."""
            added_ids: list[int] = []
            with self.sessions() as session, session.begin():
                for i, d in enumerate(batch.good):
                    w, info = d.item, d.info
                    assert info is not None and vectors is not None
                    if w.existing_id is not None:
                        image_id = w.existing_id
                    else:
                        row = ImageRow(
                            path=w.entry.path, size=w.entry.size, mtime_ns=w.entry.mtime_ns,
                            content_hash=w.content_hash, width=info.width, height=info.height,
                            format=info.format, status=STATUS_OK,
                        )  # fmt: skip
                        session.add(row)
                        session.flush()
                        image_id = row.id
                    session.add(
                        EmbeddingRow(image_id=image_id, model_id=model.id, vector=store.vector_to_blob(vectors[i]))
                    )
                    added_ids.append(image_id)
                for d in batch.items:
                    if d.error is not None:
                        self._record_failure(session, d.item.entry.path, d.error, d.item.content_hash or None)
                        report.failed += 1
                        report.failures.append((d.item.entry.path, d.error))
                store.bump_revision(session, model.id)
            if added_ids:
                assert vectors is not None
                index.add(np.asarray(added_ids, np.int64), vectors)
            report.embedded += len(added_ids)
            progress.advance(len(batch))
            report.embed_seconds = time.monotonic() - started
            # a checkpoint for crash recovery; big indexes are saved less often (at most ~10% of the time)
            if time.monotonic() - saves["last"] > max(SAVE_EVERY_S, 10 * saves["cost"]):
                saving = time.monotonic()
                self._save_index(model, index)
                saves["last"] = time.monotonic()
                saves["cost"] = saves["last"] - saving

        # Three overlapping stages: decoding (worker threads) feeds the model (this thread), whose
        # output is committed on a commit thread while the model runs on the next batch. At most
        # one batch waits to be committed; an interrupted run still commits the batch it embedded.
        batches = prefetch_batches(
            work, lambda w: w.entry.path, size, batch_size,
            workers=workers or default_workers(gpu=embedder.gpu), max_pixels=max_pixels,
        )  # fmt: skip
        pending: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as committer:
            try:
                for batch in batches:
                    vectors = embedder.embed(batch.pixels) if batch.good else None
                    if pending is not None:
                        pending.result()  # raises what the commit raised
                    pending = committer.submit(commit, batch, vectors)
            finally:
                batches.close()  # stop decoding
                if pending is not None and sys.exc_info()[0] is None:
                    pending.result()
            # leaving the ``with`` waits for the last commit, whatever happened
        progress.end()

    # --- querying ----------------------------------------------------------------------------
    def query(
        self,
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
        verify: int = 0,
    ) -> list[QueryResult]:
        """Nearest neighbours of each probe image (files or folders of images), best first.

        A probe that is already indexed (same path, size and mtime) reuses its
        stored vector, so no network is loaded. The probe's own file is left out
        of its results unless ``include_self``.

        Retrieval techniques (:mod:`searcher.rerank`): ``preset`` ``"instance"`` (default: the same
        scene, object or photo) or ``"category"`` (the same kind of thing) picks the defaults of the
        options below (:data:`searcher.rerank.PRESETS`).
        ``invariant`` matches rotated copies: ``None`` (default) embeds a probe that needs the
        network anyway in its four 90-degree rotations (and, when it has a solid frame, the same
        views of its inside) and keeps each image's best score, while an indexed probe keeps its
        stored vector; ``True``/``"rotations"``, ``"all"`` (rotations and flips) or ``False``
        force a choice. ``augment``: database-side augmentation (DBA) of the
        shortlist; ``expand``: alpha query expansion. ``Hit.score`` stays the plain cosine
        similarity (of the probe's view that matched); re-ranking only changes the order.

        ``verify``: re-rank the first ``verify`` results by pixel verification (SIFT matches, a
        similarity transform, aligned pixel correlation: :mod:`searcher.verify`, as ``searcher
        duplicates`` confirms copies), best verified first; ``Hit.verified`` holds the score. It finds
        the original of an edited copy (near-duplicate recall@1 0.961 -> 0.998 in the README) for
        about 15 ms per verified result.
        """
        from searcher import rerank

        chosen = rerank.preset(preset)
        settings = rerank.settings(expand=expand, augment=augment, preset_name=chosen.name)
        kinds_new = rerank.invariance_kinds(chosen.invariant if invariant is None else invariant)
        kinds_stored = rerank.invariance_kinds(False if invariant is None else invariant)
        model = self.find_model(backbone, pooling)
        self.vector_index(model)  # loaded (and reconciled) before any network is built
        probe_paths: list[str] = []
        for probe in probes:
            p = absolute(probe)
            if os.path.isdir(p):
                probe_paths.extend(e.path for e in discover([p], exclude=[self.root]))
            else:
                probe_paths.append(p)
        vectors: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        embedded: set[str] = set()
        self_ids: dict[str, int] = {}
        with self.sessions() as session:
            for p in probe_paths:
                row = session.execute(select(ImageRow).where(ImageRow.path == p)).scalar_one_or_none()
                if row is None:
                    continue
                self_ids[p] = row.id
                try:
                    entry = fingerprint(p)
                except OSError:
                    continue
                if len(kinds_stored) > 1:
                    continue  # forced invariance: embed the probe's variants below
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
            embedder = self.embedder_for(model)
            stream = decode_stream(todo, lambda p: p, embedder.input_size, window=64)
            for batch in batched(stream, 32):
                for d in batch:
                    if d.error is not None:
                        errors[d.item] = d.error
                good = [d for d in batch if d.pixels is not None]
                if good:
                    trim = chosen.trim and len(kinds_new) > 1  # invariant probes: also without a frame
                    views = [rerank.probe_views(d.pixels, kinds_new, trim) for d in good]
                    out = embedder.embed(np.stack([v for vs in views for v in vs]))
                    start = 0
                    for d, vs in zip(good, views, strict=True):
                        vectors[d.item] = out[start : start + len(vs)]
                        start += len(vs)
                        embedded.add(d.item)
        ok = [p for p in probe_paths if p in vectors]
        results: dict[str, list[Hit]] = {}
        if ok:
            exclude = [None if include_self else self_ids.get(p) for p in ok]
            found = self.search_probes([vectors[p] for p in ok], k, model=model, exclude=exclude, settings=settings)
            results = dict(zip(ok, found, strict=True))
            if verify > 0:
                from searcher.verify import FeatureCache

                cache = FeatureCache(capacity=max(256, 2 * verify))  # probes of one call share candidates
                results = {p: verified_order(p, hits, verify, cache) for p, hits in results.items()}
        return [QueryResult(p, results.get(p, []), errors.get(p), embedded=p in embedded) for p in probe_paths]

    def search_vectors(
        self,
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
        model = model or self.find_model()
        matrix = np.asarray(vectors, np.float32).reshape(-1, model.dim)
        if len(matrix) == 0:
            return []
        scores, ids = self.vector_index(model).search(matrix, k + 1)
        rows = self._rows_by_id({int(i) for i in ids.ravel() if i >= 0})
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
        self,
        probes: Sequence[np.ndarray],
        k: int = 10,
        *,
        model: ModelRow | None = None,
        exclude: Sequence[int | None] | None = None,
        settings: Any = None,
    ) -> list[list[Hit]]:
        """The ``k`` indexed images nearest to each probe, given as a (variants, dim) array of unit
        vectors (rotated views of one image), with re-ranking (:func:`searcher.rerank.retrieve`;
        ``settings`` defaults to :func:`searcher.rerank.settings`). ``exclude[i]`` is an image id to
        leave out of probe ``i``'s results. ``Hit.score`` is the plain cosine similarity (of the
        view that ranked the hit); the order is the re-ranked one. No network is loaded."""
        from searcher import rerank

        model = model or self.find_model()
        settings = rerank.settings() if settings is None else settings
        index = self.vector_index(model)
        cache = self._neighbour_cache(model, index, settings)
        ranked = []
        for n, variants in enumerate(probes):
            skip = exclude[n] if exclude is not None else None
            ranked.append(
                rerank.retrieve(
                    index.search,
                    cache.vectors,
                    variants,
                    k + 1,
                    settings,
                    exclude=[] if skip is None else [skip],
                    cache=cache,
                )  # fmt: skip
            )
        rows = self._rows_by_id({int(i) for r in ranked for i in r.ids})
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

    def _neighbour_cache(self, model: ModelRow, index: VectorIndex, settings: Any) -> Any:
        """Stored vectors and DBA neighbour lists, kept while the model's vectors do not change."""
        from searcher import rerank

        with self.sessions() as session:
            revision = session.get(ModelRow, model.id).revision  # type: ignore[union-attr]
        caches = self.__dict__.setdefault("_neighbour_caches", {})
        token = (revision, len(index), settings.dba_k)
        held = caches.get(model.key)
        if held is None or held[0] != token:

            def reconstruct(ids: np.ndarray) -> np.ndarray:
                return np.stack([index.reconstruct(int(i)) for i in ids])

            held = (token, rerank.NeighbourCache(index.search, reconstruct, settings.dba_k + 2))
            caches[model.key] = held
        return held[1]

    def _rows_by_id(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = list(ids)
        out: dict[int, ImageRow] = {}
        with self.sessions() as session:
            for start in range(0, len(ids), 900):
                for row in session.execute(select(ImageRow).where(ImageRow.id.in_(ids[start : start + 900]))).scalars():
                    out[row.id] = row
        return out

    # --- reporting ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Location, default backbone, counts and size on disk (no network is loaded)."""
        with self.sessions() as session:
            images = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_OK))
            failed = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_FAILED))
            default_key = self._get_meta(session, "default_model")
            models = []
            for m in session.execute(select(ModelRow).order_by(ModelRow.id)).scalars():
                n = session.scalar(select(func.count()).where(EmbeddingRow.model_id == m.id))
                models.append(
                    {
                        "key": m.key, "backbone": m.backbone, "pooling": m.pooling, "dim": m.dim,
                        "vectors": n, "weights_sha256": m.weights_sha256, "default": m.key == default_key,
                    }
                )  # fmt: skip
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        default = next((m for m in models if m["default"]), None)
        return {
            "library": str(self.root),
            "backbone": default["backbone"] if default else None,
            "images": images,
            "vectors": default["vectors"] if default else 0,
            "failures": failed,
            "size_bytes": size,
            "models": models,
        }

    def failures(self) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.execute(
                select(ImageRow.path, ImageRow.error).where(ImageRow.status == STATUS_FAILED).order_by(ImageRow.path)
            ).all()
        return [(p, e or "") for p, e in rows]


@dataclass
class _Plan:
    to_embed: list[_Work] = field(default_factory=list)
    delete_ids: list[int] = field(default_factory=list)
    moves: list[tuple[int, FileEntry]] = field(default_factory=list)
    touch: list[tuple[int, FileEntry]] = field(default_factory=list)
    copies: list[tuple[int, FileEntry, str]] = field(default_factory=list)
    late_copies: list[tuple[FileEntry, str]] = field(default_factory=list)  # twins of files embedded now
    unreadable: list[tuple[str, str]] = field(default_factory=list)


class IndexInterrupted(LibraryError):
    """Indexing was interrupted (Ctrl-C); everything committed so far is kept."""

    def __init__(self, report: IndexReport) -> None:
        super().__init__(
            f"interrupted: {report.embedded} images embedded and saved; run the same command again to finish"
        )
        self.report = report
