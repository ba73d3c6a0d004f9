"""The ``searcher`` command line: a thin layer over :class:`searcher.Library`.

Each module registers its commands on :data:`searcher.cli.app.app`.
"""

from __future__ import annotations

from searcher.cli import (
    backbones,  # noqa: F401
    core,  # noqa: F401  (registers commands)
    duplicates,  # noqa: F401
    evaluate,  # noqa: F401
    maintenance,  # noqa: F401
    serve,  # noqa: F401
)
from searcher.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
