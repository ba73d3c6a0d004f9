"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

Only PyTorch's *legacy* (pre-1.6, non-zip) serialization format is supported.
Such a file is a concatenation of several pickles followed by raw storage bytes:

1. the magic number ``0x1950A86A20F9469CFC6C``,
2. the protocol version (``1001``),
3. a ``sys_info`` dict (endianness and C type sizes),
4. the main pickle (usually an ``OrderedDict`` state dict) in which every
   tensor is rebuilt by ``torch._utils._rebuild_tensor_v2`` from a storage
   referenced through a persistent id
   ``('storage', storage_type, root_key, location, numel, view_metadata)``,
5. a pickle with the list of storage keys, and
6. for each of those keys, in that order: a little-endian ``int64`` element
   count followed by the storage's raw bytes.

Unpickling is *restricted*: :class:`_RestrictedUnpickler` only resolves the
handful of globals a state dict needs and maps them to local NumPy-based
stand-ins, so a malicious file cannot execute arbitrary code.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafeTorchPickleError", "TorchWeightsFormatError", "load_torch_state_dict"]

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_ZIP_MAGIC = b"PK\x03\x04"


class UnsafeTorchPickleError(pickle.UnpicklingError):
    """Raised when a ``.pth`` pickle references a global that is not on the allow-list."""


class TorchWeightsFormatError(ValueError):
    """Raised when a file is not a well-formed legacy PyTorch serialization."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class: just remembers the element dtype."""

    name: str
    dtype: np.dtype


