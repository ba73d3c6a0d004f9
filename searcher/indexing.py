"""Indexing: bring a library up to date with the image files under some folders.

The indexing half of :class:`searcher.library.Library` (``Library.index`` is :func:`index_files`):
scan and fingerprint the files, plan what changed (new, changed, moved, copies, vanished), then
decode and embed the new work in a pipeline and commit it batch by batch to SQLite and FAISS.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from searcher import store
from searcher.backbones.registry import DEFAULT_BACKBONE, get_backbone
from searcher.embed import model_identity
from searcher.files import FileEntry, absolute, content_hash, discover, looks_like_image, read_error
from searcher.pipeline import Batch, default_workers, prefetch_batches
from searcher.reports import IndexInterrupted, IndexReport, LibraryError, Progress
from searcher.store import STATUS_FAILED, STATUS_OK, EmbeddingRow, ImageRow, ModelRow, ThumbnailRow
from searcher.vector_index import INDEX_TYPES, VectorIndex, choose_kind

if TYPE_CHECKING:
    from searcher.distributed import RayEngine
    from searcher.embed import Embedder
    from searcher.library import Library

SAVE_EVERY_S = 60.0


@dataclass
class _Work:
    """One file to decode and embed."""

    entry: FileEntry
    content_hash: str
    existing_id: int | None = None  # set when the row exists and only this model's vector is missing


@dataclass
class _Plan:
    to_embed: list[_Work] = field(default_factory=list)
    delete_ids: list[int] = field(default_factory=list)
    moves: list[tuple[int, FileEntry]] = field(default_factory=list)
    touch: list[tuple[int, FileEntry]] = field(default_factory=list)
    copies: list[tuple[int, FileEntry, str]] = field(default_factory=list)
    late_copies: list[tuple[FileEntry, str]] = field(default_factory=list)  # twins of files embedded now
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def index_files(
    lib: Library,
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
    engine: RayEngine | None = None,
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

    ``engine`` (a :class:`searcher.distributed.RayEngine`) decodes and embeds on a Ray cluster
    instead of this process; everything else (planning, commits, guarantees) is the same.
    """
    if index_type is not None and index_type not in INDEX_TYPES:
        raise LibraryError(f"--index-type must be one of {', '.join(INDEX_TYPES)}, not {index_type!r}")
    progress = progress or Progress()
    started = time.monotonic()
    root_paths = [Path(absolute(r)) for r in roots]
    for r in root_paths:
        if not r.exists() and not r.is_symlink():
            raise LibraryError(f"no such file or folder: {r}")
    lib._lock.acquire(wait)
    try:
        lib._remove_temp_files()
        default = _default_model(lib)
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
        with lib.sessions() as session, session.begin():
            model = lib._model_row(session, identity, create=True)
            assert model is not None
        if embedder is not None:
            lib._embedders[model.key] = embedder
        report = IndexReport(backbone=spec.name, model_key=model.key)
        plan = _plan(lib, root_paths, model, report, retry_failed, progress)
        index = lib.vector_index(model)
        _apply_plan_removals(lib, plan, model, index, report)
        try:
            if plan.to_embed:
                _embed_and_store(
                    lib, plan.to_embed, model, index, report, batch_size, workers, max_pixels, progress, engine
                )
            _add_late_copies(lib, plan, model, index, report)
            _backfill_thumbnails(lib, root_paths, workers, max_pixels, progress, report)
            _apply_index_type(lib, model, index, index_type, progress)
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            lib._save_index(model, index)
        report.seconds = time.monotonic() - started
        if report.interrupted:
            raise IndexInterrupted(report)
        return report
    finally:
        lib._lock.release()


def _apply_index_type(
    lib: Library, model: ModelRow, index: VectorIndex, requested: str | None, progress: Progress
) -> None:
    """Record the requested index type and (re)build the approximate index when the size calls for it."""
    if requested is not None:
        with lib.sessions() as session, session.begin():
            lib._set_meta(session, f"index_type:{model.key}", requested)
    wanted = choose_kind(requested or lib.index_type(model), len(index), index.kind, dim=index.dim)
    if wanted != index.kind or index.kind != "flat":
        progress.begin(f"Building the {wanted} index", 0)
        index.set_kind(wanted)  # no-op unless the type changes or the index outgrew its training
        progress.end()


