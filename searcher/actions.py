"""Acting on duplicates, safely and reversibly: plan, apply (quarantine), undo.

* :func:`make_plan` turns a :class:`~searcher.duplicates.DuplicateReport` into a plan: for
  every exact / pixels / near group, move each copy that is not kept (and not in a
  reference folder) to quarantine. ``similar`` groups are never acted on. The plan is
  plain JSON (``--plan plan.json``) that a person can read and edit before applying.
* :func:`apply_plan` moves files into a quarantine folder (by default
  ``<library>/quarantine/<batch>/``, mirroring each file's absolute path); it never
  deletes. Before each move it checks the file is unchanged since planning (size,
  mtime, content hash) and that the copy being kept is still there with the planned
  content; it refuses otherwise. Each move is written ahead to the batch's journal
  (``journal.jsonl``, fsynced) before it happens and confirmed after, so a crash at
  any point leaves a journal that :func:`undo` can finish from.
* :func:`undo` moves every quarantined file of a batch (by default: of every batch not
  yet undone, newest first) back to where it was, checking it is byte-identical.

Batches are listed in ``<library>/quarantine.log`` (one JSON line per apply), so a
quarantine folder outside the library (``--quarantine DIR``) is found again by undo.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searcher.files import absolute, content_hash, fsync_dir

if TYPE_CHECKING:
    from searcher.duplicates import DuplicateReport

PLAN_VERSION = 1
QUARANTINE_DIR = "quarantine"
LOG_NAME = "quarantine.log"
JOURNAL_NAME = "journal.jsonl"
ACTIONABLE_TIERS = ("exact", "pixels", "near")


class ActionError(ValueError):
    """A plan or journal problem the user can act on."""


# --- plans ---------------------------------------------------------------------------------------


def make_plan(report: DuplicateReport, library_root: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``apply`` would do for ``report``: a JSON-ready dict (nothing is touched)."""
    moves: list[dict[str, Any]] = []
    for gi, group in enumerate(report.groups):
        if group.tier not in ACTIONABLE_TIERS:
            continue
        kept = group.kept
        for m in group.members:
            if m.keep or m.reference:
                continue
            moves.append(
                {
                    "group": gi, "tier": group.tier, "path": m.path, "content_hash": m.content_hash,
                    "size": m.size, "mtime_ns": m.mtime_ns, "score": round(m.score, 4),
                    "keep": kept.path, "keep_hash": kept.content_hash,
                }
            )  # fmt: skip
    return {
        "version": PLAN_VERSION,
        "library": str(absolute(library_root)),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": report.model,
        "threshold": report.thresholds.verified,
        "keep_rules": report.rules.as_dict(),
        "moves": moves,
        "bytes": sum(m["size"] for m in moves),
    }


def write_plan(plan: dict[str, Any], path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(plan, indent=2, ensure_ascii=False) + "\n")


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ActionError(f"cannot read plan {path}: {exc}") from exc
    if not isinstance(plan, dict) or plan.get("version") != PLAN_VERSION or not isinstance(plan.get("moves"), list):
        raise ActionError(f"{path} is not a searcher duplicates plan (version {PLAN_VERSION})")
    return plan


# --- journal helpers ---------------------------------------------------------------------------------


class Journal:
    """An append-only JSON-lines file; every record is flushed and fsynced before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        out = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ActionError(f"cannot read journal {path}: {exc}") from exc
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash: the move it announced is checked on disk
        return out


def _move(src: Path, dst: Path) -> None:
    """Move one file, keeping its bytes and mtime; across filesystems copy, fsync, then unlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        raise ActionError(f"refusing to overwrite {dst}")
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another filesystem
            raise
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        try:
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            if content_hash(tmp) != content_hash(src):
                raise ActionError(f"copy of {src} to {dst} is not identical; nothing moved")
            os.replace(tmp, dst)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.unlink(src)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


def _quarantine_path(batch_dir: Path, original: str) -> Path:
    """Where a file goes in quarantine: its absolute path mirrored under ``files/``."""
    drive, rest = os.path.splitdrive(original)
    rel = rest.lstrip("/\\")
    if drive:
        rel = os.path.join(drive.rstrip(":"), rel)
    return batch_dir / "files" / rel


