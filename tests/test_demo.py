"""The README's first command, `bash scripts/demo.sh`, runs end to end on the bundled sample photos."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO


def test_demo_script_indexes_queries_finds_the_original_and_groups_duplicates(tmp_path: Path) -> None:
    env = {**os.environ, "SEARCHER_LIBRARY": str(tmp_path / "library"), "COLUMNS": "200"}
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    assert re.search(r"│\s+14 │\s+0 │\s+0 │\s+0 │\s+0 │\s+0 │", out)  # 14 new, nothing changed or failed
    assert "embedded 13 images, reused 1 stored vectors" in out  # "rocket (copy).jpg" has rocket.jpg's bytes
    # the edited copy's first result is its original, verified as the same picture
    copy_table = out.split("find its original", 1)[1]
    first = re.search(r"│\s+1 │\s+([\d.]+) │\s+([\d.]+) │\s+│ (\S+)", copy_table)  # a copy: no inliers
    assert first and first.group(3).endswith("astronaut.jpg") and float(first.group(2)) > 0.9, copy_table[:1500]
    assert "3 groups (1 exact, 2 near)" in out
