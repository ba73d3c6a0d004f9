"""What the user and earlier runs decided about pairs of images, by content.

* :class:`NotDuplicateRow`: "these two are not duplicates", said by the user
  (``searcher not-duplicate A B``). Kept by content hash, so it survives moves and
  renames, and respected by every later ``duplicates`` run and by ``apply``.
* :class:`PairScoreRow`: the verified score of a pair (pixel verification is the
  slow part of ``duplicates``), so re-runs only verify new pairs. Keyed by the two
  content hashes and the verifier version; a new verifier ignores old scores.
* :class:`RotatedVectorRow`: the vectors of a picture turned by 90 and 180 degrees
  (``duplicates --rotations``), by content hash and model, so they are embedded once.

The tables are defined in :mod:`searcher.store` (the schema lives in one module, so
``init_schema`` creates them and store never imports this module).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, tuple_
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from searcher.store import Base, NotDuplicateRow, PairScoreRow, RotatedVectorRow

__all__ = ["NotDuplicateRow", "PairScoreRow", "RotatedVectorRow"]  # defined in store (schema), re-exported here


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The two hashes in a canonical order (a pair is unordered)."""
    return (a, b) if a <= b else (b, a)


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


def has_scores(session: Session, version: str) -> bool:
    """Whether any pair has a stored score under ``version``."""
    stmt = select(PairScoreRow.hash_a).where(PairScoreRow.version == version).limit(1)
    return session.execute(stmt).first() is not None


def store_scores(session: Session, scores: dict[tuple[str, str], float], version: str) -> None:
    """Insert or replace the scores in one executemany (a merge per row selected each first: 4 s of a
    3,000-photo ``duplicates`` run for its 10,000 pairs)."""
    if not scores:
        return
    stmt = sqlite_insert(PairScoreRow)
    key = ["hash_a", "hash_b", "version"]
    stmt = stmt.on_conflict_do_update(index_elements=key, set_={"score": stmt.excluded.score})
    rows = [{"hash_a": a, "hash_b": b, "version": version, "score": float(s)} for (a, b), s in scores.items()]
    session.execute(stmt, rows)


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
