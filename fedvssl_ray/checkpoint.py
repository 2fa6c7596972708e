"""Safe, atomic checkpoint files, and an importer for the Flower baseline's checkpoints.

Native checkpoints are ``.npz`` archives of named numeric arrays, written and read without
pickle (``allow_pickle=False``). JSON metadata travels inside as a uint8 array under the
reserved name ``__meta__``. Every write goes to a temporary file in the target directory, is
fsynced and then renamed over the target, so a reader sees the old file or the new one, never
a torn one.

The Flower baseline saved ``np.savez(path, parameters)``: the only member ``arr_0`` is a 0-d
object array holding a pickled ``flwr.common.typing.Parameters`` whose tensors are
``.npy``-serialised bytes (the authors' files may instead hold a 1-D object array of
ndarrays). Unpickling runs whatever the file embeds, so :func:`import_flower_checkpoint`
unpickles with an allow-list: numpy's array-reconstruction callables, ``ndarray``,
``dtype``, and ``Parameters`` mapped to a plain record. Anything else is refused by name.

Interchange with other code: :func:`export_ctp_state_dict` writes a backbone as a torch state
dict in the original CtP naming (``{"state_dict": {"backbone.<CtP name>": tensor}}``, the
mapping of CTP.md §2) and :func:`import_ctp_state_dict` reads such files with
``torch.load(weights_only=True)``. :func:`load_backbone_any` reads any supported checkpoint
(native, CtP torch, or the Flower baseline's / authors' pickled ``.npz``), but a pickled file
only with an explicit ``trust_pickle=True`` (and a warning: unpickling can run code); anything
else is refused with a message naming the file and the formats expected.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

META_KEY = "__meta__"
"""Reserved array name holding the JSON metadata of a native checkpoint."""

PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read safely; the message names the file."""


# -- native checkpoints --------------------------------------------------------------------------


def save_arrays(
    path: PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
) -> None:
    """Atomically write named numeric arrays (and optional JSON metadata) to a ``.npz`` file.

    The file is written exactly at ``path`` (no suffix is added) and readable by
    ``np.load(path, allow_pickle=False)``.
    """
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key == META_KEY:
            raise ValueError(f"invalid array name {key!r} (non-empty str other than {META_KEY!r})")
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise ValueError(f"{key!r} must be a numeric numpy array, got {type(value).__name__}")
    members = dict(arrays)
    if meta is not None:
        members[META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(fh: IO[bytes]) -> None:
        with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for key, value in members.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)

    _write_atomic(Path(path), write)


def load_arrays(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`save_arrays`: (arrays in saved order, metadata or {}).

    Never unpickles: an object array is refused by name before its data is read. A missing
    file raises ``FileNotFoundError``; anything else unreadable a :class:`CheckpointError`
    that says what is wrong with the file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {_array_name(path, name): _read_member(path, zf, name)
                      for name in zf.namelist()}
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode()) if META_KEY in arrays else {}
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", str(path)) from None
    except CheckpointError:
        raise
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"{path}: not a readable .npz archive ({err}); the file is truncated, damaged or "
            "not a checkpoint"
        ) from None
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its {META_KEY} entry is not a JSON object")
    return arrays, meta


def _array_name(path: Path, member: str) -> str:
    """The array name of an archive member (``name.npy``); anything else is not ours."""
    if not member.endswith(".npy"):
        raise CheckpointError(
            f"{path}: holds {member!r}, not a .npy array; expected an .npz of named arrays"
        )
    return member[: -len(".npy")]


def _read_member(path: Path, zf: zipfile.ZipFile, member: str) -> np.ndarray:
    """One numeric array of the archive; an object (pickled) array is refused unread."""
    with zf.open(member) as fh:
        if _npy_dtype(fh).hasobject:
            raise CheckpointError(
                f"{path}: {member[:-4]!r} holds pickled Python objects; checkpoints hold "
                "numeric arrays only and are never unpickled"
            )
    with zf.open(member) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def save_json_atomic(path: PathLike, obj: Any) -> None:
    """Atomically replace a small JSON file (config, summary, strategy state)."""
    save_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_text_atomic(path: PathLike, text: str) -> None:
    """Atomically replace a text file: readers see the old or the new content, never a part."""
    data = text.encode()
    _write_atomic(Path(path), lambda fh: fh.write(data))


