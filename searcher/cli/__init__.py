"""The ``searcher`` command line: a thin layer over :class:`searcher.Library`.

Each module registers its commands on :data:`searcher.cli.app.app`; they are imported when the
command line starts (:func:`main`) or when ``app`` is first asked for.
"""

from __future__ import annotations

import sys
from typing import Any


def _load_app() -> Any:
    from searcher.cli import backbones, core, duplicates, evaluate, maintenance, serve  # noqa: F401  (registers commands)
    from searcher.cli.app import app

    globals()["app"] = app  # importing the submodule searcher.cli.app bound that name to the module
    return app


def main() -> None:
    try:
        _load_app()()
    except KeyboardInterrupt:  # Ctrl-C while importing or parsing, before a command runs: nothing written
        sys.stderr.write("interrupted before the command ran; nothing was written: run the same command again\n")
        raise SystemExit(130) from None


def __getattr__(name: str) -> Any:
    if name == "app":
        return _load_app()
    raise AttributeError(f"module 'searcher.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
