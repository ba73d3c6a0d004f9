"""What the library API returns and raises: reports, hits, progress hooks and errors.

Kept apart from :mod:`searcher.library` so the indexing and querying modules can use them
without importing the library (no import cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class LibraryError(RuntimeError):
    """A problem a user can act on (shown as one line by the CLI)."""


class LibraryNotFound(LibraryError):
    pass


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
    thumbnails: int = 0  # images indexed before thumbnails were stored that got theirs now
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
    inliers: int | None = None  # SIFT matches one homography explains (verified results that are not copies)


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
                    **({} if h.inliers is None else {"inliers": h.inliers}),
                }
                for h in self.results
            ],
        }
        if self.error:
            out["error"] = self.error
        return out


class IndexInterrupted(LibraryError):
    """Indexing was interrupted (Ctrl-C); everything committed so far is kept."""

    def __init__(self, report: IndexReport) -> None:
        super().__init__(
            f"interrupted: {report.embedded} images embedded and saved; run the same command again to finish"
        )
        self.report = report
