"""`searcher duplicates`, `calibrate`, `apply`, `undo` and `not-duplicate`.

Exit codes of ``searcher query --dir DIR --duplicates-only`` (see :func:`run_incoming_check`):
0 when no incoming file is already in the library, 3 (:data:`EXIT_DUPLICATES_FOUND`) when some are.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape

from searcher.cli.app import (
    EXIT_ERROR,
    DebugOption,
    JsonOption,
    LibraryOption,
    app,
    console,
    err_console,
    handle_errors,
    human_bytes,
    open_library,
    print_json,
)

EXIT_DUPLICATES_FOUND = 3

TIER_STYLE = {"exact": "bold red", "pixels": "red", "near": "yellow", "similar": "cyan"}


def _progress(enabled: bool):
    from searcher.cli.progress import RichProgress

    return RichProgress(enabled=enabled)


@app.command()
@handle_errors
def duplicates(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Only look at indexed images under these folders (default: all).")
    ] = None,
    prefer: Annotated[
        list[Path] | None, typer.Option("--prefer", help="Keep copies in this folder first (repeatable, in order).")
    ] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option("--reference", help="Folder whose files are never moved (and kept first). Repeatable."),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Verified-score threshold for near-duplicates (default: calibrated for the model)."),
    ] = None,
    similar_threshold: Annotated[
        float | None, typer.Option("--similar-threshold", help="CNN cosine for 'similar' suggestions.")
    ] = None,
    no_similar: Annotated[bool, typer.Option("--no-similar", help="Leave out 'similar' suggestions.")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="Neighbours per image considered as candidates.")] = 10,
    rotations: Annotated[
        bool,
        typer.Option(
            "--rotations",
            help="Also find copies turned by 90/180/270 degrees or upside down (embeds every picture twice more, "
            "once: cached).",
        ),
    ] = False,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Use this backbone's vectors.")] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="Write what `searcher apply` would do to this JSON file.")
    ] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print CSV (one row per group member).")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write a self-contained review page.")] = None,
    not_duplicate: Annotated[
        tuple[Path, Path] | None,
        typer.Option("--not-duplicate", help="Remember that files A and B are not duplicates, then exit."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Find duplicate groups among indexed images, in tiers: exact (same bytes), pixels (same picture,
    different file), near (a verified edited copy) and similar (look-alikes: suggestions only).

    Nothing is changed: use --plan FILE then `searcher apply FILE` to quarantine the copies not kept
    (reversible with `searcher undo`). Keep rules: --reference folders, then --prefer folders,
    then highest resolution, largest file, oldest.
    """
    if not_duplicate is not None:
        _remember_not_duplicate(library, not_duplicate[0], not_duplicate[1], json_output)
        return
    from searcher.duplicates import KeepRules, find_duplicates

    rules = KeepRules(prefer=[str(p) for p in prefer or []], reference=[str(p) for p in reference or []])
    with open_library(library) as lib:
        report = find_duplicates(
            lib, [str(p) for p in paths] if paths else None, rules=rules, threshold=threshold, k=k,
            similar=not no_similar, similar_cosine=similar_threshold, rotations=rotations, backbone=backbone,
            progress=_progress(not quiet and not json_output and not csv_output),
        )  # fmt: skip
        root = lib.root
    if plan is not None:
        from searcher.actions import make_plan, write_plan

        data = make_plan(report, root)
        write_plan(data, plan)
        err_console.print(
            f"plan written to {escape(str(plan))}: {len(data['moves'])} files "
            f"({human_bytes(data['bytes'])}) would go to quarantine; run `searcher apply {escape(str(plan))}`"
        )
    if html is not None:
        from searcher.report_html import write_html

        write_html(report, html)
        err_console.print(f"review page written to {escape(str(html))}")
    if json_output:
        print_json(report.as_dict())
    elif csv_output:
        _print_csv(report)
    else:
        _print_table(report)


def _print_csv(report) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(
        [
            "group",
            "tier",
            "spread",
            "path",
            "score",
            "cosine",
            "match",
            "keep",
            "width",
            "height",
            "size",
            "format",
            "mtime",
        ]
    )
    for i, g in enumerate(report.groups, 1):
        for m in g.members:
            writer.writerow(
                [i, g.tier, f"{g.spread:.4f}", m.path, f"{m.score:.4f}", f"{m.cosine:.4f}", m.match,
                 int(m.keep), m.width, m.height, m.size, m.format, m.mtime]
            )  # fmt: skip


def common_folder(paths: list[str]) -> str:
    """The deepest folder holding every path ("" when they share none but the root)."""
    try:
        folder = os.path.commonpath([os.path.dirname(p) for p in paths])
    except ValueError:
        return ""
    return "" if folder in ("", os.sep) else folder


