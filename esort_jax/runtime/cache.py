"""Content-addressed artefact cache: expensive things keyed by the hash of what made them.

    path, hit = cached(root, "recordings", key, build)

`key` is any JSON-able description of how the artefact is made (a data config, a training
config plus the hash of its data, ...). The artefact lives at `root/<kind>/<hash>/`; `build(path)`
must create that path itself, atomically (e.g. esort_jax.io.write_recording_folder). A file
lock per artefact makes concurrent sweep jobs asking for the same artefact wait for one build
instead of racing. `force=True` rebuilds.
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

from esort_jax.io.atomic import to_jsonable, write_json

__all__ = ["config_hash", "cached", "file_lock"]

_KEY_FILE = "cache_key.json"


def config_hash(key: Any, length: int = 16) -> str:
    """Stable hash of a JSON-able description (dict order does not matter)."""
    canonical = json.dumps(to_jsonable(key), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


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


def cached(
    root: str | os.PathLike,
    kind: str,
    key: Any,
    build: Callable[[Path], Any],
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[Path, bool]:
    """Return (artefact path, was_cached). Builds under a lock when missing or forced."""
    digest = config_hash(key)
    folder = Path(root).expanduser().resolve() / kind
    path = folder / digest
    with file_lock(folder / f".{digest}.lock"):
        complete = path.exists() and (path / _KEY_FILE).is_file()
        if complete and not force:
            if log:
                log(f"cache hit: {kind}/{digest} ({path})")
            return path, True
        if path.exists():  # forced, or an artefact without its key file (never completed)
            shutil.rmtree(path)
        if log:
            log(f"cache miss: building {kind}/{digest}")
        started = time.perf_counter()
        build(path)
        if not path.exists():
            raise RuntimeError(f"cache build for {kind}/{digest} did not create {path}")
        write_json(path / _KEY_FILE, {"key": key, "build_seconds": time.perf_counter() - started})
    return path, False
