"""Parallel decoding with bounded memory, feeding the embedder.

``decode_stream`` decodes files on a pool of worker threads (Pillow releases
the GIL while it decodes and resizes) while the caller runs the model on the
previous batch, keeping at most ``window`` decoded images in memory however
many files there are.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from searcher.decode import DecodedImage, DecodeError, load_for_model

T = TypeVar("T")


@dataclass(slots=True)
class Decoded(Generic[T]):
    """One work item after decoding: ``pixels`` is None and ``error`` set when it failed."""

    item: T
    pixels: np.ndarray | None
    info: DecodedImage | None
    error: str | None


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


def decode_stream(
    items: Iterable[T],
    path_of: Callable[[T], str],
    size: tuple[int, int],
    *,
    workers: int | None = None,
    window: int = 64,
    max_pixels: int | None = None,
) -> Iterator[Decoded[T]]:
    """Decode ``items`` in order, ``workers`` at a time, never more than ``window`` ahead."""

    def work(item: T) -> Decoded[T]:
        try:
            pixels, info = load_for_model(path_of(item), size, max_pixels=max_pixels)
            info.image = None  # type: ignore[assignment]  # drop the full picture, keep the facts
            return Decoded(item, pixels, info, None)
        except DecodeError as exc:
            return Decoded(item, None, None, str(exc))

    pending: deque[Future[Decoded[T]]] = deque()
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def batched(stream: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
