"""Distributed indexing on a Ray cluster (optional: ``pip install searcher[ray]``).

Only :mod:`searcher.distributed.engine` imports Ray, and only when ``searcher index --engine ray``
runs; ``import searcher`` never does.
"""

from searcher.distributed.engine import RayEngine, parse_path_map

__all__ = ["RayEngine", "parse_path_map"]
