"""`searcher check`: verify a library, and repair it with ``--repair``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from searcher.cli.app import DebugOption, JsonOption, LibraryOption, app, console, handle_errors, print_json

EXIT_PROBLEMS = 3  # check found problems (1 is an error that stopped the command, 130 an interrupt)


@app.command()
@handle_errors
def check(
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what is found: rebuild the FAISS indexes from the stored vectors (nothing is embedded "
            "again), delete orphan vectors and rows, remove stray files. Takes the writer lock.",
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="With --repair: seconds to wait if another process is writing the library.")
    ] = 0.0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Skip the scans of every stored vector and of every indexed file.")
    ] = False,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Verify the library: SQLite vs FAISS (ids, counts, checksums), orphans, vanished files, failures.

    Exit code 0 when healthy (warnings allowed), 3 when problems are found (after --repair: problems that
    remain), 1 when the check could not run.
    """
    from searcher.check import check_library, repair_library

    with open_existing(library) as lib:
        if repair:
            report = repair_library(lib, wait=wait, files=not quick)
        else:
            report = check_library(lib, files=not quick, vectors=not quick)
    if json_output:
        print_json(report.as_dict())
    else:
        _print_report(report)
    if not report.healthy:
        raise typer.Exit(EXIT_PROBLEMS)


def open_existing(library):  # -> Library
    from searcher.cli.app import open_library

    return open_library(library, create=False)


def _print_report(report) -> None:  # report: searcher.check.CheckReport
    console.print(f"[bold]library[/]   {escape(report.library)}")
    console.print(f"[bold]images[/]    {report.images} indexed, {report.failed} failed")
    for m in report.models:
        index = (
            f"FAISS {m['index_vectors']} vectors at revision {m['index_revision']}"
            if m["index_file"] and m["index_vectors"] is not None
            else ("FAISS file unreadable" if m["index_file"] else "no FAISS file yet")
        )
        console.print(
            f"[bold]model[/]     {escape(m['backbone'])}/{escape(m['pooling'])}: {m['vectors']} vectors "
            f"at revision {m['revision']}; {index}"
        )
    for action in report.repaired:
        console.print(f"[green]repaired[/]  {escape(action)}")
    for issue in report.issues:
        style = "red" if issue.severity == "problem" else "yellow"
        console.print(f"[{style}]{issue.severity}[/] [bold]{issue.code}[/]: {escape(issue.message)}", soft_wrap=True)
        for example in issue.examples[:5]:
            console.print(f"    {escape(example)}", soft_wrap=True)
        if len(issue.examples) > 5 or issue.count > max(len(issue.examples), 1):
            console.print(f"    ... ({issue.count} in all)")
    if report.healthy:
        note = f" ({len(report.warnings)} warnings)" if report.warnings else ""
        console.print(f"[green]healthy[/]{note}")
    else:
        hint = "" if report.repaired else "; run `searcher check --repair`"
        console.print(f"[red]{len(report.problems)} problems found[/]{hint}")