def _print_table(report) -> None:
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    if not report.groups:
        console.print("no duplicates found")
        return
    for i, g in enumerate(report.groups, 1):
        style = TIER_STYLE.get(g.tier, "")
        title = f"[{style}]{g.tier}[/] group {i}: {len(g.members)} files, spread {g.spread:.3f}"
        if g.tier == "similar":
            title += " (suggestion only)"
        folder = common_folder([m.path for m in g.members])
        console.print(title)
        if folder:  # on its own line, never wrapped: it can be copied as one path
            console.print(f"in {escape(folder)}", soft_wrap=True)
        shown = [os.path.relpath(m.path, folder) if folder else m.path for m in g.members]
        # the path gets the width: no vertical rules, no format column (the extension says it)
        table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("keep", no_wrap=True)
        table.add_column("score", justify="right", no_wrap=True)
        table.add_column("path", overflow="fold", ratio=1, min_width=min(max(map(len, shown)), 40))
        table.add_column("pixels", justify="right", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("modified", no_wrap=True)
        for m, path in zip(g.members, shown, strict=True):
            keep = "[green]keep[/]" if m.keep else "[red]move[/]"
            if m.reference:
                keep += " (ref)"
            res = f"{m.width}x{m.height}" if m.width else ""
            table.add_row(keep, f"{m.score:.3f}", escape(path), res, human_bytes(m.size), m.mtime[:10])
        console.print(table)
    counts: dict[str, int] = {}
    for g in report.groups:
        counts[g.tier] = counts.get(g.tier, 0) + 1
    summary = ", ".join(f"{n} {t}" for t, n in counts.items())
    console.print(
        f"{len(report.groups)} groups ({summary}); near-duplicate threshold {report.thresholds.verified:.3f} "
        f"({report.thresholds.source})"
    )


def _remember_not_duplicate(library: Path | None, a: Path, b: Path, json_output: bool) -> None:
    from searcher import decisions
    from searcher.files import content_hash

    try:
        ha, hb = content_hash(a), content_hash(b)
    except OSError as exc:
        raise ValueError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    if ha == hb:
        raise ValueError(f"{a} and {b} have the same bytes: they are exact duplicates")
    with open_library(library) as lib:
        decisions.ensure_tables(lib.engine)
        with lib.sessions() as session, session.begin():
            added = decisions.add_not_duplicate(session, ha, hb, note=f"{a} | {b}")
    if json_output:
        print_json({"a": str(a), "b": str(b), "added": added})
    else:
        console.print(
            f"remembered: {escape(str(a))} and {escape(str(b))} are not duplicates" if added else "already remembered"
        )


@app.command("not-duplicate")
@handle_errors
def not_duplicate_cmd(
    a: Annotated[Path, typer.Argument(help="First image file.")],
    b: Annotated[Path, typer.Argument(help="Second image file.")],
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Remember that A and B are not duplicates (by content: it survives renames); later runs respect it."""
    _remember_not_duplicate(library, a, b, json_output)


@app.command()
@handle_errors
def calibrate(
    sample: Annotated[int, typer.Option(min=3, help="Pictures of the library to make edited copies of.")] = 40,
    precision: Annotated[float, typer.Option(min=0.5, max=1.0, help="Target precision.")] = 0.99,
    neighbours: Annotated[int, typer.Option(min=1, help="Nearest CNN neighbours per picture as hard negatives.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed for the sample and the edits.")] = 0,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Calibrate this backbone.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Measure only; do not store the threshold.")] = False,
    export: Annotated[
        Path | None, typer.Option("--export", help="Also write the result as a shipped-defaults JSON file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Calibrate the near-duplicate threshold on edited copies of your own pictures, for a target precision.

    Copies (recompressed, resized, cropped, flipped, rotated, recoloured, bordered, captioned) are made in
    a temporary folder; the pictures' nearest CNN neighbours serve as hard negatives. The threshold is
    stored for the model and used by `duplicates` and `query --duplicates-only`.
    """
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    from searcher.calibrate import calibrate as run_calibration

    with open_library(library) as lib:
        report = run_calibration(
            lib, sample=sample, target_precision=precision, neighbours=neighbours, seed=seed, backbone=backbone,
            store_result=not dry_run, progress=_progress(not quiet and not json_output),
        )  # fmt: skip
    if export is not None:
        _export_defaults(report, export, sys.argv)
    if json_output:
        print_json(report.as_dict())
        return
    console.print(
        f"threshold {report.threshold:.4f} for {report.backbone}: precision {report.precision:.3f}, "
        f"recall {report.recall:.3f} on {report.positives} edited copies vs {report.negatives} hard negatives "
        f"({report.seconds:.0f} s){'' if report.stored else ' (not stored)'}"
    )
    table = Table(title="recall per kind of edit", header_style="bold")
    table.add_column("edit")
    table.add_column("recall", justify="right")
    for kind, value in report.recall_by_kind.items():
        table.add_row(kind, f"{value:.2f}")
    console.print(table)
    if report.library_duplicates:
        console.print(
            f"{len(report.library_duplicates)} neighbour pairs are already duplicates in this library "
            "(not used as negatives), e.g."
        )
        for d in report.library_duplicates[:3]:
            console.print(f"  {escape(d['a'])} = {escape(d['b'])} ({d['why']})")
    if report.top_negatives:
        console.print("highest-scoring negatives (different pictures that look most like copies):")
        for d in report.top_negatives[:3]:
            console.print(f"  {d['score']:.3f} {escape(d['a'])} ~ {escape(d['b'])}")


def _export_defaults(report, path: Path, argv: list[str]) -> None:
    import json

    from searcher.duplicates import DEFAULT_CANDIDATE_COSINE, DEFAULT_SIMILAR_COSINE

    data = {"backbones": {}}
    if path.exists():
        data = json.loads(path.read_text())
    data.setdefault("backbones", {})[report.backbone] = {
        "threshold": round(report.threshold, 4),
        "candidate_cosine": DEFAULT_CANDIDATE_COSINE,
        "similar_cosine": DEFAULT_SIMILAR_COSINE,
        "target_precision": report.target_precision,
        "measured": report.as_dict(),
        "how": "searcher " + " ".join(argv[1:]),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


@app.command("apply")
@handle_errors
def apply_cmd(
    plan: Annotated[Path, typer.Argument(help="A plan written by `searcher duplicates --plan FILE`.")],
    quarantine: Annotated[
        Path | None, typer.Option("--quarantine", help="Quarantine folder (default: inside the library folder).")
    ] = None,
    reference: Annotated[
        list[Path] | None, typer.Option("--reference", help="Never move files under this folder (repeatable).")
    ] = None,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Move the copies a plan does not keep into quarantine (never deletes; undo with `searcher undo`).

    Each file is checked against the plan (size, time, content hash) and skipped if it changed; every move
    is journalled before it happens.
    """
    from searcher.actions import apply_plan, read_plan

    data = read_plan(plan)
    with open_library(library) as lib:
        root = lib.root
    result = apply_plan(data, root, quarantine=quarantine, reference=[str(r) for r in reference or []])
    if json_output:
        print_json(result.as_dict())
    else:
        console.print(f"moved {len(result.moved)} files to {escape(result.quarantine)}")
        for path, reason in result.skipped:
            console.print(f"  [yellow]skipped[/] {escape(path)}: {escape(reason)}")
        if result.moved:
            console.print("undo with `searcher undo`")
    if result.skipped:
        raise typer.Exit(EXIT_ERROR)


@app.command()
@handle_errors
def undo(
    batch: Annotated[
        str | None, typer.Option(help="Undo only this batch (default: every batch not yet undone).")
    ] = None,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Put every quarantined file back where it was (byte-identical, same name and time)."""
    from searcher.actions import undo as run_undo

    with open_library(library) as lib:
        root = lib.root
    result = run_undo(root, batch)
    if json_output:
        print_json(result.as_dict())
    else:
        console.print(f"restored {len(result.restored)} files from {len(result.batches)} batch(es)")
        for path, reason in result.problems:
            console.print(f"  [red]problem[/] {escape(path)}: {escape(reason)}")
    if result.problems:
        raise typer.Exit(EXIT_ERROR)


def run_incoming_check(
    dirs: list[Path], library: Path | None, threshold: float | None, backbone: str | None, json_output: bool
) -> None:
    """``searcher query --dir DIR --duplicates-only``: list incoming files already in the library.

    Exits 0 when none is, :data:`EXIT_DUPLICATES_FOUND` (3) when some are, 1 on unreadable files only.
    """
    from searcher.duplicates import check_incoming

    with open_library(library) as lib:
        report = check_incoming(lib, [str(d) for d in dirs], threshold=threshold, backbone=backbone)
    if json_output:
        print_json(report.as_dict())
    else:
        for d in report.duplicates:
            console.print(f"[{TIER_STYLE[d.tier]}]{d.tier}[/] {d.score:.3f} {escape(d.path)}")
            for m in d.matches:
                console.print(f"    = {escape(m)}")
        for path, error in report.errors:
            err_console.print(f"[red]error:[/] {escape(path)}: {escape(error)}")
        console.print(f"{len(report.duplicates)} of {report.checked} files are already in the library")
    if report.duplicates:
        raise typer.Exit(EXIT_DUPLICATES_FOUND)
    if report.errors:
        raise typer.Exit(EXIT_ERROR)