# Legacy storage class names -> little-endian NumPy dtypes.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _Storage:
    """A storage placeholder whose bytes are filled in after the main pickle is read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageView:
    """A view into a root storage (legacy ``view_metadata``), in elements."""

    root: _Storage
    offset: int
    numel: int


@dataclass(frozen=True)
class _LazyTensor:
    """A tensor recorded during unpickling and materialised once storage bytes are read."""

    storage: _Storage | _StorageView
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> np.ndarray:
        """Return a contiguous copy of the tensor's elements with the recorded size/stride."""
        storage = self.storage
        offset = self.storage_offset
        if isinstance(storage, _StorageView):
            offset += storage.offset
            storage = storage.root
        if storage.data is None:
            raise TorchWeightsFormatError(f"storage {storage.key!r} was never read from the file")
        flat = storage.data
        size = tuple(int(s) for s in self.size)
        stride = tuple(int(s) for s in self.stride)
        if len(size) != len(stride):
            raise TorchWeightsFormatError(f"tensor size {size} and stride {stride} differ in rank")
        if any(s < 0 for s in size) or any(s < 0 for s in stride):
            raise TorchWeightsFormatError(f"negative size {size} or stride {stride}")
        numel = int(np.prod(size, dtype=np.int64))
        if numel == 0:
            return np.empty(size, dtype=flat.dtype)
        last = offset + sum((s - 1) * st for s, st in zip(size, stride, strict=True))
        if offset < 0 or last >= flat.size:
            raise TorchWeightsFormatError(
                f"tensor (offset={offset}, size={size}, stride={stride}) overruns its storage of {flat.size} elements"
            )
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:],
            shape=size,
            strides=tuple(st * itemsize for st in stride),
            writeable=False,
        )
        # np.array (not ascontiguousarray, which turns 0-d tensors into shape (1,)).
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(
    storage: _Storage | _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _LazyTensor:
    """Local replacement for ``torch._utils._rebuild_tensor_v2``."""
    del requires_grad, backward_hooks, metadata
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(
    storage: _Storage | _StorageView, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _LazyTensor:
    """Local replacement for the older ``torch._utils._rebuild_tensor``."""
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _LazyTensor, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    """Local replacement for ``torch._utils._rebuild_parameter``: a parameter is just its data."""
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves allow-listed globals and collects storage references."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeTorchPickleError(
                f"refusing to load global {module}.{name!s} from a .pth file: only "
                "collections.OrderedDict, torch.*Storage and torch._utils._rebuild_* are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeTorchPickleError(f"unsupported persistent id in .pth file: {pid!r}")
        if len(pid) != 6:
            raise TorchWeightsFormatError(f"malformed storage persistent id: {pid!r}")
        _, storage_type, root_key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchWeightsFormatError(f"unknown storage type in persistent id: {storage_type!r}")
        root_key = str(root_key)
        root = self._storages.get(root_key)
        if root is None:
            root = _Storage(root_key, storage_type.dtype, int(numel))
            self._storages[root_key] = root
        elif root.dtype != storage_type.dtype:
            raise TorchWeightsFormatError(f"storage {root_key!r} referenced with two different dtypes")
        if view_metadata is None:
            return root
        _view_key, view_offset, view_size = view_metadata
        return _StorageView(root, int(view_offset), int(view_size))


def _materialize(obj: Any) -> Any:
    """Recursively replace :class:`_LazyTensor` placeholders by NumPy arrays."""
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _materialize(obj[key])
        return obj
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def _load_plain(f: BinaryIO, what: str) -> Any:
    """Load one of the small header/trailer pickles with the same restrictions."""
    try:
        return _RestrictedUnpickler(f, {}).load()
    except (EOFError, pickle.UnpicklingError) as exc:
        if isinstance(exc, UnsafeTorchPickleError):
            raise
        raise TorchWeightsFormatError(f"could not read the {what} pickle: {exc}") from exc


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchWeightsFormatError(f"unexpected end of file while reading {what}")
    return data


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch ``.pth`` state dict as NumPy arrays, without torch.

    Args:
        path: Path of a file written by ``torch.save(model.state_dict(), path)`` with
            ``_use_new_zipfile_serialization=False`` (or by PyTorch < 1.6).

    Returns:
        A dict (insertion-ordered, as in the file) mapping parameter/buffer names to
        contiguous NumPy arrays with PyTorch's shapes and dtypes (e.g. float32 conv
        weights ``(out, in, kh, kw)``; int64 ``num_batches_tracked`` scalars are kept).

    Raises:
        UnsafeTorchPickleError: if the pickle references any global outside the small
            allow-list (e.g. ``os.system``), i.e. the file is not a plain state dict.
        TorchWeightsFormatError: if the file is truncated, uses the zip format, or is
            otherwise not a legacy PyTorch serialization.
    """
    with open(path, "rb") as raw:
        data = raw.read()
    if data[:4] == _ZIP_MAGIC:
        raise TorchWeightsFormatError(
            f"{os.fspath(path)!r} uses PyTorch's zip serialization; only the legacy format is supported"
        )
    f = io.BytesIO(data)

    magic = _load_plain(f, "magic number")
    if magic != _LEGACY_MAGIC_NUMBER:
        raise TorchWeightsFormatError(f"{os.fspath(path)!r} is not a legacy PyTorch file (bad magic number)")
    protocol = _load_plain(f, "protocol version")
    if protocol != _LEGACY_PROTOCOL_VERSION:
        raise TorchWeightsFormatError(f"unsupported PyTorch legacy protocol version {protocol!r}")
    sys_info = _load_plain(f, "sys_info")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchWeightsFormatError("only little-endian legacy PyTorch files are supported")

    storages: dict[str, _Storage] = {}
    try:
        result = _RestrictedUnpickler(f, storages).load()
    except UnsafeTorchPickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        raise TorchWeightsFormatError(f"could not read the main pickle: {exc}") from exc

    storage_keys = _load_plain(f, "storage key list")
    if not isinstance(storage_keys, list):
        raise TorchWeightsFormatError("storage key list is not a list")
    for key in storage_keys:
        key = str(key)
        storage = storages.get(key)
        if storage is None:
            raise TorchWeightsFormatError(f"storage {key!r} listed in the file but never referenced")
        numel = int(np.frombuffer(_read_exact(f, 8, f"size of storage {key!r}"), dtype="<i8")[0])
        if numel != storage.numel:
            raise TorchWeightsFormatError(f"storage {key!r}: file says {numel} elements, pickle says {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        storage.data = np.frombuffer(_read_exact(f, nbytes, f"storage {key!r}"), dtype=storage.dtype)

    result = _materialize(result)
    if not isinstance(result, dict):
        raise TorchWeightsFormatError(f"expected a state dict, got {type(result).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, value in result.items():
        if not isinstance(value, np.ndarray):
            kind = type(value).__name__
            raise TorchWeightsFormatError(f"state dict entry {name!r} is not a tensor ({kind})")
        out[str(name)] = value
    return out
