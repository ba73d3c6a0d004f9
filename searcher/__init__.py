"""searcher: reverse image similarity search and near-duplicate finder.

The library API (``from searcher import Library``) is what the CLI uses; see
:mod:`searcher.library`. Importing searcher does not import TensorFlow.
"""

from searcher.library import IndexReport, Library, LibraryError, QueryResult

__version__ = "0.1.0"
__all__ = ["IndexReport", "Library", "LibraryError", "QueryResult", "__version__"]
