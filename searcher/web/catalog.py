"""Paged reads of the library for the pages: never a full-library list (one SQL page at a time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from searcher.library import Library
from searcher.store import STATUS_FAILED, STATUS_OK, EmbeddingRow, ImageRow, ModelRow

PAGE_SIZE = 60


@dataclass
class Page:
    rows: list[dict[str, Any]]
    page: int
    pages: int
    total: int


def _folder_filter(stmt, folder: str | None):
    """Rows under ``folder`` as a range on the (indexed) path column: ``folder/`` <= path < ``folder0``."""
    if not folder:
        return stmt
    base = os.path.normpath(folder).rstrip(os.sep)
    return stmt.where(ImageRow.path >= base + os.sep, ImageRow.path < base + chr(ord(os.sep) + 1))


def _row(r: ImageRow) -> dict[str, Any]:
    return {
        "id": r.id, "path": r.path, "size": r.size, "width": r.width, "height": r.height,
        "format": r.format, "mtime_ns": r.mtime_ns, "content_hash": r.content_hash, "error": r.error,
    }  # fmt: skip


def images_page(lib: Library, page: int, folder: str | None, *, failed: bool = False, size: int = PAGE_SIZE) -> Page:
    """One page of the library's images (or failures), by path."""
    status = STATUS_FAILED if failed else STATUS_OK
    with lib.sessions() as session:
        count = _folder_filter(select(func.count()).select_from(ImageRow).where(ImageRow.status == status), folder)
        total = int(session.scalar(count) or 0)
        pages = max(1, -(-total // size))
        page = min(max(1, page), pages)
        stmt = _folder_filter(select(ImageRow).where(ImageRow.status == status), folder)
        rows = session.execute(stmt.order_by(ImageRow.path).limit(size).offset((page - 1) * size)).scalars()
        return Page([_row(r) for r in rows], page, pages, total)


def row_by_path(lib: Library, path: str) -> dict[str, Any] | None:
    with lib.sessions() as session:
        r = session.execute(select(ImageRow).where(ImageRow.path == path)).scalar_one_or_none()
        return _row(r) if r is not None and r.status == STATUS_OK else None


def is_indexed(lib: Library, path: str) -> bool:
    with lib.sessions() as session:
        stmt = select(ImageRow.id).where(ImageRow.path == path, ImageRow.status == STATUS_OK)
        return session.execute(stmt).first() is not None


def sizes_of(lib: Library, paths: list[str]) -> dict[str, int]:
    """File sizes of some indexed paths (one query per 400)."""
    out: dict[str, int] = {}
    with lib.sessions() as session:
        for start in range(0, len(paths), 400):
            part = paths[start : start + 400]
            for p, s in session.execute(select(ImageRow.path, ImageRow.size).where(ImageRow.path.in_(part))):
                out[p] = int(s)
    return out


def counts(lib: Library) -> dict[str, Any]:
    """What the status page shows: images, failures and vectors per backbone (counts only, no disk walk)."""
    with lib.sessions() as session:
        images = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_OK))
        failed = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_FAILED))
        per_model = dict(
            session.execute(select(EmbeddingRow.model_id, func.count()).group_by(EmbeddingRow.model_id)).all()
        )
        models = [
            {"key": m.key, "backbone": m.backbone, "pooling": m.pooling, "dim": m.dim,
             "vectors": int(per_model.get(m.id, 0)), "revision": int(m.revision)}  # fmt: skip
            for m in session.execute(select(ModelRow).order_by(ModelRow.id)).scalars()
        ]
    return {"library": str(lib.root), "images": int(images or 0), "failures": int(failed or 0), "models": models}
