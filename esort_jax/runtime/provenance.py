"""Where a result came from: package versions, git commit, native thread pools, time.

The native thread pools (BLAS, OpenMP: library, version, thread count, via threadpoolctl) are
recorded because the last bits of a matrix product depend on the BLAS thread count, and a
network trained on traces that differ in those bits ends elsewhere (docs/claims.md, section 0:
the count SpikeInterface's thread workers used to leave behind).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import subprocess
from pathlib import Path

__all__ = ["package_versions", "git_commit", "native_thread_pools", "utc_now", "provenance"]

_PACKAGES = (
    "esort_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
    "h5py", "probeinterface", "spikeinterface", "hydra-core", "wandb",
)
_REPO = Path(__file__).resolve().parent.parent


def package_versions(names=_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when not installed)."""
    versions = {}
    for name in names:
        if name == "esort_jax":
            from esort_jax import __version__

            versions[name] = __version__
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo: Path = _REPO) -> str | None:
    """The repository's HEAD commit, with '-dirty' when the work tree has changes (None outside a
    checkout and before its first commit)."""
    try:
        commit = subprocess.run(  # check: before the first commit it fails, printing 'HEAD'
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def native_thread_pools() -> list[dict]:
    """The native thread pools loaded in this process now (user_api, internal_api, version,
    num_threads; one entry per distinct pool), in threadpoolctl's order."""
    from threadpoolctl import threadpool_info

    pools = []
    for pool in threadpool_info():
        entry = {key: pool.get(key) for key in ("user_api", "internal_api", "version", "num_threads")}
        if entry not in pools:
            pools.append(entry)
    return pools


def provenance() -> dict:
    """Versions, commit, native thread pools and time, for metadata and results files."""
    return {"created_utc": utc_now(), "git_commit": git_commit(), "packages": package_versions(),
            "native_thread_pools": native_thread_pools()}
