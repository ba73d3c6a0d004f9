"""Rich progress bars for the library's :class:`~searcher.library.Progress` hooks.

With ``status_file`` the same progress is also written (atomically, at most twice a second) to a small
JSON file, so another process (the web app's status page) can show it while ``searcher index`` runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from searcher.cli.app import err_console
from searcher.files import atomic_write_bytes
from searcher.library import Progress as ProgressHooks

INDEX_STATUS_FILE = "index-status.json"  # in the library folder; read by searcher.web


class RateColumn(TextColumn):
    """Items per second."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} img/s" if speed else "", style="cyan")


class RichProgress(ProgressHooks):
    """Draws one bar per stage (on stderr, so --json output stays clean)."""

    def __init__(self, enabled: bool = True, status_file: Path | None = None) -> None:
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task = None
        self._status_file = status_file
        self._status: dict = {}
        self._written = 0.0

    def _write_status(self, force: bool = False) -> None:
        """Best effort: a status file that cannot be written never stops the indexing."""
        if self._status_file is None or (not force and time.monotonic() - self._written < 0.5):
            return
        self._written = time.monotonic()
        self._status["updated"] = time.time()
        try:
            atomic_write_bytes(self._status_file, json.dumps(self._status).encode())
        except OSError:
            pass

    def begin(self, label: str, total: int) -> None:
        self._status = {"pid": os.getpid(), "stage": label, "total": total, "done": 0, "running": True,
                        "started": self._status.get("started", time.time())}  # fmt: skip
        self._write_status(force=True)
        if not self.enabled:
            return
        self.end()
        self._bar = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total or None)

    def advance(self, n: int = 1) -> None:
        if self._status:
            self._status["done"] += n
            self._write_status()
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def end(self) -> None:
        if self._status.get("running"):
            self._status["running"] = False
            self._write_status(force=True)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None
