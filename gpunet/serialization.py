"""Checkpoints: `gpunet.save(obj, f)` and `gpunet.load(f, map_location=None)`,
f a path or a binary file object, as torch.save/torch.load.

`obj` is a model's state_dict, an optimizer's or a scheduler's, or any nest of
dicts (str or int keys), lists and tuples holding arrays (NumPy or CuPy),
NumPy scalars, and None/bool/int/float/str, e.g.
{"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}.

Format: an uncompressed NumPy .npz archive (a zip of .npy files), readable
without gpunet and without pickle:
  - every array is an entry named by its path in the nest, components joined
    by "/" ("model/conv1.weight", "optimizer/state/0/exp_avg"; "%" and "/"
    inside a component are written %25 and %2F);
  - the entry "__manifest__" is UTF-8 JSON (as a uint8 array):
    {"format": "gpunet.save", "version": 1, "tree": NODE}, where NODE is
    {"t": "dict"|"odict", "items": [[key, NODE], ...]}, {"t": "list"|"tuple",
    "items": [NODE, ...]}, {"t": "array", "key": entry, "dtype": str, "shape": [...]},
    {"t": "npscalar", ...same as array, 0-d}, or {"t": "value", "v": JSON value};
    "dtype" is NumPy's dtype.str ("<f4"), or "bfloat16" for an entry holding
    bfloat16 values as their uint16 bits (a .npy header cannot name ml_dtypes'
    bfloat16); float16 is NumPy's own "<f2".
Loading returns NumPy arrays (load_state_dict methods move them to the
module's or optimizer's device); dicts keep their key order and key types.

Writes are atomic: the archive goes to a temporary file in the target's
directory, is flushed and fsync'ed, then os.replace'd over the target, so a
crash or error mid-write leaves the previous file intact. The temporary file
is named ".<target>.<writer's pid>.<random>.tmp": an error removes it at once,
and one left by a killed writer (its pid no longer running) is removed by the
next save or load of the same path. (A writer on another machine sharing the
directory cannot be told from a dead one by its pid: do not save one path
from two machines at once.)
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections import OrderedDict

import numpy as np

from . import dtypes
from .backend import to_numpy
from .module_pickle import add_safe_globals, clear_safe_globals, decode_module, encode_module, get_safe_globals, \
    safe_globals  # noqa: F401 (torch.serialization's names)

MANIFEST = "__manifest__"
FORMAT, VERSION = "gpunet.save", 1


def _component(key) -> str:
    return str(key).replace("%", "%25").replace("/", "%2F")


def _encode(obj, path: list, arrays: dict):
    """The manifest node for `obj`; arrays are added to `arrays` by entry name."""
    where = "/".join(_component(c) for c in path) or "<root>"
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"save: dict key {key!r} at {where!r} is a {type(key).__name__}; "
                                "only str and int keys can be saved")
            items.append([key, _encode(value, path + [key], arrays)])
        return {"t": "odict" if isinstance(obj, OrderedDict) else "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        return {"t": type(obj).__name__ if type(obj) in (list, tuple) else "list",
                "items": [_encode(v, path + [i], arrays) for i, v in enumerate(obj)]}
    is_scalar = isinstance(obj, np.generic)  # before the plain values: np.float64 is a float
    if not is_scalar and (obj is None or isinstance(obj, (bool, int, float, str))):
        return {"t": "value", "v": obj}
    if is_scalar or hasattr(obj, "__array_interface__") or hasattr(obj, "__cuda_array_interface__"):
        arr = np.asarray(to_numpy(obj))
        if arr.dtype.hasobject:
            raise TypeError(f"save: the array at {where!r} has dtype object, which cannot be saved without pickle")
        if where in arrays or where == MANIFEST:
            raise ValueError(f"save: cannot store an array under the entry name {where!r}")
        dtype = _dtype_name(arr.dtype)
        arrays[where] = arr.view(np.uint16) if dtype == BFLOAT16 else arr
        return {"t": "npscalar" if is_scalar else "array", "key": where, "dtype": dtype, "shape": list(arr.shape)}
    from .nn.module import Module
    if isinstance(obj, Module):
        return encode_module(obj, where, arrays)
    raise TypeError(f"save: cannot save a {type(obj).__module__}.{type(obj).__name__} at {where!r} (supported: "
                    "dict, list, tuple, arrays, NumPy scalars, None, bool, int, float, str, modules; "
                    "save a module's or optimizer's state_dict(), not the object)")


# NumPy has bfloat16 only through ml_dtypes, whose dtype a .npy header cannot
# name (it would read back as raw 2-byte voids): such an array is stored as its
# uint16 bits and the manifest says "bfloat16".
BFLOAT16 = "bfloat16"


def _dtype_name(dtype: np.dtype) -> str:
    return BFLOAT16 if dtype == dtypes.bfloat16 else dtype.str


def _path(path, what: str) -> str:
    """A str path from str, bytes or os.PathLike."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{what}: path: expected a str, bytes or os.PathLike, got {type(path).__name__}") from None


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process), or we cannot tell: keep its file
    return True