# --- apply -------------------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    batch: str
    quarantine: str
    moved: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "quarantine": self.quarantine,
            "moved": [{"from": a, "to": b} for a, b in self.moved],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _unchanged(path: str, size: int, mtime_ns: int, digest: str) -> str | None:
    """None when ``path`` still has the planned content, else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no longer exists"
    except OSError as exc:
        return exc.strerror or str(exc)
    if st.st_size != size or st.st_mtime_ns != mtime_ns:
        # a touched but identical file is fine; anything else changed since planning
        try:
            if content_hash(path) == digest:
                return None
        except OSError as exc:
            return exc.strerror or str(exc)
        return "changed since the plan was made"
    try:
        if content_hash(path) != digest:
            return "changed since the plan was made"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _log_path(library_root: Path) -> Path:
    return library_root / LOG_NAME


def apply_plan(
    plan: dict[str, Any],
    library_root: str | os.PathLike[str],
    *,
    quarantine: str | os.PathLike[str] | None = None,
    reference: list[str] | None = None,
) -> ApplyResult:
    """Move the plan's files into a new quarantine batch (see the module docstring)."""
    root = Path(absolute(library_root))
    qroot = Path(absolute(quarantine)) if quarantine else root / QUARANTINE_DIR
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    batch_dir = qroot / batch
    refs = [absolute(r) for r in (reference or [])] + list(plan.get("keep_rules", {}).get("reference", []))
    result = ApplyResult(batch, str(batch_dir))
    batch_dir.mkdir(parents=True, exist_ok=False)
    with open(_log_path(root), "a", encoding="utf-8") as log:
        log.write(json.dumps({"batch": batch, "dir": str(batch_dir), "created": time.time()}) + "\n")
        log.flush()
        os.fsync(log.fileno())
    journal = Journal(batch_dir / JOURNAL_NAME)
    keep_checked: dict[str, str | None] = {}
    try:
        journal.write({"op": "begin", "batch": batch, "plan_created": plan.get("created"), "library": str(root)})
        for move in plan["moves"]:
            src = str(move["path"])
            if any(src == r or src.startswith(r.rstrip(os.sep) + os.sep) for r in refs):
                result.skipped.append((src, "in a reference folder"))
                continue
            if Path(src).resolve().is_relative_to(qroot.resolve()):
                result.skipped.append((src, "already in quarantine"))
                continue
            keep = str(move.get("keep", ""))
            if keep not in keep_checked:
                keep_checked[keep] = (
                    _unchanged(keep, os.stat(keep).st_size, os.stat(keep).st_mtime_ns, move["keep_hash"])
                    if os.path.exists(keep)
                    else "no longer exists"
                )
            if keep_checked[keep] is not None:
                result.skipped.append((src, f"the copy to keep ({keep}) {keep_checked[keep]}"))
                continue
            if os.path.realpath(keep) == os.path.realpath(src):
                result.skipped.append((src, "is the copy to keep"))
                continue
            why = _unchanged(src, int(move["size"]), int(move["mtime_ns"]), str(move["content_hash"]))
            if why is not None:
                result.skipped.append((src, why))
                continue
            dst = _quarantine_path(batch_dir, src)
            journal.write({"op": "move", "src": src, "dst": str(dst), "hash": move["content_hash"]})
            try:
                _move(Path(src), dst)
            except (OSError, ActionError) as exc:
                journal.write({"op": "failed", "src": src, "dst": str(dst), "error": str(exc)})
                result.skipped.append((src, f"could not move: {exc}"))
                continue
            journal.write({"op": "done", "src": src, "dst": str(dst)})
            result.moved.append((src, str(dst)))
        journal.write({"op": "end"})
    finally:
        journal.close()
    return result


# --- undo --------------------------------------------------------------------------------------------


@dataclass
class UndoResult:
    restored: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "restored": [{"from": a, "to": b} for a, b in self.restored],
            "problems": [{"path": p, "reason": r} for p, r in self.problems],
        }


def batches(library_root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every apply batch of this library, oldest first, with ``undone`` set for those already undone."""
    log = _log_path(Path(absolute(library_root)))
    if not log.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "undone" in rec:
            if rec["undone"] in out:
                out[rec["undone"]]["undone"] = True
            continue
        rec["undone"] = False
        out[rec["batch"]] = rec
    return list(out.values())


def undo(library_root: str | os.PathLike[str], batch: str | None = None) -> UndoResult:
    """Put quarantined files back where they were: one ``batch``, or every batch not yet undone."""
    root = Path(absolute(library_root))
    known = batches(root)
    if batch is not None:
        todo = [b for b in known if b["batch"] == batch]
        if not todo:
            raise ActionError(f"no quarantine batch {batch!r} in this library")
    else:
        todo = [b for b in known if not b["undone"]]
    result = UndoResult()
    for rec in reversed(todo):
        batch_dir = Path(rec["dir"])
        journal_path = batch_dir / JOURNAL_NAME
        if not journal_path.exists():
            result.problems.append((str(batch_dir), "journal missing"))
            continue
        entries = Journal.read(journal_path)
        intents = [e for e in entries if e.get("op") == "move"]
        restored_before = {e["src"] for e in entries if e.get("op") == "restored"}
        journal = Journal(journal_path)
        ok = True
        try:
            for e in reversed(intents):
                src, dst, digest = Path(e["src"]), Path(e["dst"]), e["hash"]
                if e["src"] in restored_before:
                    continue
                if not dst.exists():
                    if src.exists():
                        continue  # the move never happened (crash before it)
                    result.problems.append((str(src), f"missing from quarantine ({dst})"))
                    ok = False
                    continue
                if src.exists() or src.is_symlink():
                    result.problems.append((str(src), "a file is in its place now; left in quarantine"))
                    ok = False
                    continue
                if content_hash(dst) != digest:
                    result.problems.append((str(src), "the quarantined copy was changed; left in quarantine"))
                    ok = False
                    continue
                journal.write({"op": "restore", "src": str(src), "dst": str(dst)})
                _move(dst, src)
                journal.write({"op": "restored", "src": str(src)})
                result.restored.append((str(dst), str(src)))
        finally:
            journal.close()
        if ok:
            with open(_log_path(root), "a", encoding="utf-8") as log:
                log.write(json.dumps({"undone": rec["batch"], "at": time.time()}) + "\n")
                log.flush()
                os.fsync(log.fileno())
            _remove_empty_dirs(batch_dir / "files")
        result.batches.append(rec["batch"])
    return result


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir():
        return
    for dirpath, _dirnames, _filenames in os.walk(folder, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
