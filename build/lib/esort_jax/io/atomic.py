"""Atomic writes: a file or folder appears at its final path complete, or not at all.

Everything is first written next to its destination under a hidden temporary name, flushed,
then moved into place with `os.replace` (atomic on POSIX within one file system). A crash
leaves at most a `.<name>.tmp-<owner>.<random>` entry behind (or `.<name>.old-...`, the
previous version being replaced), which no reader treats as valid. `<owner>` names the
process that made it (host, boot, pid and process start time), so the next writer of the same
destination -- or `remove_stale_temporaries` -- removes the entries whose owner is gone, and
never those of a live process (a recycled pid has another start time).

Temporaries are created with the modes a plain `mkdir` / `open` would give under the
process's umask (not tempfile's 0700/0600), so outputs and a group-shared cache are readable
by whom the user's umask allows.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

__all__ = [
    "atomic_folder",
    "atomic_file",
    "atomic_path",
    "write_json",
    "write_npz",
    "to_jsonable",
    "remove_stale_temporaries",
]

_logger = logging.getLogger(__name__)
_TMP, _OLD = ".tmp-", ".old-"


# ----------------------------------------------------------------------------------------------
# who owns a temporary


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22); None when
    the process does not exist or /proc is unavailable."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rfind(")") + 2:].split()[19]


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _host_tag() -> str:
    """This machine and pid namespace (pids mean nothing across either)."""
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return _tag(socket.gethostname() + "|" + namespace)


def _boot_tag() -> str:
    return _tag((_read("/proc/sys/kernel/random/boot_id") or "unknown").strip())


@functools.lru_cache(maxsize=None)
def _owner(pid: int) -> str:
    """'<host>.<boot>.<pid>.<start>' of process `pid` (this one; keyed by pid so a forked child
    gets its own)."""
    return f"{_host_tag()}.{_boot_tag()}.{pid}.{_start_ticks(pid) or 0}"


def _owner_is_gone(owner: str) -> bool:
    """True only when the owning process certainly no longer exists: same host (and pid
    namespace) and either another boot, or no process with that pid and start time."""
    try:
        host, boot, pid_text, start = owner.split(".")
        pid = int(pid_text)
    except ValueError:
        return False  # not our naming: leave it alone
    if host != _host_tag():
        return False  # another machine's: we cannot tell
    if boot != _boot_tag():
        return True
    if Path("/proc/self/stat").is_file():
        current = _start_ticks(pid)
        return current is None or (start != "0" and current != start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _stem(name: str) -> str:
    """The part of a temporary's name that names its destination (long names shortened so the
    temporary's name stays within file-system limits)."""
    return name if len(name) <= 160 else f"{name[:120]}~{_tag(name)}"


def _temporary_name(path: Path, marker: str) -> Path:
    return path.parent / f".{_stem(path.name)}{marker}{_owner(os.getpid())}.{secrets.token_hex(4)}"


def _parse_temporary(name: str) -> str | None:
    """The owner of a temporary's name, or None when `name` is not one of ours."""
    for marker in (_TMP, _OLD):
        head, found, tail = name.rpartition(marker)
        if found and head.startswith(".") and tail.count(".") == 4:
            return tail.rsplit(".", 1)[0]
    return None


def remove_stale_temporaries(
    directory: str | os.PathLike, name: str | None = None, log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Remove the temporaries in `directory` (of destination `name`, or of any) whose owner
    process is gone; return what was removed, each reported through `log` (default: a warning
    on the 'esort_jax.io.atomic' logger). Live owners' and other machines' entries stay."""
    directory = Path(directory)
    prefixes = None if name is None else tuple(f".{_stem(name)}{m}" for m in (_TMP, _OLD))
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or (prefixes and not entry.name.startswith(prefixes)):
            continue
        owner = _parse_temporary(entry.name)
        if owner is None or not _owner_is_gone(owner):
            continue
        target = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(target, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
        removed.append(target)
        pid = owner.split(".")[2]
        (log or _logger.warning)(f"removed stale temporary {target} (its writer, pid {pid}, is gone)")
    return removed


# ----------------------------------------------------------------------------------------------
# writing


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepare(path: Path) -> None:
    """Make the destination's folder; remove stale temporaries of the same destination."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)


def _create(path: Path, make: Callable[[Path], Any]) -> tuple[Path, Any]:
    """A fresh temporary next to `path`, made by `make` (which fails if it exists)."""
    for _ in range(100):
        tmp = _temporary_name(path, _TMP)
        try:
            return tmp, make(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: could not create a temporary for {path.name}")


def _open_new(tmp: Path) -> int:
    # mode 0o666 filtered by the umask, as open() would give (mkstemp gives 0600)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path`, on error it is removed.

    With overwrite=False an existing `path` is an error (raised before any work is done). The
    folder gets the mode `mkdir` gives under the current umask.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    _prepare(path)
    tmp, _ = _create(path, os.mkdir)  # mode 0o777 filtered by the umask (mkdtemp gives 0700)
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            trash = _temporary_name(path, _OLD)
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file for writing; it replaces `path` when the block exits cleanly."""
    path = Path(path)
    _prepare(path)
    tmp, fd = _create(path, _open_new)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; it replaces `path` when the block exits cleanly.

    For writers that insist on opening the file themselves (h5py). With overwrite=False an
    existing `path` is an error raised before any work is done.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    _prepare(path)
    tmp, fd = _create(path, _open_new)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, Paths and tuples into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    with atomic_file(path, "w") as handle:
        json.dump(to_jsonable(data), handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Atomically write arrays to an uncompressed .npz file."""
    with atomic_file(path, "wb") as handle:
        np.savez(handle, **arrays)
