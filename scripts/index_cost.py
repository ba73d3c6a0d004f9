"""Cost per indexed image of each backbone: a fresh library indexes one folder once per backbone.

    python scripts/index_cost.py [--folder ../shared/datasets/holidays-dev/images] [--out JSON]

Writes, per backbone: seconds to index the folder (model loading excluded from ``embed_seconds``),
milliseconds per image, and the library's bytes per image on disk (SQLite + FAISS: vector,
thumbnail, metadata), not counting the runtime's exported model (``runtime/``, once per backbone).
Backbones whose weights are missing are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from quality_report import BACKBONES, HOLIDAYS  # the shared photos and weights (SEARCHER_SHARED)

from searcher.library import Library

HERE = Path(__file__).resolve().parent


def library_bytes(root: Path) -> int:
    """Bytes of the library's own files, without the runtime's exported models."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "runtime" not in p.relative_to(root).parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(HOLIDAYS / "images"))
    ap.add_argument("--out", default=str(HERE / "results" / "index_cost_per_backbone.json"))
    args = ap.parse_args()
    out: dict = {"folder": str(Path(args.folder).resolve()), "backbones": {}, "skipped": {}}
    for name, weights in BACKBONES.items():
        if weights is not None and not weights.exists():
            out["skipped"][name] = f"no weights at {weights}"
            continue
        with tempfile.TemporaryDirectory() as tmp:
            with Library.open(tmp, create=True) as lib:
                start = time.monotonic()
                report = lib.index([args.folder], backbone=name, weights=str(weights) if weights else None)
                wall = time.monotonic() - start
            images = max(1, report.embedded)
            row = {
                "images": report.new,
                "embedded": report.embedded,
                "seconds": round(wall, 1),
                "embed_seconds": round(report.embed_seconds, 1),
                "ms_per_image_embed": round(1000 * report.embed_seconds / images, 1),
                "ms_per_image_total": round(1000 * wall / images, 1),
                "library_bytes_per_image_without_runtime_models": round(library_bytes(Path(tmp)) / max(1, report.new)),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        out["backbones"][name] = row
        print(name, row, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
