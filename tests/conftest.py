"""Shared test helpers: where ../shared is, and images the tests make."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """``$SEARCHER_SHARED`` or ``../shared`` beside the repository; fails loudly when missing."""
    path = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
    if not (path / "datasets").is_dir():
        pytest.fail(f"shared data not found at {path}: set SEARCHER_SHARED or put shared/ beside the repo")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def sample_photos(shared: Path) -> Path:
    return shared / "datasets" / "sample-photos" / "images"


def synthetic_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A reproducible picture with structure (gradient background, shapes), distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    slope = rng.uniform(-1, 1, (3, 2))
    arr = np.stack([base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)], axis=-1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    return img


@pytest.fixture
def make_photo():
    """``make_photo(path, seed, size=(320, 240))`` writes a synthetic photo (format from the extension)."""

    def write(path: Path, seed: int, size: tuple[int, int] = (320, 240), **save_kwargs) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        synthetic_photo(seed, size).save(path, **save_kwargs)
        return path

    return write


@pytest.fixture(scope="session")
def holidays_subset(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first 30 groups of ``holidays-dev`` (82 photos; links, not copies), their ground truth, and a
    library that has indexed them with the default backbone: ``{"folder", "groundtruth", "library", "groups"}``."""
    import json

    from searcher import Library

    gt = json.loads((shared / "datasets" / "holidays-dev" / "groundtruth.json").read_text())
    groups = gt["groups"][:30]
    root = tmp_path_factory.mktemp("holidays-subset")
    folder = root / "images"
    folder.mkdir()
    for group in groups:
        for name in group:
            (folder / name).symlink_to(shared / "datasets" / "holidays-dev" / "images" / name)
    truth = root / "groundtruth.json"
    truth.write_text(json.dumps({"groups": groups, "queries": {g[0]: g[1:] for g in groups}}))
    library = root / "library"
    with Library.open(library) as lib:
        lib.index([folder])
    return {"folder": folder, "groundtruth": truth, "library": library, "groups": groups}
