"""Content-addressed artefact cache: expensive things keyed by the hash of what made them.

    path, hit = cached(root, "recordings", key, build)

`key` is any JSON-able description of how the artefact is made (a data config, a training
config plus the hash of its data, ...). The artefact lives at `root/<kind>/<hash>/`; `build(path)`
must create that path itself, atomically (e.g. esort_jax.io.write_recording_folder). A file
lock per artefact makes concurrent sweep jobs asking for the same artefact wait for one build
instead of racing. `force=True` rebuilds.

An entry is complete when its `cache_key.json` exists; that file is written last and records
the key and the size of every file of the entry. A hit is checked against it: an entry whose key
differs from the one asked for, or whose files are missing or of another size (truncated,
deleted, replaced), is reported and rebuilt rather than returned. Temporaries left in
`root/<kind>/` by killed builds are removed (and reported) when their writer is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from esort_jax.io.atomic import remove_stale_temporaries, to_jsonable, write_json

__all__ = ["config_hash", "cached", "file_lock", "entry_problem"]

_KEY_FILE = "cache_key.json"


def config_hash(key: Any, length: int = 16) -> str:
    """Stable hash of a JSON-able description (dict order does not matter)."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:length]


def _canonical(key: Any) -> str:
    return json.dumps(to_jsonable(key), sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held for the duration of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _manifest(path: Path) -> dict[str, int]:
    """{relative file path: size in bytes} of every file under `path` but the key file."""
    files = (p for p in sorted(path.rglob("*")) if p.is_file() and p.name != _KEY_FILE)
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in files}


def entry_problem(path: str | os.PathLike, key: Any) -> str | None:
    """Why the cache entry at `path` is not a complete artefact for `key` (None when it is):
    no or unreadable key file, another key, a file missing or of another size than when built.
    Entries written before manifests were recorded are checked for their key only."""
    key_file = Path(path) / _KEY_FILE
    if not key_file.is_file():
        return f"{key_file.name} is missing (the build never completed)"
    try:
        recorded = json.loads(key_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{key_file} is unreadable ({error})"
    if not isinstance(recorded, dict) or _canonical(recorded.get("key")) != _canonical(key):
        return f"{key_file} records another key than the one asked for"
    expected = recorded.get("files")
    if not isinstance(expected, dict):
        return None
    actual = _manifest(Path(path))
    for name, size in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != size:
            return f"{name} is {actual[name]} bytes; it was {size} bytes when built"
    return None  # files added since (e.g. NFS placeholders) do not make an entry incomplete


def cached(
    root: str | os.PathLike,
    kind: str,
    key: Any,
    build: Callable[[Path], Any],
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[Path, bool]:
    """Return (artefact path, was_cached). Builds under a lock when missing, incomplete (see
    `entry_problem`, reported) or forced."""
    digest = config_hash(key)
    folder = Path(root).expanduser().resolve() / kind
    path = folder / digest
    say = log or (lambda message: None)
    with file_lock(folder / f".{digest}.lock"):
        remove_stale_temporaries(folder, log=say)
        if path.exists() and not force:
            problem = entry_problem(path, key)
            if problem is None:
                say(f"cache hit: {kind}/{digest} ({path})")
                return path, True
            say(f"cache entry {kind}/{digest} is incomplete: {problem}; rebuilding it")
        if path.exists():  # forced, or incomplete
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        say(f"cache miss: building {kind}/{digest}")
        started = time.perf_counter()
        build(path)
        if not path.is_dir():
            raise RuntimeError(f"cache build for {kind}/{digest} did not create the folder {path}")
        write_json(path / _KEY_FILE, {"key": key, "build_seconds": time.perf_counter() - started,
                                      "files": _manifest(path)})
    return path, False
