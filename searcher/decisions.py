"""What the user and earlier runs decided about pairs of images, by content.

* :class:`NotDuplicateRow`: "these two are not duplicates", said by the user
  (``searcher not-duplicate A B``). Kept by content hash, so it survives moves and
  renames, and respected by every later ``duplicates`` run and by ``apply``.
* :class:`PairScoreRow`: the verified score of a pair (pixel verification is the
  slow part of ``duplicates``), so re-runs only verify new pairs. Keyed by the two
  content hashes and the verifier version; a new verifier ignores old scores.
* :class:`RotatedVectorRow`: the vectors of a picture turned by 90 and 180 degrees
  (``duplicates --rotations``), by content hash and model, so they are embedded once.

Both tables use :data:`searcher.store.Base`, so ``init_schema`` creates them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, Integer, LargeBinary, String, Text, select, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from searcher.store import Base


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The two hashes in a canonical order (a pair is unordered)."""
    return (a, b) if a <= b else (b, a)


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


def ensure_tables(engine: Engine) -> None:
    """Create this module's tables in an existing library (a no-op when they are there)."""
    tables = [NotDuplicateRow.__table__, PairScoreRow.__table__, RotatedVectorRow.__table__]
    Base.metadata.create_all(engine, tables=tables)


def add_not_duplicate(session: Session, hash_a: str, hash_b: str, note: str | None = None) -> bool:
    """Remember that two contents are not duplicates; False when it was already known."""
    a, b = pair_key(hash_a, hash_b)
    if session.get(NotDuplicateRow, (a, b)) is not None:
        return False
    session.add(NotDuplicateRow(hash_a=a, hash_b=b, note=note))
    return True


def remove_not_duplicate(session: Session, hash_a: str, hash_b: str) -> bool:
    row = session.get(NotDuplicateRow, pair_key(hash_a, hash_b))
    if row is None:
        return False
    session.delete(row)
    return True


def not_duplicate_pairs(session: Session) -> set[tuple[str, str]]:
    """Every remembered "not a duplicate" pair, canonical order."""
    return {(a, b) for a, b in session.execute(select(NotDuplicateRow.hash_a, NotDuplicateRow.hash_b))}


def cached_scores(session: Session, pairs: Iterable[tuple[str, str]], version: str) -> dict[tuple[str, str], float]:
    """Stored scores of some canonical pairs under ``version``."""
    wanted = list(pairs)
    out: dict[tuple[str, str], float] = {}
    for start in range(0, len(wanted), 400):
        part = wanted[start : start + 400]
        stmt = select(PairScoreRow.hash_a, PairScoreRow.hash_b, PairScoreRow.score).where(
            PairScoreRow.version == version, tuple_(PairScoreRow.hash_a, PairScoreRow.hash_b).in_(part)
        )
        for a, b, score in session.execute(stmt):
            out[(a, b)] = float(score)
    return out


def store_scores(session: Session, scores: dict[tuple[str, str], float], version: str) -> None:
    for (a, b), score in scores.items():
        session.merge(PairScoreRow(hash_a=a, hash_b=b, version=version, score=float(score)))


def cached_rotations(
    session: Session, model_key: str, hashes: Iterable[str], turns: Iterable[int]
) -> dict[tuple[str, int], bytes]:
    """Stored rotated vectors (raw float32 bytes) of some contents: ``{(content_hash, turns): blob}``."""
    wanted = list(hashes)
    turn_list = list(turns)
    out: dict[tuple[str, int], bytes] = {}
    for start in range(0, len(wanted), 400):
        part = wanted[start : start + 400]
        stmt = select(RotatedVectorRow.content_hash, RotatedVectorRow.turns, RotatedVectorRow.vector).where(
            RotatedVectorRow.model_key == model_key,
            RotatedVectorRow.content_hash.in_(part),
            RotatedVectorRow.turns.in_(turn_list),
        )
        for digest, t, blob in session.execute(stmt):
            out[(digest, int(t))] = blob
    return out


def store_rotations(session: Session, model_key: str, vectors: dict[tuple[str, int], bytes]) -> None:
    for (digest, t), blob in vectors.items():
        session.merge(RotatedVectorRow(content_hash=digest, model_key=model_key, turns=t, vector=blob))
