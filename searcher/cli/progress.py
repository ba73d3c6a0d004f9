"""Rich progress bars for the library's :class:`~searcher.library.Progress` hooks."""

from __future__ import annotations

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
from searcher.library import Progress as ProgressHooks


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

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task = None

    def begin(self, label: str, total: int) -> None:
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
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None
