"""esort_jax.runtime.provenance: the git commit (with -dirty) of a checkout, None outside one,
installed package versions and the UTC time, as recorded in metadata and results files."""

import datetime
import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import esort_jax
from esort_jax.runtime.provenance import git_commit, native_thread_pools, package_versions, provenance, utc_now

REPO = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture
def outside_any_checkout(tmp_path, monkeypatch):
    """tmp_path, with git told not to look for a repository above it."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@needs_git
def test_git_commit_of_a_repository_with_dirty_only_for_tracked_changes(outside_any_checkout):
    repo = outside_any_checkout / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40 and git_commit(repo) == head
    (repo / "untracked.txt").write_text("new\n")
    assert git_commit(repo) == head  # untracked files do not make a checkout dirty
    (repo / "a.txt").write_text("two\n")
    assert git_commit(repo) == f"{head}-dirty"
    _git(repo, "commit", "-q", "-am", "second")
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD") != head


@needs_git
def test_no_commit_outside_a_checkout_or_before_the_first_commit(outside_any_checkout):
    assert git_commit(outside_any_checkout) is None
    assert git_commit(outside_any_checkout / "missing") is None
    (outside_any_checkout / "fresh").mkdir()
    _git(outside_any_checkout / "fresh", "init", "-q")
    assert git_commit(outside_any_checkout / "fresh") is None  # `git rev-parse HEAD` prints 'HEAD' there


def test_git_commit_by_default_is_this_checkouts():
    try:
        head = _git(REPO, "rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the tests are not running from a git checkout")
    assert git_commit() in (head, f"{head}-dirty")


def test_package_versions_are_the_installed_ones():
    versions = package_versions()
    assert list(versions)[:3] == ["esort_jax", "jax", "jaxlib"] and "orbax-checkpoint" in versions
    assert versions["esort_jax"] == esort_jax.__version__
    assert versions["numpy"] == np.__version__ == importlib.metadata.version("numpy")
    assert package_versions(("numpy", "no-such-package-xyz")) == {"numpy": np.__version__, "no-such-package-xyz": None}


def test_utc_now_and_provenance():
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    stamp = datetime.datetime.fromisoformat(utc_now())
    assert stamp.utcoffset() == datetime.timedelta(0) and stamp.microsecond == 0
    assert before <= stamp <= datetime.datetime.now(datetime.timezone.utc)
    record = provenance()
    assert set(record) == {"created_utc", "git_commit", "packages", "native_thread_pools"}
    assert record["git_commit"] == git_commit() and record["packages"] == package_versions()
    assert record["native_thread_pools"] == native_thread_pools()


def test_native_thread_pools_report_the_blas_thread_count_in_force():
    from threadpoolctl import threadpool_limits

    def blas_counts():
        return {pool["num_threads"] for pool in native_thread_pools() if pool["user_api"] == "blas"}

    assert blas_counts(), "numpy should be linked to a BLAS that threadpoolctl sees"
    pools = native_thread_pools()
    assert all(set(pool) == {"user_api", "internal_api", "version", "num_threads"} for pool in pools)
    assert len(pools) == len({tuple(sorted(pool.items())) for pool in pools})  # one entry per distinct pool
    with threadpool_limits(limits=1, user_api="blas"):
        assert blas_counts() == {1}
    with threadpool_limits(limits=3, user_api="blas"):
        assert blas_counts() == {3}
