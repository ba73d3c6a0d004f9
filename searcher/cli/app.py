"""The typer application, the options every command shares, and error handling.

Commands live in sibling modules (``core``, ...) and register on :data:`app`.
Errors a user can act on print one line and exit non-zero; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="searcher",
    help=(
        "Reverse image search and near-duplicate finder for photo and asset libraries.\n\n"
        "Typical use:\n\n"
        "  searcher index ~/Pictures          # embed every image (only new work on re-runs)\n\n"
        "  searcher query cat.jpg -k 5        # nearest neighbours with cosine scores\n\n"
        "  searcher duplicates                # exact and near-duplicate groups\n\n"
        "The library lives in $SEARCHER_LIBRARY or the per-user data folder; use --library DIR to pick another."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

LibraryOption = Annotated[
    Path | None,
    typer.Option(
        "--library",
        "-L",
        envvar="SEARCHER_LIBRARY",
        help="Library folder (default: $SEARCHER_LIBRARY, else the per-user data folder).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")]


def _check_preset(value: str) -> str:
    from searcher.rerank import PRESETS  # imported on use: `searcher --help` stays quick

    if value not in PRESETS:
        raise typer.BadParameter(f"choose from: {', '.join(PRESETS)}")
    return value


PresetOption = Annotated[
    str,
    typer.Option(
        callback=_check_preset,
        help="What counts as similar. instance: the same scene, object or photo, also edited or turned "
        "(rotation-invariant probes, DBA over the first 100 results). category: the same kind of thing, "
        "e.g. a flower species (square-rooted vectors, DBA and query expansion over the first 500 results; "
        "Flowers-17 precision@10 0.81 -> 0.85, but worse for finding one scene: see README).",
    ),
]



def _set_runtime(value: str | None) -> str | None:
    from searcher.runtime import RUNTIMES, requested_runtime, set_default_runtime

    try:
        set_default_runtime(requested_runtime(value) if value else None)
    except ValueError:
        raise typer.BadParameter(f"choose from: {', '.join(RUNTIMES)}") from None
    return value


RuntimeOption = Annotated[
    str | None,
    typer.Option(
        "--runtime",
        callback=_set_runtime,
        help="Inference runtime: tensorflow, onnxruntime (the model exported to ONNX once, checked against "
        "TensorFlow, cached in the library; 1.7-2.3x faster on a CPU, no TensorFlow start-up) or auto "
        "(ONNX Runtime when installed and its export checks out). Same vectors either way. "
        "[default: $SEARCHER_RUNTIME, else auto]",
        show_default=False,
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix: shown as one line, never a traceback."""
    from searcher.backbones.registry import UnknownBackbone, WeightsUnavailable
    from searcher.library import LibraryError
    from searcher.locking import LibraryLocked
    from searcher.store import SchemaError

    return (LibraryError, WeightsUnavailable, UnknownBackbone, LibraryLocked, SchemaError, ValueError)


def handle_errors(func: F) -> F:
    """Turn exceptions into one clear line and an exit code (tracebacks only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(kwargs.get("debug")) or os.environ.get("SEARCHER_DEBUG") == "1"
        _tolerate_odd_names()
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.BadParameter):
            raise  # exit codes, and usage errors (exit 2 with the usage line)
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted: what was committed is kept; run the same command again to finish[/]"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if debug:
                raise
            if is_disk_full(exc):
                err_console.print(
                    "[red]error:[/] the disk is full; the library is unchanged since its last commit. "
                    "Free some space and run the command again."
                )
            elif isinstance(exc, OSError):
                text = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
                err_console.print(f"[red]error:[/] {escape(text)}", soft_wrap=True)
            elif isinstance(exc, user_errors()):
                err_console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            else:
                err_console.print(
                    f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}\n"
                    "Run again with --debug for the traceback, and please report it."
                )
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is ENOSPC/EDQUOT, or SQLite's SQLITE_FULL."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(err, "sqlite_errorcode", None) == 13 or "database or disk is full" in str(err):  # SQLITE_FULL
            return True
        orig = getattr(err, "orig", None)  # SQLAlchemy's wrapper of the driver's exception
        todo.extend([err.__cause__, err.__context__, orig if isinstance(orig, BaseException) else None])
    return False


def _tolerate_odd_names() -> None:
    """File names that are not valid UTF-8 print as their raw bytes instead of crashing the output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if getattr(stream, "errors", "strict") == "strict":
                stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            pass


def print_json(data: Any) -> None:
    """JSON on stdout, one document, UTF-8 (paths that are not UTF-8 are escaped).

    A name that is not UTF-8 holds lone surrogates (Python's ``surrogateescape``): they are written
    as ``\\udcXX`` escapes, which ``json.loads`` turns back into the same string (and
    ``os.fsencode`` into the original bytes), so the output stays valid UTF-8 JSON.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


_SURROGATE = re.compile("[\ud800-\udfff]")


def open_library(path: Path | None, *, create: bool = False):  # -> Library
    from searcher.library import Library

    return Library.open(path, create=create)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
