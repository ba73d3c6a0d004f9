"""The duplicates review of the web app, over the same mechanism as the CLI.

The report comes from :func:`searcher.duplicates.find_duplicates` (computed on first view, kept in memory
until an action makes it stale). Actions:

* **keep**: which member of a group is kept (in memory, like editing a ``--plan`` file); undo: keep the
  previous one again.
* **not a duplicate**: :func:`searcher.decisions.add_not_duplicate`, the memory ``searcher not-duplicate``
  writes; undo: :func:`searcher.decisions.remove_not_duplicate`.
* **quarantine the rest**: :func:`searcher.actions.make_plan` for that one group, then
  :func:`searcher.actions.apply_plan` (checks every file is unchanged, journals every move, never deletes);
  undo: :func:`searcher.actions.undo` of that batch (byte-identical check).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from searcher import actions, decisions
from searcher.duplicates import TIERS, DuplicateReport, Group, find_duplicates
from searcher.library import Library

GROUPS_PER_PAGE = 20


class ReviewError(ValueError):
    """An action that cannot be done as asked (stale page, unknown group or member)."""


class DuplicateReview:
    """One library's duplicate groups and the actions on them; thread-safe."""

    def __init__(self, lib: Library, backbone: str | None = None) -> None:
        self.lib = lib
        self.backbone = backbone
        self._lock = threading.RLock()
        self._report: DuplicateReport | None = None
        self.generation = 0  # grows with every change, so a page made before it is refused

    def report(self) -> DuplicateReport:
        with self._lock:
            if self._report is None:
                self._report = find_duplicates(self.lib, backbone=self.backbone)
                self.generation += 1
            return self._report

    def invalidate(self) -> None:
        with self._lock:
            self._report = None

    def page(self, tier: str | None, page: int) -> dict[str, Any]:
        """One page of groups (optionally of one tier) and the count per tier."""
        with self._lock:
            report = self.report()
            counts = {t: 0 for t in TIERS}
            chosen: list[tuple[int, Group]] = []
            for gi, g in enumerate(report.groups):
                counts[g.tier] = counts.get(g.tier, 0) + 1
                if tier in (None, "", g.tier):
                    chosen.append((gi, g))
            pages = max(1, -(-len(chosen) // GROUPS_PER_PAGE))
            page = min(max(1, page), pages)
            part = chosen[(page - 1) * GROUPS_PER_PAGE : page * GROUPS_PER_PAGE]
            return {
                "generation": self.generation, "counts": counts, "page": page, "pages": pages,
                "total": len(chosen), "threshold": report.thresholds.verified,
                "groups": [{"id": gi, **g.as_dict()} for gi, g in part],
            }  # fmt: skip

    def _group(self, generation: int, group_id: int) -> Group:
        report = self.report()
        if generation != self.generation:
            raise ReviewError("the duplicates changed since this page was made: reload it")
        if not 0 <= group_id < len(report.groups):
            raise ReviewError(f"no group {group_id}")
        return report.groups[group_id]

    def keep(self, generation: int, group_id: int, path: str) -> dict[str, Any]:
        """Keep ``path`` in that group instead of the current choice."""
        with self._lock:
            group = self._group(generation, group_id)
            chosen = [m for m in group.members if m.path == path]
            if not chosen:
                raise ReviewError(f"{path} is not in group {group_id}")
            if chosen[0].reference is False and any(m.reference for m in group.members if m.path != path):
                raise ReviewError("a copy in a reference folder is kept in this group")
            previous = group.kept.path
            for m in group.members:
                m.keep = m.path == path
            group.members.sort(key=lambda m: not m.keep)
            self.generation += 1
            return {"done": f"keeping {path}", "undo": {"action": "keep", "group": group_id, "path": previous}}

    def not_duplicate(self, hash_a: str, hash_b: str, note: str) -> dict[str, Any]:
        if hash_a == hash_b:
            raise ReviewError("these two files have the same bytes: they are exact duplicates")
        decisions.ensure_tables(self.lib.engine)
        with self.lib.sessions() as session, session.begin():
            added = decisions.add_not_duplicate(session, hash_a, hash_b, note=note)
        self.invalidate()
        return {"done": "remembered: not duplicates" if added else "already remembered",
                "undo": {"action": "forget-not-duplicate", "a": hash_a, "b": hash_b}}  # fmt: skip

    def forget_not_duplicate(self, hash_a: str, hash_b: str) -> dict[str, Any]:
        decisions.ensure_tables(self.lib.engine)
        with self.lib.sessions() as session, session.begin():
            removed = decisions.remove_not_duplicate(session, hash_a, hash_b)
        self.invalidate()
        return {"done": "forgotten" if removed else "nothing to forget"}

    def quarantine(self, generation: int, group_id: int) -> dict[str, Any]:
        """Move every copy of the group that is not kept into a new quarantine batch (journalled)."""
        with self._lock:
            group = self._group(generation, group_id)
            if group.tier not in actions.ACTIONABLE_TIERS:
                raise ReviewError(f"'{group.tier}' groups are suggestions only: nothing is moved for them")
            report = self.report()
            plan = actions.make_plan(replace(report, groups=[group]), self.lib.root)
            if not plan["moves"]:
                raise ReviewError("nothing to move in this group")
            result = actions.apply_plan(plan, self.lib.root)
            moved = {src for src, _ in result.moved}
            group.members = [m for m in group.members if m.path not in moved]
            if len(group.members) < 2:
                report.groups.remove(group)
            self.generation += 1
            answer = result.as_dict()
            answer["done"] = f"moved {len(result.moved)} file(s) to quarantine"
            answer["undo"] = {"action": "undo", "batch": result.batch}
            return answer

    def undo(self, batch: str) -> dict[str, Any]:
        with self._lock:
            result = actions.undo(self.lib.root, batch)
            self.invalidate()
            answer = result.as_dict()
            answer["done"] = f"restored {len(result.restored)} file(s)"
            return answer

    def open_batches(self) -> list[dict[str, Any]]:
        """Quarantine batches not yet undone, newest first (each gets an undo button)."""
        return [b for b in reversed(actions.batches(self.lib.root)) if not b["undone"]]
