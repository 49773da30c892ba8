"""Where a result came from: package versions, git commit, devices, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import subprocess
from pathlib import Path

__all__ = ["package_versions", "git_commit", "utc_now", "provenance"]

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
    """The repository's HEAD commit, with '-dirty' when the work tree has changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
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


def provenance() -> dict:
    """Versions, commit and time, for metadata and results files."""
    return {"created_utc": utc_now(), "git_commit": git_commit(), "packages": package_versions()}