def append_jsonl(path: PathLike, obj: Any) -> None:
    """Append ``obj`` as one JSON line, fsynced; a failed write (a full disk) is cut off again,
    so the file never ends in half a line."""
    line = memoryview((json.dumps(obj) + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while line:
                line = line[os.write(fd, line):]
            os.fsync(fd)
        except OSError:  # e.g. a full disk: cut off what was written
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- Flower baseline checkpoints -----------------------------------------------------------------


class FlowerParameters:
    """Plain record standing in for ``flwr.common.typing.Parameters`` (no flwr needed)."""

    tensors: list[bytes]
    tensor_type: str


def _array_rebuilders() -> dict[str, Any]:
    sample = np.zeros(1)
    return {
        "_reconstruct": sample.__reduce__()[0],  # protocol <= 4 pickles
        "_frombuffer": sample.__reduce_ex__(5)[0],  # protocol 5 pickles
    }


_REBUILD = _array_rebuilders()
_ALLOWED: dict[tuple[str, str], Any] = {
    **{
        (mod, name): fn
        for name, fn in _REBUILD.items()
        for mod in (
            "numpy.core.multiarray",
            "numpy._core.multiarray",
            "numpy.core.numeric",
            "numpy._core.numeric",
        )
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("flwr.common.typing", "Parameters"): FlowerParameters,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; any other name is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays and flwr Parameters are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing to load a persistent id")


def import_flower_checkpoint(path: PathLike) -> list[np.ndarray]:
    """Arrays of a Flower-baseline checkpoint, in saved order (L, or 2L in FedVSSL mode).

    Reads ``arr_0`` as a pickled ``Parameters`` (tensors decoded with
    ``np.load(..., allow_pickle=False)``) or as a 1-D object array of ndarrays, through a
    restricted unpickler.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.namelist() != ["arr_0.npy"]:
                raise CheckpointError(
                    f"expected a single member arr_0.npy, got {zf.namelist()[:5]}"
                )
            payload = zf.read("arr_0.npy")
        content = _unpickle_npy(io.BytesIO(payload))
        return _decode_flower(content)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", str(path)) from None
    except (
        pickle.UnpicklingError,
        OSError,
        ValueError,
        EOFError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        zipfile.BadZipFile,
    ) as err:
        raise CheckpointError(f"{path}: {err}") from err


def _unpickle_npy(fh: io.BytesIO) -> Any:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        _, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise CheckpointError(f"unsupported .npy version {version}")
    if not dtype.hasobject:
        fh.seek(0)
        return np.load(fh, allow_pickle=False)
    return _RestrictedUnpickler(fh).load()


def _decode_flower(content: Any) -> list[np.ndarray]:
    if isinstance(content, np.ndarray) and content.dtype.hasobject and content.ndim == 0:
        record = content.item()
        if not isinstance(record, FlowerParameters):
            raise CheckpointError(f"arr_0 holds a {type(record).__name__}, not flwr Parameters")
        if getattr(record, "tensor_type", None) != "numpy.ndarray":
            raise CheckpointError(
                f"unsupported tensor_type {getattr(record, 'tensor_type', None)!r}"
            )
        tensors = getattr(record, "tensors", None)
        if not isinstance(tensors, list) or not all(isinstance(t, bytes) for t in tensors):
            raise CheckpointError("Parameters.tensors must be a list of bytes")
        return [np.load(io.BytesIO(t), allow_pickle=False) for t in tensors]
    if isinstance(content, np.ndarray) and content.dtype.hasobject and content.ndim == 1:
        arrays = list(content)
        for i, item in enumerate(arrays):
            if not isinstance(item, np.ndarray) or item.dtype.hasobject:
                raise CheckpointError(
                    f"item {i} of arr_0 is a {type(item).__name__}, not a numeric array"
                )
        return arrays
    raise CheckpointError(
        "arr_0 is neither pickled flwr Parameters nor a 1-D object array of arrays"
    )


def flower_list_to_backbone(
    arrays: Sequence[np.ndarray], backbone_keys_and_shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Name the first entries of a Flower list positionally, checking every shape.

    ``backbone_keys_and_shapes`` lists the backbone keys in state-dict order (120 for R3D-18).
    An L list and a 2L list both start with the backbone (in a 2L list, the scaled one clients
    saw). Dtypes are kept: a 2L list stores ``num_batches_tracked`` as float64, which the
    baseline truncated when loading.
    """
    spec = list(backbone_keys_and_shapes.items())
    if len(arrays) < len(spec):
        raise ValueError(
            f"the list has {len(arrays)} arrays, fewer than the {len(spec)} backbone keys"
        )
    out = {}
    for i, ((key, shape), array) in enumerate(zip(spec, arrays[: len(spec)], strict=True)):
        if array.shape != tuple(shape):
            raise ValueError(
                f"array {i} has shape {array.shape}, but {key!r} expects {tuple(shape)}"
            )
        out[key] = array
    return out


# -- CtP (mmcv) torch state dicts ----------------------------------------------------------------

CTP_PREFIX = "backbone."


def torchvision_to_ctp_key(key: str) -> str:
    """A backbone key in torchvision naming (``layer1.0.conv1.0.weight``) -> CtP's
    (``layer1.0.conv1.conv.weight``); CTP.md §2. Unknown keys raise ``KeyError``."""
    parts = key.split(".")
    if parts[:2] == ["stem", "0"]:
        return ".".join(["stem", "conv", *parts[2:]])
    if parts[:2] == ["stem", "1"]:
        return ".".join(["stem", "bn", *parts[2:]])
    if len(parts) >= 5 and parts[0].startswith("layer") and parts[2] in ("conv1", "conv2"):
        layer, block, conv, index, rest = parts[0], parts[1], parts[2], parts[3], parts[4:]
        if index == "0":
            return ".".join([layer, block, conv, "conv", *rest])
        if index == "1":
            return ".".join([layer, block, "bn" + conv[-1], *rest])
    if len(parts) >= 5 and parts[0].startswith("layer") and parts[2] == "downsample":
        layer, block, index, rest = parts[0], parts[1], parts[3], parts[4:]
        if index == "0":
            return ".".join([layer, block, "downsample", "conv", *rest])
        if index == "1":
            return ".".join([layer, block, "downsample_bn", *rest])
    raise KeyError(f"no CtP name for backbone key {key!r}")


def ctp_to_torchvision_key(key: str) -> str:
    """The inverse of :func:`torchvision_to_ctp_key` (``module.`` and ``backbone.`` stripped)."""
    key = key.removeprefix("module.").removeprefix(CTP_PREFIX)
    parts = key.split(".")
    if parts[:2] == ["stem", "conv"]:
        return ".".join(["stem", "0", *parts[2:]])
    if parts[:2] == ["stem", "bn"]:
        return ".".join(["stem", "1", *parts[2:]])
    if len(parts) >= 4 and parts[0].startswith("layer"):
        layer, block, name, rest = parts[0], parts[1], parts[2], parts[3:]
        if name in ("conv1", "conv2") and rest[:1] == ["conv"]:
            return ".".join([layer, block, name, "0", *rest[1:]])
        if name in ("bn1", "bn2"):
            return ".".join([layer, block, "conv" + name[-1], "1", *rest])
        if name == "downsample" and rest[:1] == ["conv"]:
            return ".".join([layer, block, "downsample", "0", *rest[1:]])
        if name == "downsample_bn":
            return ".".join([layer, block, "downsample", "1", *rest])
    raise KeyError(f"no torchvision name for CtP backbone key {key!r}")


def export_ctp_state_dict(
    path: PathLike, backbone: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None
) -> None:
    """Atomically write ``{"state_dict": {"backbone.<CtP name>": tensor}, "meta": {...}}`` with
    ``torch.save``; ``backbone`` holds ``backbone.*`` entries in torchvision naming (other
    entries, e.g. a CtP or classification head, are not exported)."""
    import torch

    state = {}
    for key, value in backbone.items():
        if not key.startswith(CTP_PREFIX):
            continue
        name = torchvision_to_ctp_key(key.removeprefix(CTP_PREFIX))
        state[CTP_PREFIX + name] = torch.from_numpy(np.array(value, copy=True))
    if not state:
        raise ValueError("no backbone.* entries to export")
    payload = {"state_dict": state, "meta": {"format": "ctp-state-dict", **dict(meta or {})}}
    _write_atomic(Path(path), lambda fh: torch.save(payload, fh))


def import_ctp_state_dict(path: PathLike) -> dict[str, np.ndarray]:
    """``backbone.*`` entries (torchvision naming) of a CtP-named torch checkpoint.

    Read with ``torch.load(weights_only=True)`` (no code runs); takes ``state_dict`` if present
    (else the file's top-level dict), strips ``module.``, keeps ``backbone.*`` and renames them.
    """
    import torch

    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", str(path)) from None
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... on bad files
        raise CheckpointError(
            f"{path}: not a torch state dict loadable with weights_only=True ({err})"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: expected a dict with 'state_dict' (keys backbone.*), got {type(obj).__name__}"
        )
    out = {}
    for key, value in state.items():
        bare = str(key).removeprefix("module.")
        if not bare.startswith(CTP_PREFIX):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        try:
            name = ctp_to_torchvision_key(bare)
        except KeyError as err:
            raise CheckpointError(f"{path}: {err.args[0]}") from None
        out[CTP_PREFIX + name] = value.detach().cpu().numpy()
    if not out:
        raise CheckpointError(
            f"{path}: no backbone.* entries in its state_dict (keys: {list(state)[:5]})"
        )
    return out


# -- any backbone checkpoint ---------------------------------------------------------------------

PICKLE_WARNING = (
    "trust_pickle=true: {path} holds pickled Python objects; unpickling can run code embedded "
    "in the file. It is read through a restricted unpickler (numpy arrays and flwr Parameters "
    "only), but load only files from a source you trust."
)


def checkpoint_kind(path: PathLike) -> str:
    """``native`` (.npz of named arrays), ``pickled-npz`` (an .npz with object arrays: the
    Flower baseline's or the authors' files), ``torch`` (a ``torch.save`` zip), or ``unknown``.
    Reads only the archive's directory and array headers, never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "checkpoint not found", str(path))
    if not zipfile.is_zipfile(path):
        return "unknown"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if names and all(n.endswith(".npy") for n in names):
                for name in names:
                    with zf.open(name) as fh:
                        if _npy_dtype(fh).hasobject:
                            return "pickled-npz"
                return "native"
            if any(n.endswith("data.pkl") for n in names):
                return "torch"
    except (OSError, ValueError, zipfile.BadZipFile):
        return "unknown"
    return "unknown"


def _npy_dtype(fh: IO[bytes]) -> np.dtype:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)[2]
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)[2]
    raise ValueError(f"unsupported .npy version {version}")


EXPECTED_FORMATS = (
    "a .npz of named arrays written by a run (checkpoints/round-NNNN.npz or epoch-NNNN.npz), "
    "a torch state dict in CtP naming ({'state_dict': {'backbone.*': tensor}}), or, with "
    "trust_pickle=true, a Flower baseline / authors' pickled .npz"
)


def load_backbone_any(
    path: PathLike,
    backbone_keys_and_shapes: Mapping[str, Sequence[int]],
    *,
    trust_pickle: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(entries with ``backbone.*`` keys, metadata) of a checkpoint in any supported format.

    ``backbone_keys_and_shapes`` lists the ``backbone.*`` keys in state order with their
    shapes (used to name a Flower list positionally). A native file may hold other entries too
    (a head); they are returned and the caller picks. A pickled ``.npz`` is refused unless
    ``trust_pickle``; then ``warn`` receives :data:`PICKLE_WARNING` before it is read.
    """
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "native":
        arrays, meta = load_arrays(path)
        return arrays, {"format": "native", **meta}
    if kind == "torch":
        return import_ctp_state_dict(path), {"format": "ctp-state-dict"}
    if kind == "pickled-npz":
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled objects (a Flower baseline or authors' checkpoint); "
                "loading it unpickles, which can run code embedded in the file. Refused: pass "
                "trust_pickle=true only if you trust where the file comes from"
            )
        if warn is not None:
            warn(PICKLE_WARNING.format(path=path))
        arrays = import_flower_checkpoint(path)
        try:
            named = flower_list_to_backbone(arrays, backbone_keys_and_shapes)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
        return named, {"format": "flower", "arrays": len(arrays)}
    reason = "an archive of other files" if zipfile.is_zipfile(path) else (
        "not a zip archive: truncated, damaged or another format")
    raise CheckpointError(
        f"{path}: not a checkpoint this project reads ({reason}); expected {EXPECTED_FORMATS}"
    )
