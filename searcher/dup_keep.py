"""Keep rules and the result types of duplicate detection: which file of a group is kept, and why.

:class:`KeepRules` orders a group's files (reference folder, preferred folder, resolution, size, age,
a name that does not look like a copy, path length); :class:`DuplicateReport` holds the groups
that :func:`searcher.duplicates.find_duplicates` returns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from searcher.dup_candidates import DEFAULT_CANDIDATE_COSINE
from searcher.files import absolute

DEFAULT_SIMILAR_COSINE = 0.85  # "similar" suggestions (not verified copies)


@dataclass
class Thresholds:
    """The numbers duplicate detection runs with, and where the verified one came from."""

    verified: float
    candidate_cosine: float = DEFAULT_CANDIDATE_COSINE
    similar_cosine: float = DEFAULT_SIMILAR_COSINE
    source: str = "fallback"


# --- keep rules --------------------------------------------------------------------------------


def _under(path: str, folders: Sequence[str]) -> int:
    """Index of the first folder that holds ``path``, or -1."""
    for i, folder in enumerate(folders):
        if path == folder or path.startswith(folder.rstrip(os.sep) + os.sep):
            return i
    return -1


COPY_NAME = re.compile(
    r"(^copy of\b)|(\bcopy\b)|(_copy\d*$)|(\(\d+\)$)|((?<![\d-])[-_]\d$)", re.IGNORECASE
)  # "Copy of x", "x copy", "x (1)", "x-1", "x_copy", "x - Copy 2"


def looks_like_copy(path: str) -> bool:
    """Whether a file's name (without extension) reads like a copy someone made of another file."""
    stem = Path(path).stem.strip()
    return bool(COPY_NAME.search(stem))


KEEP_REASONS = (
    "in a reference folder",
    "in a preferred folder",
    "highest resolution",
    "largest file",
    "oldest",
    "name does not look like a copy",
    "shortest path",
    "first by path",
)


@dataclass
class KeepRules:
    """Which copy of a group is kept: in a ``reference`` folder (never touched), then in a
    ``prefer`` folder (earlier folders first), then highest resolution, largest file, oldest,
    then a name that does not look like a copy (``copy``, ``(1)``, ``-1``, ``Copy of``), then
    the shorter path."""

    prefer: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefer = [absolute(os.path.expanduser(p)) for p in self.prefer]
        self.reference = [absolute(os.path.expanduser(p)) for p in self.reference]

    def is_reference(self, path: str) -> bool:
        return _under(path, self.reference) >= 0

    def sort_key(self, m: Member) -> tuple[Any, ...]:
        """One entry per :data:`KEEP_REASONS` (lower wins)."""
        pref = _under(m.path, self.prefer)
        return (
            0 if self.is_reference(m.path) else 1,
            pref if pref >= 0 else len(self.prefer),
            -((m.width or 0) * (m.height or 0)),
            -m.size,
            m.mtime_ns,
            1 if looks_like_copy(m.path) else 0,
            len(m.path),
            m.path,
        )

    def reason(self, kept: Member, others: Sequence[Member]) -> str:
        """Why ``kept`` wins over ``others``: the first rule that tells it from the runner-up."""
        if self.is_reference(kept.path):
            return KEEP_REASONS[0]
        if not others:
            return "only file"
        mine = self.sort_key(kept)
        runner_up = min(self.sort_key(o) for o in others)
        for name, a, b in zip(KEEP_REASONS, mine, runner_up, strict=True):
            if a != b:
                return name
        return KEEP_REASONS[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"prefer": self.prefer, "reference": self.reference}


# --- results -----------------------------------------------------------------------------------


@dataclass
class Member:
    image_id: int
    path: str
    content_hash: str
    width: int | None
    height: int | None
    size: int
    mtime_ns: int
    format: str | None
    score: float = 1.0  # vs the representative: 1 for exact/pixels, verified score for near, cosine for similar
    cosine: float = 1.0
    match: str = "exact"  # how this member relates to the representative
    keep: bool = True
    reference: bool = False
    reason: str = ""  # why a kept file is kept (see KeepRules.reason); empty for files to move

    @property
    def mtime(self) -> str:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, UTC).isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "score": round(self.score, 4), "cosine": round(self.cosine, 4),
            "match": self.match, "keep": self.keep, "reference": self.reference, "reason": self.reason,
            "width": self.width, "height": self.height, "size": self.size, "format": self.format,
            "mtime": self.mtime, "mtime_ns": self.mtime_ns, "content_hash": self.content_hash,
        }  # fmt: skip


@dataclass
class Group:
    tier: str
    members: list[Member]  # the kept copy first
    spread: float
    representative: str = ""  # the file every member was compared with (scores are against it)

    @property
    def kept(self) -> Member:
        return self.members[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier, "spread": round(self.spread, 4), "representative": self.representative,
            "members": [m.as_dict() for m in self.members],
        }  # fmt: skip


@dataclass
class DuplicateReport:
    groups: list[Group]
    model: str
    thresholds: Thresholds
    rules: KeepRules
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threshold": self.thresholds.verified,
            "threshold_source": self.thresholds.source,
            "keep_rules": self.rules.as_dict(),
            "stats": self.stats,
            "groups": [g.as_dict() for g in self.groups],
        }


@dataclass
class _Unit:
    """One distinct content (one or more files with the same bytes)."""

    content_hash: str
    rows: list[Member]
    pixel_hash: str | None = None