def _remove_stale_temporaries(path: str):
    """Remove the temporary files of writers of `path` that were killed mid-save."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"(\d+)\.[^.]+\.tmp")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass  # another process removed it first, or we may not


def save(obj, f):
    """Write `obj` (see the module docstring) as .npz to `f`: a path (written
    atomically) or a binary file object open for writing (io.BytesIO, an
    open file), as torch.save."""
    if hasattr(f, "write"):
        arrays = _archive_arrays(obj)
        np.savez(f, **arrays)
        if hasattr(f, "flush"):
            f.flush()
        return
    path = _path(f, "save")
    if os.path.isdir(path) or path.endswith(os.sep) or not os.path.basename(path):
        raise IsADirectoryError(f"save: {path!r} is a directory; give a file path such as {os.path.join(path, 'ckpt.npz')!r}")
    arrays = _archive_arrays(obj)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _archive_arrays(obj) -> dict:
    """The .npz entries of `obj`: its arrays and the manifest."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(obj, [], arrays)
    manifest = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree}, allow_nan=True)
    arrays[MANIFEST] = np.frombuffer(manifest.encode("utf-8"), dtype=np.uint8)
    return arrays


def _fsync_directory(directory: str):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _decode(node, arrays: dict, path: str, weights_only: bool = True, moved: bool = False):
    kind = node.get("t") if isinstance(node, dict) else None
    if kind in ("dict", "odict"):
        out = OrderedDict() if kind == "odict" else {}
        for key, child in node["items"]:
            out[key] = _decode(child, arrays, f"{path}/{key}", weights_only, moved)
        return out
    if kind in ("list", "tuple"):
        items = [_decode(child, arrays, f"{path}/{i}", weights_only, moved) for i, child in enumerate(node["items"])]
        return items if kind == "list" else tuple(items)
    if kind == "module":
        return decode_module(node, arrays, weights_only, moved)
    if kind == "value":
        return node["v"]
    if kind in ("array", "npscalar"):
        key = node["key"]
        if key not in arrays:
            raise ValueError(f"the manifest refers to entry {key!r}, which the archive does not contain")
        arr = arrays[key]
        if node["dtype"] == BFLOAT16 and arr.dtype == np.uint16:
            arr = arr.view(dtypes.bfloat16)
        if _dtype_name(arr.dtype) != node["dtype"] or list(arr.shape) != node["shape"]:
            raise ValueError(f"entry {key!r} holds {arr.dtype.str} {list(arr.shape)}, but the manifest says "
                             f"{node['dtype']} {node['shape']}")
        return arr[()] if kind == "npscalar" else arr
    raise ValueError(f"the manifest has an unknown node at {path or '<root>'!r}: {node!r:.200}")


def load(f, map_location=None, weights_only=None, **pickle_load_args):
    """Read what `save` wrote from a path or a binary file object open for
    reading; arrays come back as NumPy arrays, or on `map_location` (a device:
    'cpu', 'sim', 'cuda:0', a Backend). A file that is missing, damaged
    (truncated, not an .npz, no manifest, an entry unreadable) or
    inconsistent raises an error naming the file and the entry.
    weights_only (default True, as torch since 2.6): arrays and plain values
    are never unpickled; a whole module (saved as gpunet.save(model, f)) is,
    and with weights_only only gpunet's module classes and what
    safe_globals/add_safe_globals allow may appear in it (see
    gpunet/module_pickle.py); weights_only=False loads any module: trusted
    files only. map_location as a dict or a function
    (torch's device remapping) has nothing to remap here: the archive records
    no devices."""
    if pickle_load_args:
        raise NotImplementedError(f"load: {', '.join(sorted(pickle_load_args))}: gpunet archives are not pickles")
    if weights_only not in (None, True, False):
        raise TypeError(f"weights_only: expected a bool or None, got {weights_only!r}")
    move = _device_mover(map_location)
    if hasattr(f, "read"):
        name = repr(getattr(f, "name", type(f).__name__))
        arrays = _read_entries(f, name)
    else:
        path = _path(f, "load")
        name = repr(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"load: no such file: {path!r}")
        _remove_stale_temporaries(path)
        if os.path.isdir(path):
            raise ValueError(f"load: {path!r} is a directory, not a gpunet.save archive")
        arrays = _read_entries(path, name)
    if MANIFEST not in arrays:
        raise ValueError(f"load: {name} has no {MANIFEST!r} entry, so it was not written by gpunet.save "
                         f"(entries: {sorted(arrays)[:10]})")
    try:
        manifest = json.loads(arrays.pop(MANIFEST).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"load: {name}: the {MANIFEST!r} entry is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "tree" not in manifest:
        raise ValueError(f"load: {name}: the {MANIFEST!r} entry is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"load: {name} is format version {manifest.get('version')!r}; "
                         f"this gpunet reads version {VERSION}")
    if move is not None:
        arrays = {k: move(v) for k, v in arrays.items()}
    try:
        return _decode(manifest["tree"], arrays, "", weights_only is not False, move is not None)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"load: {name}: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:
        raise ValueError(f"load: {name}: {type(e).__name__}: {e}") from e


def _device_mover(map_location):
    """None, or the function moving a loaded array to map_location's backend."""
    if map_location is None:
        return None
    from .backend import Backend, get_backend
    if not isinstance(map_location, (str, Backend)):
        raise NotImplementedError(f"map_location: expected a device ('cpu', 'sim', 'cuda:0') or a Backend; a "
                                  f"{type(map_location).__name__} remaps recorded devices, and gpunet archives "
                                  "record none")
    be = get_backend(map_location)
    return None if be.xp is np else be.asarray


def _read_entries(source, name: str) -> dict:
    try:
        archive = np.load(source, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- whatever a damaged file makes the readers raise
        raise ValueError(f"load: {name} is not a readable .npz archive (damaged, truncated, or not written "
                         f"by gpunet.save): {type(e).__name__}: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"load: {name} holds a single .npy array, not a gpunet.save archive")
    with archive:
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except Exception as e:  # noqa: BLE001 -- e.g. NotImplementedError for a flipped compression field
                raise ValueError(f"load: {name}: entry {key!r} is damaged: {type(e).__name__}: {e}") from e
    return arrays
