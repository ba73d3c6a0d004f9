"""`searcher index`, `query`, `info` and `failures`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from searcher.cli.app import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    DebugOption,
    JsonOption,
    LibraryOption,
    PresetOption,
    RuntimeOption,
    app,
    console,
    err_console,
    handle_errors,
    human_bytes,
    open_library,
    print_json,
)

BackboneOption = Annotated[
    str | None,
    typer.Option(
        "--backbone",
        "-b",
        help="Backbone name (see `searcher backbones`). Default: the library's default, else efficientnet_lite0.",
        show_default=False,
    ),
]


@app.command()
@handle_errors
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or image files.")],
    backbone: BackboneOption = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="'imagenet' (downloaded once; bundled for EfficientNet-Lite), a weights FILE, or 'none'. "
            "Default: what the library already uses for this backbone, else imagenet."
        ),
    ] = None,
    pooling: Annotated[str, typer.Option(help="How the last feature map becomes a vector: avg, max or gem.")] = "avg",
    runtime: RuntimeOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call and commit.")] = 32,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding threads (default: CPU cores).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try files that failed before again.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait if another process is writing the library.")] = 0.0,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", help="Refuse images larger than this many pixels.")
    ] = None,
    index_type: Annotated[
        str | None,
        typer.Option(
            "--index-type",
            help="Vector index: auto (exact below 50k vectors, IVF-PQ with exact re-ranking above, "
            "ivfpq-disk when the vectors would fill half the free RAM), flat (always exact), hnsw, ivfpq or "
            "ivfpq-disk (full vectors in a file beside the index, ~100 bytes of RAM per vector). "
            "Remembered per model. Default: the model's current choice, else auto.",
            show_default=False,
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="Where decoding and embedding run: local (this process) or ray (a Ray cluster; "
            "pip install 'searcher[ray]'; see README 'Large libraries')."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="With --engine ray: 'auto' (this node's cluster), ray://HOST:PORT, or unset: local Ray."),
    ] = None,
    path_map: Annotated[
        list[str] | None,
        typer.Option("--path-map", help="With --engine ray: SRC=DST, where workers see the driver's SRC folder."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Embed every image under PATHS into the library; re-runs only do the new work.

    New and changed files are embedded; deleted files leave the library; moved or
    renamed files keep their vectors; failures (corrupt files, non-images) are
    recorded and skipped. Safe to interrupt: run it again to finish.
    """
    from searcher.cli.progress import INDEX_STATUS_FILE, RichProgress
    from searcher.library import IndexInterrupted

    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"--engine must be local or ray, not {engine!r}", param_hint="--engine")
    ray_engine = None
    if engine == "ray":
        from searcher.distributed import RayEngine, parse_path_map

        ray_engine = RayEngine(address=address, path_map=parse_path_map(path_map or []))
    elif address or path_map:
        raise typer.BadParameter("--address and --path-map need --engine ray", param_hint="--engine")
    lib = open_library(library, create=True)
    try:
        report = lib.index(
            paths, backbone=backbone, weights=weights, pooling=pooling,
            batch_size=batch_size, workers=workers, retry_failed=retry_failed, wait=wait,
            max_pixels=max_pixels, progress=RichProgress(
                enabled=not quiet and not json_output, status_file=lib.root / INDEX_STATUS_FILE
            ),
            index_type=index_type, engine=ray_engine,
        )  # fmt: skip
    except IndexInterrupted as exc:
        report = exc.report
        err_console.print(f"[yellow]{escape(str(exc))}[/]")
        _print_index_report(report, json_output)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:  # before the first batch (scanning, model loading) or during the final save
        err_console.print(
            "[yellow]interrupted: everything committed so far is kept; run the same command again to finish[/]"
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        lib.close()
    _print_index_report(report, json_output)


def _print_index_report(report, json_output: bool) -> None:  # report: IndexReport
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    if json_output:
        print_json(report.as_dict())
        return
    table = Table(title=f"Indexed with {report.backbone}", show_header=True, header_style="bold")
    for name in ("new", "changed", "unchanged", "removed", "moved", "failed"):
        table.add_column(name, justify="right")
    table.add_row(*(str(getattr(report, n)) for n in ("new", "changed", "unchanged", "removed", "moved", "failed")))
    console.print(table)
    rate = report.embedded / report.embed_seconds if report.embed_seconds > 0 else 0.0
    speed = f" ({rate:.1f} img/s while embedding)" if report.embedded else ""
    console.print(
        f"embedded {report.embedded} images, reused {report.reused} stored vectors, in {report.seconds:.1f} s{speed}"
    )
    if report.thumbnails:
        console.print(f"stored the thumbnails of {report.thumbnails} images indexed by an older version")
    if report.failures:
        shown = report.failures[:10]
        for path, reason in shown:
            console.print(f"  [red]failed[/] {escape(path)}: {escape(reason)}")
        more = len(report.failures) - len(shown)
        console.print((f"  ... and {more} more; " if more > 0 else "  ") + "see `searcher failures`")


@app.command()
@handle_errors
def query(
    images: Annotated[
        list[Path] | None, typer.Argument(help="Probe images, or folders of them (the model loads once).")
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="Neighbours per probe.")] = 10,
    backbone: BackboneOption = None,
    pooling: Annotated[str | None, typer.Option(help="Use the vectors made with this pooling.")] = None,
    runtime: RuntimeOption = None,
    include_self: Annotated[
        bool, typer.Option("--include-self", help="Keep the probe's own file when it is indexed.")
    ] = False,
    preset: PresetOption = "instance",
    invariant: Annotated[
        str | None,
        typer.Option(
            help="Match rotated copies: rotations, all (rotations and flips) or none. Default: the preset's "
            "(instance: rotations, with regional probes, for new and indexed probes alike). none = the upright "
            "view only; an indexed probe then reuses its stored vector (no network: the fast path) but ranks "
            "worse (Holidays mAP 0.922 -> 0.878)."
        ),
    ] = None,
    dba: Annotated[
        bool | None, typer.Option("--dba/--no-dba", help="Re-rank with database-side augmentation (default: on).")
    ] = None,
    expand: Annotated[
        bool | None,
        typer.Option("--expand/--no-expand", help="alpha query expansion (default: off; on with --preset category)."),
    ] = None,
    verify: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Re-rank the first N results by pixel verification (local features + geometry), best first, "
            "with a 'verified' score (1 = the same picture): finds the original of an edited copy. ~20 ms a result. "
            "Default: as the preset says (instance: the first 10 of every query, and the next 20 when none of "
            "those is tied to the probe; copies first, then what a homography ties to the probe, with its "
            "'inliers'); 0 = off.",
        ),
    ] = None,
    dirs: Annotated[list[Path] | None, typer.Option("--dir", help="Folder of probe images (repeatable).")] = None,
    duplicates_only: Annotated[
        bool,
        typer.Option(
            "--duplicates-only", help="Only list probes already in the library (exact, same pixels or edited copy)."
        ),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(help="With --duplicates-only: verified-score threshold for edited copies (default: calibrated)."),
    ] = None,
    library: LibraryOption = None,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Find the indexed images most similar to each probe (score = cosine similarity, 1 = identical).

    The order is the re-ranked one (--preset), so a lower cosine can rank above a higher one;
    --no-dba --invariant none gives the plain cosine order. Examples:

      searcher query copy.jpg --verify 10        # find the original of an edited copy

      searcher query tulip.jpg --preset category # the same kind of flower, not the same photo

      searcher query ~/photos/a.jpg --invariant none   # an indexed photo from its stored vector: fastest

    Exit code 1 when a probe cannot be read (the others are still answered). With --duplicates-only:
    exit code 0 when no probe is already in the library, 3 when some are.
    """
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    images = [*(images or []), *(dirs or [])]
    if not images:
        raise typer.BadParameter("give probe images or --dir FOLDER")
    if duplicates_only:
        from searcher.cli.duplicates import run_incoming_check

        run_incoming_check(images, library, threshold, backbone, json_output)
        return
    if threshold is not None:
        raise typer.BadParameter("--threshold applies to --duplicates-only")
    with open_library(library) as lib:
        results = lib.query(
            images, k=k, backbone=backbone, pooling=pooling, include_self=include_self,
            invariant={"none": False, "rotations": True}.get(invariant or "", invariant), augment=dba, expand=expand,
            preset=preset, verify=verify,
        )  # fmt: skip
    if json_output:
        print_json([r.as_dict() for r in results])
    else:
        for result in results:
            if result.error:
                err_console.print(f"[red]error:[/] {escape(result.query)}: {escape(result.error)}")
                continue
            table = Table(title=escape(result.query), title_justify="left", header_style="bold")
            table.add_column("rank", justify="right")
            table.add_column("score", justify="right")
            checked_any = any(hit.verified is not None for hit in result.results)
            if checked_any:
                table.add_column("verified", justify="right")  # 1 = the same picture (an edited copy)
                table.add_column("inliers", justify="right")  # what a homography ties to the probe (not copies)
            table.add_column("path", overflow="fold")
            table.add_column("size", justify="right")
            for hit in result.results:
                size = f"{hit.width}x{hit.height}" if hit.width else ""
                checked = (
                    []
                    if not checked_any
                    else [
                        "" if hit.verified is None else f"{hit.verified:.3f}",
                        "" if hit.inliers is None else str(hit.inliers),
                    ]
                )
                table.add_row(str(hit.rank), f"{hit.score:.4f}", *checked, escape(hit.path), size)
            console.print(table)
    if any(r.error for r in results):
        raise typer.Exit(EXIT_ERROR)


@app.command()
@handle_errors
def info(library: LibraryOption = None, json_output: JsonOption = False, debug: DebugOption = False) -> None:
    """Where the library is, its backbone(s), and how many images, vectors and failures it holds."""
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    with open_library(library) as lib:
        data = lib.info()
    if json_output:
        print_json(data)
        return
    console.print(f"[bold]library[/]   {escape(data['library'])}")
    console.print(f"[bold]backbone[/]  {data['backbone']}")
    console.print(f"[bold]images[/]    {data['images']}")
    console.print(f"[bold]vectors[/]   {data['vectors']}")
    console.print(f"[bold]failures[/]  {data['failures']}")
    console.print(f"[bold]on disk[/]   {human_bytes(data['size_bytes'])}")
    if len(data["models"]) > 1:
        table = Table(title="embedding models", header_style="bold")
        for col in ("backbone", "pooling", "dim", "vectors", "default"):
            table.add_column(col)
        for m in data["models"]:
            table.add_row(m["backbone"], m["pooling"], str(m["dim"]), str(m["vectors"]), "*" if m["default"] else "")
        console.print(table)


@app.command()
@handle_errors
def failures(library: LibraryOption = None, json_output: JsonOption = False, debug: DebugOption = False) -> None:
    """List the files that could not be indexed, with the reason (retry with `index --retry-failed`)."""
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    with open_library(library) as lib:
        rows = lib.failures()
    if json_output:
        print_json([{"path": p, "error": e} for p, e in rows])
        return
    if not rows:
        console.print("no failures")
        return
    table = Table(header_style="bold")
    table.add_column("path", overflow="fold")
    table.add_column("reason", overflow="fold")
    for path, error in rows:
        table.add_row(escape(path), escape(error))
    console.print(table)
