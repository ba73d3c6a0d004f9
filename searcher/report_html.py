"""A self-contained HTML page to review duplicate groups (thumbnails inlined as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import os
from typing import TYPE_CHECKING

from searcher.decode import DecodeError, open_image

if TYPE_CHECKING:
    from searcher.duplicates import DuplicateReport

THUMB = 200

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em} .group{background:#fff;border:1px solid #ddd;border-radius:8px;margin:1em 0;padding:.8em}
.tier{font-weight:bold;text-transform:uppercase;font-size:.85em;padding:.1em .5em;border-radius:4px;color:#fff}
.exact{background:#b71c1c}.pixels{background:#d84315}.near{background:#ef6c00}.similar{background:#546e7a}
.members{display:flex;flex-wrap:wrap;gap:.8em;margin-top:.6em}
.m{width:220px;font-size:.8em;border:3px solid #eee;border-radius:6px;padding:4px;word-break:break-all}
.m.keep{border-color:#2e7d32} .m img{max-width:210px;max-height:210px;display:block;margin:auto}
.badge{font-weight:bold;color:#2e7d32} .q{color:#b71c1c;font-weight:bold}
"""


def thumbnail_data_uri(path: str, side: int = THUMB) -> str | None:
    try:
        img = open_image(path, min_side=side).image
    except DecodeError:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render(report: DuplicateReport) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>searcher: duplicates</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Duplicate review: {len(report.groups)} groups</h1>",
        f"<p>model {html.escape(report.model)}; verified-score threshold {report.thresholds.verified:.3f} "
        f"({html.escape(report.thresholds.source)}). Green frame: the copy the keep rules keep; "
        "<span class='q'>quarantine</span>: what <code>searcher apply</code> would move. "
        "<em>similar</em> groups are suggestions only and are never acted on.</p>",
    ]
    for i, g in enumerate(report.groups, 1):
        parts.append(
            f"<div class='group'><span class='tier {g.tier}'>{g.tier}</span> group {i} "
            f"&middot; {len(g.members)} files &middot; spread {g.spread:.3f}<div class='members'>"
        )
        for m in g.members:
            uri = thumbnail_data_uri(m.path)
            img = f"<img src='{uri}' alt=''>" if uri else "<div>(no preview)</div>"
            status = (
                "<span class='badge'>KEEP</span>"
                if m.keep
                else ("<span class='q'>quarantine</span>" if g.tier != "similar" else "")
            )
            if m.reference:
                status += " (reference)"
            parts.append(
                f"<div class='m{' keep' if m.keep else ''}'>{img}<div>{status} score {m.score:.3f} "
                f"({m.match})</div><div>{m.width}x{m.height} &middot; {m.size:,} B &middot; "
                f"{html.escape(m.format or '')} &middot; {html.escape(m.mtime)}</div>"
                f"<div>{html.escape(m.path)}</div></div>"
            )
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: DuplicateReport, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(report))
