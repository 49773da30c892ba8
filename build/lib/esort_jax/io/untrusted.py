"""Files written by others are read, never run.

Two formats we read are code in disguise:

  * Phy's `params.py` and probe `.prb` files are Python; SpikeInterface's `read_python` and
    probeinterface's `read_prb` `exec` them. `read_python_literals` parses them with `ast`
    instead and accepts only `name = <literal>` lines (numbers, strings, bools, None, lists,
    tuples, dicts; `range(...)` of integers, which both readers rewrite to lists; `dtype` a
    string naming a numpy dtype, as Phy and Kilosort write it), refusing anything else with the
    file and line.
  * A SpikeInterface folder is loaded by `spikeinterface.load` from a description that names a
    class to construct (any importable callable) and may be a pickle (`cached.pkl`); the folders
    `save()` writes also keep per-unit properties as `.npy` files that SpikeInterface loads with
    `allow_pickle=True`. `load_spikeinterface_folder` reads the JSON description itself, constructs
    only the folder classes `save()` writes (binary recording, numpy / npz sorting) and refuses
    pickles and object (pickled) `.npy` properties -- unless the caller trusts the folder and
    passes `allow_pickle=True` (config: `recording.allow_pickle: true`), which hands the folder
    to `spikeinterface.load` as it is.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.io.folder import RecordingFormatError

__all__ = ["UnsafeFileError", "read_python_literals", "load_spikeinterface_folder", "SAFE_SPIKEINTERFACE_CLASSES"]

# What SpikeInterface's save() writes as a folder's description (si_folder.json / cached.json).
SAFE_SPIKEINTERFACE_CLASSES = frozenset({
    "spikeinterface.core.binaryfolder.BinaryFolderRecording",
    "spikeinterface.core.sortingfolder.NumpyFolderSorting",
    "spikeinterface.core.sortingfolder.NpzFolderSorting",
    "spikeinterface.core.npzfolder.NpzFolderSorting",
})
_DESCRIPTIONS = ("si_folder.json", "cached.json")
_PICKLED_DESCRIPTIONS = ("cached.pkl", "cached.pickle")
_OPT_IN = "if you trust the folder, pass allow_pickle=True (in a run's config: recording.allow_pickle=true)"
_MAX_SETTINGS_BYTES = 16 * 2**20
_MAX_RANGE = 10**6


class UnsafeFileError(RecordingFormatError):
    """A file would run code (or unpickle objects) if read the usual way; the message names the
    file (and line) and how to proceed."""


# ----------------------------------------------------------------------------------------------
# params.py / .prb


class _Refused(Exception):
    def __init__(self, node: ast.AST, why: str):
        super().__init__(why)
        self.node = node


def read_python_literals(path: str | os.PathLike) -> dict[str, Any]:
    """{name (lower case, as SpikeInterface's read_python gives them): value} of a Python-syntax
    settings file (Phy's params.py, a .prb probe file), without running it. Only `name = value`
    lines with literal values are accepted (see the module doc), `dtype` a string naming a numpy
    dtype; anything else is an UnsafeFileError naming the file, the line and the statement."""
    path = Path(path)
    if path.stat().st_size > _MAX_SETTINGS_BYTES:
        raise UnsafeFileError(f"{path}: {path.stat().st_size} bytes is too large for a settings file")
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except UnicodeDecodeError as error:
        raise RecordingFormatError(f"{path}: not UTF-8 text ({error})") from error
    except SyntaxError as error:
        raise RecordingFormatError(f"{path}, line {error.lineno}: not valid Python syntax ({error.msg})") from error
    values = {}
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or a bare constant does nothing
        try:
            name, value = _assignment(statement)
        except _Refused as refused:
            source = ast.get_source_segment(text, refused.node) or type(refused.node).__name__
            source = source if len(source) <= 80 else source[:77] + "..."
            raise UnsafeFileError(
                f"{path}, line {refused.node.lineno}: {refused} (`{source}`); esort_jax reads this file without "
                "running it and accepts only `name = value` lines with literal values (numbers, strings, "
                "True/False/None, lists, tuples, dicts, range(...) of integers)"
            ) from None
        values[name.lower()] = value
    return values


def _assignment(statement: ast.stmt) -> tuple[str, Any]:
    if not isinstance(statement, ast.Assign):
        kind = type(statement).__name__
        raise _Refused(statement, f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind} statement, not an assignment")
    if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
        raise _Refused(statement, "an assignment to something other than one plain name")
    name = statement.targets[0].id
    return name, (_dtype_string if name.lower() == "dtype" else _literal)(statement.value)


def _literal(node: ast.AST) -> Any:
    """The value of a literal expression; _Refused for anything that would compute."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(item) for item in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise _Refused(node, "a dict unpacking (**)")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Call) and _called(node) in ("range", "list") and not node.keywords:
        return _range(node)
    raise _Refused(node, "a computed value, not a literal")


def _called(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else None


def _range(node: ast.Call) -> list:
    """`range(...)` or `list(range(...))` of integer literals, as SpikeInterface and
    probeinterface rewrite them (bounded, so a file cannot ask for all memory)."""
    if _called(node) == "list":
        if len(node.args) != 1 or not isinstance(node.args[0], ast.Call) or _called(node.args[0]) != "range":
            raise _Refused(node, "a call other than range(...)")
        node = node.args[0]
    args = [_literal(a) for a in node.args]
    if not 1 <= len(args) <= 3 or node.keywords or not all(type(a) is int for a in args):
        raise _Refused(node, "range(...) needs 1 to 3 integer literals")
    values = range(*args)
    if len(values) > _MAX_RANGE:
        raise _Refused(node, f"range(...) of {len(values)} values (more than {_MAX_RANGE})")
    return list(values)


def _dtype_string(node: ast.AST) -> str:
    """`dtype` as Phy and Kilosort write it: a string numpy understands ('int16', '<i2', ...)."""
    value = _literal(node)
    if isinstance(value, str):
        try:
            np.dtype(value)
            return value
        except TypeError:
            pass
    raise _Refused(node, f"dtype {value!r} is not a string naming a numpy dtype")


# ----------------------------------------------------------------------------------------------
# SpikeInterface folders


def load_spikeinterface_folder(path: str | os.PathLike, *, allow_pickle: bool = False) -> Any:
    """The SpikeInterface recording or sorting a `save()`-written folder holds, loaded from its
    JSON description without running code from the folder (see the module doc). Pickled
    descriptions, classes other than SAFE_SPIKEINTERFACE_CLASSES and pickled `.npy` properties
    are refused (UnsafeFileError naming the file) unless `allow_pickle=True`, which loads the
    folder with `spikeinterface.load` as it is. Other failures: RecordingFormatError."""
    path = Path(path)
    if allow_pickle:
        import spikeinterface

        _refuse_partial_frames(path)
        return _loading(path, lambda: spikeinterface.load(path))
    description_file = _description_file(path)
    description = _read_json(description_file)
    _refuse_unsafe_classes(description, description_file)
    folder = _data_folder(description, path)
    _refuse_pickled_properties(folder)
    _refuse_partial_frames(folder)
    from spikeinterface.core.base import BaseExtractor

    return _loading(path, lambda: BaseExtractor.from_dict(description, base_folder=path))


def _refuse_unsafe_classes(description: dict, file: Path) -> None:
    """One extractor, of a class save() writes: the class a description names is constructed
    (any importable callable, with the description's arguments)."""
    classes = _extractor_classes(description)
    if classes == [description["class"]] and classes[0] in SAFE_SPIKEINTERFACE_CLASSES:
        return
    what = classes[0] if len(classes) == 1 else f"{len(classes)} nested extractors ({', '.join(classes[:4])})"
    safe = ", ".join(sorted({name.rsplit(".", 1)[1] for name in SAFE_SPIKEINTERFACE_CLASSES}))
    raise UnsafeFileError(
        f"{file}: describes {what}; from a description it did not write, esort_jax constructs only the "
        f"folders SpikeInterface's save() writes ({safe}), since the class a description names is run "
        f"with the description's arguments; {_OPT_IN}"
    )


def _loading(path: Path, load):
    try:
        return load()
    except Exception as error:
        raise RecordingFormatError(
            f"{path}: looks like a SpikeInterface folder but does not load: {type(error).__name__}: {error}"
        ) from error


def _description_file(path: Path) -> Path:
    for name in _DESCRIPTIONS:
        if (path / name).is_file():
            return path / name
    pickled = [path / name for name in _PICKLED_DESCRIPTIONS if (path / name).is_file()]
    if pickled:
        raise UnsafeFileError(
            f"{pickled[0]}: this SpikeInterface folder is described by a pickle, and loading a pickle runs "
            f"whatever code it holds; esort_jax does not load pickles by default: {_OPT_IN}"
        )
    found = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    raise RecordingFormatError(
        f"{path}: not a loadable SpikeInterface folder: no {' or '.join(_DESCRIPTIONS)} "
        f"(found: {', '.join(found[:12]) or 'nothing'})"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RecordingFormatError(
            f"{path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise RecordingFormatError(f"{path}: cannot be read as JSON text: {error}") from error
    if not isinstance(data, dict) or "class" not in data or "kwargs" not in data:
        raise RecordingFormatError(f"{path}: not a SpikeInterface description (an object with 'class' and 'kwargs')")
    return data


def _extractor_classes(node: Any) -> list[str]:
    """Every 'class' named by the extractor descriptions nested in `node`."""
    found = []
    if isinstance(node, dict):
        if "class" in node:
            found.append(str(node["class"]))
        for value in node.values():
            found += _extractor_classes(value)
    elif isinstance(node, list):
        for value in node:
            found += _extractor_classes(value)
    return found


def _data_folder(description: dict, base: Path) -> Path:
    """The folder the described folder extractor reads (its `folder_path`)."""
    folder = description["kwargs"].get("folder_path") if isinstance(description["kwargs"], dict) else None
    if not isinstance(folder, str):
        raise RecordingFormatError(f"{base}: the description's kwargs.folder_path is missing or not a path")
    return base / folder  # an absolute folder_path replaces base


def _refuse_pickled_properties(folder: Path) -> None:
    """SpikeInterface loads `properties/*.npy` with allow_pickle=True: refuse object arrays."""
    properties = folder / "properties"
    for npy in sorted(properties.glob("*.npy")) if properties.is_dir() else []:
        dtype = _npy_dtype(npy)
        if dtype is None or dtype.hasobject:
            what = "not a readable .npy file" if dtype is None else "an array of Python objects, stored as a pickle"
            raise UnsafeFileError(
                f"{npy}: {what}; SpikeInterface would unpickle it (running whatever code it holds): {_OPT_IN}"
            )


def _npy_dtype(path: Path) -> np.dtype | None:
    """The dtype in a .npy header (parsed with ast.literal_eval by numpy), None if unreadable."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(handle)[2]
            if version == (2, 0):
                return np.lib.format.read_array_header_2_0(handle)[2]
            return np.lib.format._read_array_header(handle, version)[2]
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _refuse_partial_frames(folder: Path) -> None:
    """A binary folder's raw files hold whole frames (SpikeInterface records no sample count and
    silently drops a partial frame, so a truncated copy would load as a shorter recording)."""
    if not (folder / "binary.json").is_file():
        return
    kwargs = _read_json(folder / "binary.json")["kwargs"]
    try:
        frame = int(kwargs["num_channels"]) * np.dtype(kwargs["dtype"]).itemsize
        offset = int(kwargs.get("file_offset") or 0)
        files = [folder / name for name in kwargs["file_paths"]]
    except (KeyError, TypeError, ValueError) as error:
        raise RecordingFormatError(f"{folder / 'binary.json'}: kwargs lack what a binary recording needs ({error})") from error
    for file in files:
        if not file.is_file():
            raise RecordingFormatError(f"{file}: missing (listed in {folder / 'binary.json'})")
        size = file.stat().st_size - offset
        if size < 0 or size % frame:
            raise RecordingFormatError(
                f"{file}: {size} bytes after the {offset}-byte offset are not a whole number of {frame}-byte frames "
                f"({kwargs['num_channels']} channels x {kwargs['dtype']}); the file is truncated or not this recording's"
            )
