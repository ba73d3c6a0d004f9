"""Stage 1: find image files under folders, and fingerprint their content.

Walking follows symlinked folders at most once each (no loops), skips hidden
folders and the library folder itself, and never raises on an unreadable
directory: it reports it and moves on.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm", ".heic", ".heif", ".avif", ".ico", ".tga", ".jp2", ".j2k",
        ".jpx", ".psd", ".pcx", ".sgi", ".dds", ".im", ".msp", ".xbm", ".qoi", ".svg",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found on disk: absolute path, size in bytes and modification time in ns."""

    path: str
    size: int
    mtime_ns: int


def looks_like_image(name: str) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def absolute(path: str | os.PathLike[str]) -> str:
    """An absolute, normalised path that keeps symlinks as they are (like ``realpath`` minus links)."""
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def discover(
    roots: Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
    on_error: Callable[[str, str], None] | None = None,
    all_files: bool = False,
) -> Iterator[FileEntry]:
    """Yield every image file under ``roots`` (files may be given directly too).

    ``exclude`` folders are skipped (the library folder, for example). Each real
    directory is entered at most once, so symlink loops end. ``on_error(path,
    reason)`` hears about paths that could not be read, including dangling links.
    ``all_files`` yields every regular file, not only those with image extensions.
    """
    excluded = {os.path.realpath(os.fspath(p)) for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def report(path: str, reason: str) -> None:
        if on_error is not None:
            on_error(path, reason)

    def entry_for(path: str, st: os.stat_result) -> FileEntry | None:
        if path in seen_files:
            return None
        seen_files.add(path)
        return FileEntry(path, st.st_size, st.st_mtime_ns)

    for root in roots:
        root_path = absolute(root)
        try:
            st = os.stat(root_path)
        except OSError as exc:
            report(root_path, _os_reason(exc))
            continue
        if stat.S_ISREG(st.st_mode):
            found = entry_for(root_path, st)
            if found:
                yield found
            continue
        if not stat.S_ISDIR(st.st_mode):
            report(root_path, "not a regular file (a FIFO, socket or device)")
            continue
        stack = [root_path]
        while stack:
            folder = stack.pop()
            try:
                dst = os.stat(folder)
            except OSError as exc:
                report(folder, _os_reason(exc))
                continue
            key = (dst.st_dev, dst.st_ino)
            if key in seen_dirs or os.path.realpath(folder) in excluded:
                continue
            seen_dirs.add(key)
            try:
                with os.scandir(folder) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                report(folder, _os_reason(exc))
                continue
            subfolders = []
            for child in children:
                if child.name.startswith("."):
                    continue
                try:
                    cst = child.stat(follow_symlinks=True)
                except OSError as exc:
                    if all_files or looks_like_image(child.name):
                        report(child.path, _os_reason(exc))
                    continue
                if stat.S_ISDIR(cst.st_mode):
                    subfolders.append(child.path)
                elif stat.S_ISREG(cst.st_mode) and (all_files or looks_like_image(child.name)):
                    found = entry_for(child.path, cst)
                    if found:
                        yield found
                elif not stat.S_ISREG(cst.st_mode) and (all_files or looks_like_image(child.name)):
                    report(child.path, "not a regular file (a FIFO, socket or device)")
            stack.extend(reversed(subfolders))


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found (dangling symlink or removed while scanning)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == 40:  # ELOOP
        return "symlink loop"
    return exc.strerror or str(exc)


def read_error(path: str | os.PathLike[str]) -> str:
    """Why ``path`` cannot be opened for reading (e.g. "permission denied"), for a file that just failed to."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return _os_reason(exc)
    return "could not read the file"


def content_hash(path: str | os.PathLike[str]) -> str:
    """A BLAKE2b-128 hex digest of the file's bytes (the identity used to spot moves and copies)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> FileEntry:
    """Stat one file into a :class:`FileEntry`."""
    full = absolute(path)
    st = os.stat(full)
    return FileEntry(full, st.st_size, st.st_mtime_ns)


# --- writing files safely ---------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file, then fsync and rename it over ``path``.

    Readers see the old file or the new one, never a torn one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))
