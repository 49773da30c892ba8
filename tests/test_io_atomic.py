"""Atomic writes: the user's umask decides modes; temporaries of dead writers are removed, those
of live ones are not; a failed write leaves nothing behind."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from esort_jax.io import atomic
from esort_jax.io.atomic import atomic_file, atomic_folder, atomic_path, remove_stale_temporaries, write_json

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def umask(value):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def _modes(folder: Path) -> set:
    return {(p.is_dir(), p.stat().st_mode & 0o777) for p in [folder, *folder.rglob("*")]}


@pytest.mark.parametrize("mask", [0o002, 0o022])
def test_outputs_get_the_modes_of_the_umask(tmp_path, mask):
    with umask(mask):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "sub").mkdir()
            np.save(tmp / "sub" / "a.npy", np.zeros(3))
            write_json(tmp / "meta.json", {"a": 1})
        with atomic_file(tmp_path / "file.bin") as handle:
            handle.write(b"x")
        with atomic_path(tmp_path / "h5.h5") as tmp:
            tmp.write_bytes(b"y")
    assert _modes(tmp_path / "out") == {(True, 0o777 & ~mask), (False, 0o666 & ~mask)}
    for name in ("file.bin", "h5.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_recording_folder_and_cache_entry_follow_the_umask(tmp_path):
    from esort_jax import ArrayTraces, Recording
    from esort_jax.io import write_recording_folder
    from esort_jax.runtime.cache import cached

    recording = Recording(ArrayTraces(np.zeros((50, 2), np.float32)), 1000.0, np.zeros((2, 2)))
    with umask(0o002):
        path, _ = cached(tmp_path, "recordings", {"n": 1}, lambda p: write_recording_folder(p, recording), log=None)
    assert _modes(path) == {(True, 0o775), (False, 0o664)}


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    (tmp_path / "kept.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(tmp_path / "kept.json", "w") as handle:
            handle.write("{broken")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]
    assert (tmp_path / "kept.json").read_text() == '{"old": true}'


_WRITER = """
import sys, time
from esort_jax.io.atomic import atomic_folder
with atomic_folder(sys.argv[1]) as tmp:
    (tmp / "part.bin").write_bytes(b"0" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def _start_writer(destination: Path) -> tuple[subprocess.Popen, Path]:
    """A process writing `destination` through atomic_folder, paused mid-write."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(destination)],
                               stdout=subprocess.PIPE, text=True, env=env)
    tmp = Path(process.stdout.readline().strip())
    assert tmp.is_dir() and tmp.name.startswith(f".{destination.name}.tmp-")
    return process, tmp


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path, caplog):
    live, live_tmp = _start_writer(tmp_path / "out")
    dead, dead_tmp = _start_writer(tmp_path / "out")
    _kill(dead)
    try:
        with caplog.at_level("WARNING", logger="esort_jax.io.atomic"):
            with atomic_folder(tmp_path / "out") as tmp:
                (tmp / "done.txt").write_text("ok")
        assert not dead_tmp.exists()
        assert f"removed stale temporary {dead_tmp}" in caplog.text and f"pid {dead.pid}" in caplog.text
        assert live_tmp.is_dir() and (live_tmp / "part.bin").is_file()  # a live writer's is left alone
        assert (tmp_path / "out" / "done.txt").read_text() == "ok"
    finally:
        _kill(live)


def test_a_recycled_pid_or_another_machine(tmp_path):
    host, boot, pid, start = atomic._owner(os.getpid()).split(".")
    recycled = tmp_path / f".out.tmp-{host}.{boot}.{pid}.{int(start) + 1}.0000abcd"  # our pid, another start
    rebooted = tmp_path / f".out.old-{host}.{'0' * 8}.{pid}.{start}.0000abcd"
    elsewhere = tmp_path / f".out.tmp-{'0' * 8}.{boot}.999999.1.0000abcd"  # another host: unknown
    mine = tmp_path / f".out.tmp-{host}.{boot}.{pid}.{start}.0000abcd"
    unrelated = tmp_path / ".out.tmp-abc"  # not our naming (e.g. an old mkdtemp)
    for path in (recycled, rebooted, elsewhere, mine, unrelated):
        path.mkdir()
    messages = []
    removed = remove_stale_temporaries(tmp_path, log=messages.append)
    assert sorted(removed) == sorted([recycled, rebooted]) and len(messages) == 2
    assert elsewhere.is_dir() and mine.is_dir() and unrelated.is_dir()


def _cache_build_job(root):
    from esort_jax.runtime.cache import cached

    def build(path):
        with atomic_folder(path) as tmp:
            (tmp / "part.bin").write_bytes(b"0" * 1000)
            time.sleep(60)

    cached(root, "things", {"k": "killed"}, build, log=None)


def test_cache_build_removes_stale_temporaries_of_its_kind(tmp_path):
    from esort_jax.runtime.cache import cached

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_io_atomic as t; t._cache_build_job(sys.argv[1])"
    killed = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env)
    things = tmp_path / "things"
    deadline = time.monotonic() + 60
    while not list(things.glob(".*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    stale = list(things.glob(".*.tmp-*"))
    _kill(killed)
    assert len(stale) == 1 and stale[0].is_dir()
    live, live_tmp = _start_writer(things / "someone_elses")
    try:
        messages = []
        cached(tmp_path, "things", {"k": "other"}, lambda p: p.mkdir(), log=messages.append)
        assert not stale[0].exists()
        assert any(f"removed stale temporary {stale[0]}" in m for m in messages), messages
        assert live_tmp.is_dir()
    finally:
        _kill(live)
