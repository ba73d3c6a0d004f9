"""Stage 4a: the SQLite side of a library (SQLAlchemy 2 models and helpers).

SQLite is the source of truth. It holds one row per image file (path, size,
mtime, content hash, pixel size, format, status, error) and the L2-normalised
vector of every image for every embedding model that indexed it, so that the
FAISS indexes can always be rebuilt without embedding anything again.

Invariant: an ``images.id`` always names the same file *content*. A file
whose content changes gets a new row (and so a new FAISS id); a file that
moves keeps its row and only its ``path`` changes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    exc,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

if TYPE_CHECKING:  # numpy is imported by the vector helpers below: `searcher info` never needs it
    import numpy as np

SCHEMA_VERSION = 1

STATUS_OK = "ok"
STATUS_FAILED = "failed"


class FSPath(TypeDecorator[str]):
    """A filesystem path stored as its raw bytes, so non-UTF-8 names round-trip exactly."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> bytes | None:
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value: bytes | None, dialect: object) -> str | None:
        return None if value is None else os.fsdecode(value)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the library (schema version, default backbone, ...)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ImageRow(Base):
    """One image file. ``status`` is ``ok`` or ``failed`` (with ``error``)."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FSPath, unique=True, index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    pixel_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(8), default=STATUS_OK, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(UTC))


class ModelRow(Base):
    """One embedding model: a backbone with given weights, preprocessing and pooling.

    ``key`` names its FAISS index file; ``revision`` grows with every committed
    change to its vectors so a stale FAISS file is detected at open.
    """

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    backbone: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    weights_source: Mapped[str] = mapped_column(Text)
    preprocess_version: Mapped[str] = mapped_column(String(64))
    pooling: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicate_threshold: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(UTC))


class EmbeddingRow(Base):
    """The L2-normalised float32 vector of one image under one model."""

    __tablename__ = "embeddings"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ThumbnailRow(Base):
    """The 16 x 16 grey thumbnail of one image (:mod:`searcher.thumbnails`: 256 float16 values), stored
    at index time: a query finds blurred copies by it, which the CNN puts far from their original."""

    __tablename__ = "thumbnails"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    thumb: Mapped[bytes] = mapped_column(LargeBinary)


# --- duplicate decisions (used by searcher.decisions) ---


class NotDuplicateRow(Base):
    """A pair of contents the user said are not duplicates of each other."""

    __tablename__ = "not_duplicates"
    hash_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=lambda: datetime.now(UTC))


class PairScoreRow(Base):
    """A cached pixel-verification score of a pair of contents."""

    __tablename__ = "pair_scores"
    hash_a: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash_b: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(16), primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class RotatedVectorRow(Base):
    """The vector of a content turned by ``turns`` quarter turns (counter-clockwise) under one model."""

    __tablename__ = "rotated_vectors"
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    turns: Mapped[int] = mapped_column(Integer, primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


def _sqlite_pragmas(dbapi_connection: object, connection_record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_engine(db_path: Path) -> Engine:
    """An engine on ``db_path`` with WAL (readers never block the writer) and foreign keys on."""
    engine = create_engine(f"sqlite:///{db_path}", future=True)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class SchemaError(RuntimeError):
    """The database was written by an incompatible (newer) version of searcher."""


def init_schema(engine: Engine) -> None:
    """Create tables if needed and refuse a database from a newer schema (or one that is not a database)."""
    for attempt in range(5):
        try:
            Base.metadata.create_all(engine)
            break
        except exc.OperationalError as error:  # two processes creating one new library at the same moment
            if attempt == 4 or "already exists" not in str(error.orig) and "locked" not in str(error.orig):
                raise
            time.sleep(0.05 * (attempt + 1))
        except exc.DatabaseError as error:
            raise SchemaError(
                f"{engine.url.database} is damaged or is not a searcher library ({error.orig}); "
                "move it away and index again, or restore it from a backup"
            ) from error
    try:
        _check_version(engine)
    except exc.IntegrityError:  # another process wrote the version row first
        _check_version(engine)


def _check_version(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        row = session.get(Meta, "schema_version")
        if row is None:
            session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
        elif not row.value.strip().isdigit() or int(row.value) > SCHEMA_VERSION:
            raise SchemaError(
                f"this library was written by a newer searcher (schema {row.value}, "
                f"this version understands {SCHEMA_VERSION}); upgrade searcher to open it"
            )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# --- vectors ---------------------------------------------------------------------------------


def vector_to_blob(vector: np.ndarray) -> bytes:
    import numpy as np

    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_to_vector(blob: bytes) -> np.ndarray:
    import numpy as np

    return np.frombuffer(blob, dtype="<f4")


def iter_vectors(session: Session, model_id: int, chunk: int = 20000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(ids, vectors)`` chunks of every stored vector of one model, in id order."""
    import numpy as np

    last = -1
    while True:
        rows = session.execute(
            select(EmbeddingRow.image_id, EmbeddingRow.vector)
            .where(EmbeddingRow.model_id == model_id, EmbeddingRow.image_id > last)
            .order_by(EmbeddingRow.image_id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.stack([blob_to_vector(r[1]) for r in rows]).astype(np.float32, copy=False)
        yield ids, vectors
        last = int(ids[-1])


def vector_ids(session: Session, model_id: int) -> np.ndarray:
    """All image ids that have a vector under ``model_id``."""
    import numpy as np

    rows = session.execute(select(EmbeddingRow.image_id).where(EmbeddingRow.model_id == model_id)).scalars()
    return np.fromiter(rows, dtype=np.int64)


def vectors_for(session: Session, model_id: int, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """The stored vectors of some images under one model."""
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(image_ids), 900):
        part = list(image_ids[start : start + 900])
        for image_id, blob in session.execute(
            select(EmbeddingRow.image_id, EmbeddingRow.vector).where(
                EmbeddingRow.model_id == model_id, EmbeddingRow.image_id.in_(part)
            )
        ):
            out[image_id] = blob_to_vector(blob)
    return out


def thumbnail_rows(session: Session) -> list[tuple[int, bytes, int | None, int | None]]:
    """``(image id, thumbnail blob, width, height)`` of every readable image that has a thumbnail
    (:class:`ThumbnailRow`; images indexed before thumbnails were stored have none)."""
    stmt = (
        select(ThumbnailRow.image_id, ThumbnailRow.thumb, ImageRow.width, ImageRow.height)
        .join(ImageRow, ImageRow.id == ThumbnailRow.image_id)
        .where(ImageRow.status == STATUS_OK)
    )
    return [tuple(r) for r in session.execute(stmt)]  # type: ignore[misc]


def bump_revision(session: Session, model_id: int) -> None:
    model = session.get(ModelRow, model_id)
    assert model is not None
    model.revision = (model.revision or 0) + 1


def rows_under(session: Session, roots: Iterable[Path]) -> Iterator[ImageRow]:
    """Every image row whose path is one of ``roots`` or lies below one of them."""
    for root in roots:
        prefix = os.fsencode(str(root))
        if prefix.endswith(b"/"):
            prefix = prefix[:-1]
        exact = select(ImageRow).where(ImageRow.path == os.fsdecode(prefix))
        yield from session.execute(exact).scalars()
        low = prefix + b"/"
        high = prefix + b"0"  # the byte after "/"
        stmt = select(ImageRow).where(ImageRow.path >= os.fsdecode(low), ImageRow.path < os.fsdecode(high))
        yield from session.execute(stmt).scalars()


def now_ts() -> float:
    return time.time()