def _default_model(
    lib: Library,
) -> ModelRow | None:
    with lib.sessions() as session:
        key = lib._get_meta(session, "default_model")
        if key is None:
            return None
        return session.execute(select(ModelRow).where(ModelRow.key == key)).scalar_one_or_none()


def _plan(
    lib: Library,
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
    exclude = [lib.root]
    for entry in discover(roots, exclude=exclude, on_error=lambda p, r: unreadable.append((p, r))):
        entries.append(entry)
        progress.advance()
    progress.end()

    with lib.sessions() as session:
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

    hashes = _hash_all(lib, [e for e, _ in to_hash], progress)
    vanished_by_hash: dict[str, list[ImageRow]] = {}
    for row in vanished:
        if row.status == STATUS_OK and row.content_hash:
            vanished_by_hash.setdefault(row.content_hash, []).append(row)

    pending_hashes: set[str] = set()
    with lib.sessions() as session:
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


def _hash_all(lib: Library, entries: list[FileEntry], progress: Progress) -> list[str | None]:
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


def _apply_plan_removals(lib: Library, plan: _Plan, model: ModelRow, index: VectorIndex, report: IndexReport) -> None:
    """Commit deletions, moves, touches, reused copies and unreadable files in one transaction."""
    with lib.sessions() as session, session.begin():
        for start in range(0, len(plan.delete_ids), 500):
            part = plan.delete_ids[start : start + 500]
            session.execute(delete(EmbeddingRow).where(EmbeddingRow.image_id.in_(part)))
            session.execute(delete(ThumbnailRow).where(ThumbnailRow.image_id.in_(part)))
            session.execute(delete(ImageRow).where(ImageRow.id.in_(part)))
        session.flush()
        for image_id, entry in plan.moves + plan.touch:
            row = session.get(ImageRow, image_id)
            assert row is not None
            row.path, row.size, row.mtime_ns = entry.path, entry.size, entry.mtime_ns
        reused_ids = [_copy_row(lib, session, twin_id, entry, digest) for twin_id, entry, digest in plan.copies]
        report.reused += len(reused_ids)
        for path, reason in plan.unreadable:
            if not looks_like_image(path):
                continue
            _record_failure(lib, session, path, reason)
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


def _copy_row(lib: Library, session: Session, twin_id: int, entry: FileEntry, digest: str) -> int:
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
    thumb = session.get(ThumbnailRow, twin_id)
    if thumb is not None:
        session.add(ThumbnailRow(image_id=row.id, thumb=thumb.thumb))
    return row.id


def _add_late_copies(lib: Library, plan: _Plan, model: ModelRow, index: VectorIndex, report: IndexReport) -> None:
    """Copies of content first seen in this run: reuse the vector just computed (or record the failure)."""
    if not plan.late_copies:
        return
    added: list[int] = []
    with lib.sessions() as session, session.begin():
        for entry, digest in plan.late_copies:
            twin = session.execute(
                select(ImageRow).where(ImageRow.content_hash == digest, ImageRow.path != entry.path).limit(1)
            ).scalar_one_or_none()
            if twin is None:
                continue  # the first copy was never committed (interrupted): the next run embeds it
            if twin.status != STATUS_OK:
                _record_failure(lib, session, entry.path, twin.error or "unreadable", digest)
                report.failed += 1
                report.failures.append((entry.path, twin.error or "unreadable"))
                continue
            added.append(_copy_row(lib, session, twin.id, entry, digest))
        store.bump_revision(session, model.id)
        vectors = store.vectors_for(session, model.id, added)
    report.reused += len(added)
    if vectors:
        index.add(
            np.fromiter(vectors.keys(), dtype=np.int64, count=len(vectors)),
            np.stack(list(vectors.values())),
        )


def _backfill_thumbnails(
    lib: Library,
    roots: Sequence[Path],
    workers: int | None,
    max_pixels: int | None,
    progress: Progress,
    report: IndexReport,
) -> None:
    """Store the thumbnails (:mod:`searcher.thumbnails`) of readable images under ``roots`` that have
    none: those indexed before thumbnails were stored. Each is decoded once (no network), committed
    every 256 images, so an interrupted run keeps what it did and the next one finishes."""
    from searcher.pipeline import decode_stream

    with lib.sessions() as session:
        have = set(session.execute(select(ThumbnailRow.image_id)).scalars())
        todo = [(r.id, r.path) for r in store.rows_under(session, roots) if r.status == STATUS_OK and r.id not in have]
    if not todo:
        return
    progress.begin("Thumbnails", len(todo))
    pending: list[ThumbnailRow] = []

    def flush() -> None:
        with lib.sessions() as session, session.begin():
            for row in pending:
                session.merge(row)
        report.thumbnails += len(pending)
        pending.clear()

    stream = decode_stream(
        todo, lambda t: t[1], THUMBNAIL_DECODE_SIZE, workers=workers or default_workers(), max_pixels=max_pixels
    )
    try:
        for d in stream:  # b"": flat or now unreadable, marked done so the next run does not decode it again
            pending.append(ThumbnailRow(image_id=d.item[0], thumb=(d.info.thumb if d.info else None) or b""))
            if len(pending) >= 256:
                flush()
            progress.advance()
    finally:
        stream.close()
        if pending:
            flush()
    progress.end()


THUMBNAIL_DECODE_SIZE = (224, 224)  # as the default backbone's workers decode (JPEG draft scale >= 224 px)


def _record_failure(lib: Library, session: Session, path: str, reason: str, digest: str | None = None) -> None:
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
        session.execute(delete(ThumbnailRow).where(ThumbnailRow.image_id == row.id))
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
    lib: Library,
    work: list[_Work],
    model: ModelRow,
    index: VectorIndex,
    report: IndexReport,
    batch_size: int,
    workers: int | None,
    max_pixels: int | None,
    progress: Progress,
    engine: RayEngine | None = None,
) -> None:
    progress.begin("Embedding", len(work))
    started = time.monotonic()
    saves = {"last": time.monotonic(), "cost": 0.0}

    def commit(batch: Batch[_Work], vectors: np.ndarray | None) -> None:
        """Store one embedded batch (SQLite, then FAISS); runs on the commit thread."""
        added_ids: list[int] = []
        with lib.sessions() as session, session.begin():
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
                session.add(EmbeddingRow(image_id=image_id, model_id=model.id, vector=store.vector_to_blob(vectors[i])))
                # b"" for a flat picture: marked done, so later runs do not decode it again for nothing
                session.merge(ThumbnailRow(image_id=image_id, thumb=info.thumb or b""))
                added_ids.append(image_id)
            for d in batch.items:
                if d.error is not None:
                    _record_failure(lib, session, d.item.entry.path, d.error, d.item.content_hash or None)
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
            lib._save_index(model, index)
            saves["last"] = time.monotonic()
            saves["cost"] = saves["last"] - saving

    # The local engine: three overlapping stages. Decoding (worker threads) feeds the model (this
    # thread), whose output is committed on a commit thread while the model runs on the next batch.
    # The Ray engine yields the same (batch, vectors) pairs computed on a cluster. Either way at most
    # one batch waits to be committed; an interrupted run still commits the batch it embedded.
    embedded = (
        _embed_locally(lib, work, model, batch_size, workers, max_pixels)
        if engine is None
        else engine.batches(work, lambda w: w.entry.path, model, batch_size, max_pixels)
    )
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit") as committer:
        try:
            for batch, vectors in embedded:
                if pending is not None:
                    pending.result()  # raises what the commit raised
                pending = committer.submit(commit, batch, vectors)
        finally:
            embedded.close()  # stop decoding
            if pending is not None and sys.exc_info()[0] is None:
                pending.result()
        # leaving the ``with`` waits for the last commit, whatever happened
    progress.end()


def _embed_locally(
    lib: Library, work: list[_Work], model: ModelRow, batch_size: int, workers: int | None, max_pixels: int | None
) -> Iterator[tuple[Batch[_Work], np.ndarray | None]]:
    """The local engine: decode on threads, embed here, one (batch, vectors) pair at a time."""
    embedder = lib.embedder_for(model)
    batches = prefetch_batches(
        work, lambda w: w.entry.path, embedder.input_size, batch_size,
        workers=workers or default_workers(gpu=embedder.gpu), max_pixels=max_pixels,
    )  # fmt: skip
    try:
        for batch in batches:
            yield batch, (embedder.embed(batch.pixels) if batch.good else None)
    finally:
        batches.close()
