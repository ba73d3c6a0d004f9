"""`searcher eval`: retrieval quality of a folder with ground truth, and a near-duplicate benchmark."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

import typer

from searcher.cli.app import (
    DebugOption,
    JsonOption,
    PresetOption,
    app,
    console,
    handle_errors,
    open_library,
    print_json,
)


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, e.g. 1,0.707,1.414") from None


def _eval_library(folder: Path) -> Path:
    """Where `searcher eval` keeps the vectors of a folder when no library is named (so benchmark
    images never end up in the user's own library): the per-user cache, one library per folder."""
    from platformdirs import user_cache_dir

    digest = hashlib.sha1(os.fsencode(os.path.abspath(folder))).hexdigest()[:16]
    return Path(user_cache_dir("searcher", appauthor=False)) / "eval" / f"{folder.name or 'root'}-{digest}"


@app.command("eval")
@handle_errors
def eval_command(
    folder: Annotated[Path, typer.Argument(help="Folder of images to evaluate (indexed first; only new work).")],
    groundtruth: Annotated[
        Path | None,
        typer.Option(
            "--groundtruth",
            "-g",
            help="Ground-truth JSON with 'groups' and/or 'queries' (default: FOLDER/groundtruth.json, "
            "else FOLDER/../groundtruth.json).",
        ),
    ] = None,  # fmt: skip
    protocol: Annotated[str, typer.Option(help="auto (queries when the file has them), queries, or groups.")] = "auto",
    top: Annotated[str, typer.Option("-k", "--at", help="Cut-offs for precision@k and recall@k.")] = "1,5,10",
    plain: Annotated[bool, typer.Option("--plain", help="Turn every re-ranking technique off (baseline).")] = False,
    preset: PresetOption = "instance",
    invariant: Annotated[
        str | None,
        typer.Option(help="Probe transforms: none, rotations, all (rotations and flips). Default: rotations."),
    ] = None,
    dba: Annotated[int | None, typer.Option(help="DBA neighbours (0 = off). Default: 2.")] = None,
    dba_global: Annotated[
        bool, typer.Option("--dba-global", help="Exact DBA (neighbours from the whole folder, slower).")
    ] = False,
    qe: Annotated[int | None, typer.Option(help="alpha-QE neighbours (0 = off). Default: 0.")] = None,
    alpha: Annotated[float, typer.Option(help="Weight exponent of DBA and QE neighbours.")] = 3.0,
    trim: Annotated[
        bool | None,
        typer.Option("--trim/--no-trim", help="Also search framed probes without their frame. Default: on."),
    ] = None,
    whiten: Annotated[
        int | None, typer.Option(help="PCA-whiten to this many dimensions, learned on the folder (off).")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="squash (the stored vectors) or aspect (re-embed keeping the aspect ratio).")
    ] = "squash",
    scales: Annotated[
        str | None, typer.Option(help="Multi-scale: side multipliers to average, e.g. 0.707,1,1.414 (re-embeds).")
    ] = None,
    near_duplicates: Annotated[
        int,
        typer.Option(
            "--near-duplicates",
            help="Instead: edited copies of this many photos of FOLDER query the folder; recall@1 per edit.",
        ),
    ] = 0,
    edits: Annotated[
        str | None,
        typer.Option(
            help="Edit kinds for --near-duplicates: names, or 'classic' (the 20 of `searcher calibrate`, default) "
            "or 'wide' (35 kinds: deeper crops, rotations, blur, screenshots, watermarks, stickers, perspective)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="With --near-duplicates: draw edit parameters from the 'tune' or the held-out 'report' bins "
            "(default: the whole ranges)."
        ),
    ] = None,
    verify: Annotated[
        int,
        typer.Option(
            help="Re-rank the first N results of each query by pixel verification, as `searcher query` does "
            "with its first 10 (copies first, then what a homography ties to the probe; 0 = off)."
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the edits.")] = 0,
    keep_copies: Annotated[
        Path | None, typer.Option("--keep-copies", help="Write the edited copies here (default: a temporary folder).")
    ] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", "-b", help="Backbone (default: the library's).")] = None,
    weights: Annotated[str | None, typer.Option(help="'imagenet', a weights FILE, or 'none'.")] = None,
    pooling: Annotated[str | None, typer.Option(help="avg, max or gem.")] = None,
    no_index: Annotated[
        bool, typer.Option("--no-index", help="Use the vectors already in the library; do not index FOLDER.")
    ] = False,
    per_query: Annotated[bool, typer.Option("--per-query", help="Add each query's AP to the JSON.")] = False,
    library: Annotated[
        Path | None,
        typer.Option(
            "--library",
            "-L",
            envvar="SEARCHER_LIBRARY",
            help="Library to index into (default: a per-folder library in the user cache, so benchmark "
            "images stay out of your own).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Measure retrieval quality like the literature: mAP, precision@k and recall@k.

    Every ground-truth query ranks every other image of FOLDER (the query itself is removed from its
    own ranking); probes are embedded as a new photo would be (rotated views with --invariant).
    Default techniques (--preset instance): rotation-invariant probes (also without a solid frame)
    and DBA (k=2); --preset category: square-rooted vectors, DBA (k=5) and alpha-QE (k=5) over the
    first 500 results; --plain turns them off. With --near-duplicates: probes in all 8
    rotations/flips, no DBA.
    """
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    from searcher import rerank
    from searcher.cli.progress import RichProgress
    from searcher.evaluate import GroundTruth, RetrievalOptions, evaluate_folder, near_duplicate_benchmark

    ks = tuple(int(k) for k in (_floats(top, "--at") or (1, 5, 10)))
    d = rerank.PRESETS[preset]
    dup = near_duplicates > 0  # duplicate search: rotations and flips, no re-ranking (DBA blurs copies)
    default_invariant = "none" if plain else ("all" if dup else d.invariant)
    opts = RetrievalOptions(
        invariant=rerank.invariance_kinds(invariant if invariant is not None else default_invariant),
        dba_k=dba if dba is not None else (0 if plain or dup or not d.augment else d.dba_k),
        dba_alpha=alpha,
        qe_k=qe if qe is not None else (0 if plain or dup or not d.expand else d.qe_k),
        qe_alpha=alpha,
        whiten=whiten is not None,
        whiten_dim=whiten or None,
        mode=mode,
        scales=_floats(scales, "--scales") or (1.0,),
        shortlist=d.shortlist,
        trim=trim if trim is not None else (d.trim and not plain),
        margin=d.margin,
        dba_local=d.dba_local and not dba_global,
        power=1.0 if plain or dup else d.power,
        regional_margin=None if plain else d.regional_margin,
    )
    if mode not in ("squash", "aspect"):
        raise typer.BadParameter("--mode must be squash or aspect")
    folder_path = Path(folder).expanduser()
    lib_path = library if library is not None else _eval_library(folder_path.resolve())
    progress = RichProgress(enabled=not quiet and not json_output)
    with open_library(lib_path, create=True) as lib:
        common = dict(backbone=backbone, weights=weights, pooling=pooling, index=not no_index, progress=progress)
        if near_duplicates > 0:
            from searcher.edits import KIND_SETS, SPLITS

            if split is not None and split not in SPLITS:
                raise typer.BadParameter(f"--split must be one of {', '.join(SPLITS)}")
            kinds = KIND_SETS.get(edits or "") or ([k.strip() for k in edits.split(",")] if edits else None)
            report = near_duplicate_benchmark(
                lib, folder_path, sources=near_duplicates, kinds=kinds, seed=seed, options=opts,
                workdir=keep_copies, verify_top=verify, split=split, **common,
            )  # fmt: skip
            _print_near_duplicates(report, json_output)
            return
        gt_path = groundtruth or _find_groundtruth(folder_path)
        gt = GroundTruth.load(gt_path, protocol)
        result = evaluate_folder(lib, folder_path, gt, opts, ks=ks, verify_top=verify, **common)
    if json_output:
        print_json(result.as_dict(per_query))
        return
    m = result.metrics
    table = Table(
        title=f"{result.backbone} on {result.folder} ({result.images} images, {m.queries} queries, {gt.protocol})",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mAP", f"{m.map:.4f}")
    table.add_row("mAP (trapezoid, Holidays script)", f"{m.map_trapezoid:.4f}")
    for k in ks:
        table.add_row(f"precision@{k}", f"{m.precision[k]:.4f}")
    for k in ks:
        table.add_row(f"recall@{k}", f"{m.recall[k]:.4f}")
    console.print(table)
    console.print(f"techniques: {opts.describe()}")
    if result.missing:
        console.print(f"[yellow]{len(result.missing)} ground-truth names are not indexed images of the folder[/]")


def _find_groundtruth(folder: Path) -> Path:
    for candidate in (folder / "groundtruth.json", folder.parent / "groundtruth.json"):
        if candidate.is_file():
            return candidate
    raise typer.BadParameter(f"no groundtruth.json in {folder} or its parent; pass --groundtruth FILE")


def _print_near_duplicates(report, json_output: bool) -> None:  # report: NearDuplicateReport
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    if json_output:
        print_json(report.as_dict())
        return
    table = Table(
        title=f"near-duplicates: {report.copies} edited copies of {report.sources} photos vs {report.images} images "
        f"({report.backbone})",
        title_justify="left",
        header_style="bold",
    )
    pairs = report.pairs
    columns = ["edit", "copies", "recall@1", "recall@5", "recall@10", *(["found at threshold"] if pairs else [])]
    for col in columns:
        table.add_column(col, justify="left" if col == "edit" else "right")
    overall = {**report.overall, **({"recall_at_threshold": pairs["recall"]} if pairs else {})}
    for kind, r in [*report.per_kind.items(), ("[bold]all[/]", overall)]:
        at_threshold = [f"{r['recall_at_threshold']:.3f}"] if pairs else []
        table.add_row(kind, str(r["copies"]), *(f"{r[f'recall@{k}']:.3f}" for k in (1, 5, 10)), *at_threshold)
    console.print(table)
    verified = f" + pixel verification of the top {report.verify_top}" if report.verify_top else ""
    console.print(f"techniques: {report.options.describe()}{verified}")
    if pairs:
        console.print(
            f"pairs called duplicates at the {pairs['threshold_source']} threshold {pairs['threshold']:g}: "
            f"{pairs['right_pairs']} right, {pairs['wrong_pairs']} wrong: precision {pairs['precision']:.4f}, "
            f"recall {pairs['recall']:.4f}"
        )
