"""searcher: reverse image similarity search and near-duplicate finder.

The library API (``from searcher import Library``) is what the CLI uses; see
:mod:`searcher.library`. Importing searcher does not import TensorFlow, and the names below are
loaded on first use (so ``searcher --help`` or a Ctrl-C at start-up stays quick and quiet).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from searcher.library import IndexReport, Library, LibraryError, QueryResult

__version__ = "0.1.0"
__all__ = ["IndexReport", "Library", "LibraryError", "QueryResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("IndexReport", "Library", "LibraryError", "QueryResult"):
        from searcher import library

        return getattr(library, name)
    raise AttributeError(f"module 'searcher' has no attribute {name!r}")
