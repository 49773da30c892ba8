import json
import multiprocessing
import time

import pytest

from esort_jax.runtime.cache import cached, config_hash, entry_problem


def test_hash_ignores_dict_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_cached_builds_once_and_force_rebuilds(tmp_path):
    calls = []

    def build(path):
        calls.append(path)
        path.mkdir()
        (path / "x.txt").write_text(str(len(calls)))

    path, hit = cached(tmp_path, "things", {"n": 1}, build, log=None)
    assert not hit and (path / "x.txt").read_text() == "1"
    path2, hit2 = cached(tmp_path, "things", {"n": 1}, build, log=None)
    assert hit2 and path2 == path and len(calls) == 1
    _, hit3 = cached(tmp_path, "things", {"n": 1}, build, force=True, log=None)
    assert not hit3 and (path / "x.txt").read_text() == "2"


def _slow_build_job(root, counter_path):
    def build(path):
        with open(counter_path, "a") as handle:
            handle.write("built\n")
        time.sleep(0.5)
        path.mkdir()

    cached(root, "slow", {"k": 0}, build, log=None)


def test_concurrent_jobs_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=_slow_build_job, args=(tmp_path / "cache", counter)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
        assert job.exitcode == 0
    assert counter.read_text().count("built") == 1


def _counting_build(calls):
    def build(path):
        calls.append(path)
        path.mkdir()
        (path / "data.bin").write_bytes(b"0" * 100)
        (path / "sub").mkdir()
        (path / "sub" / "more.bin").write_bytes(b"1" * 10)

    return build


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: (p / "data.bin").write_bytes(b"0" * 50), "data.bin is 50 bytes; it was 100 bytes when built"),
        (lambda p: (p / "sub" / "more.bin").unlink(), "sub/more.bin is missing"),
        (lambda p: (p / "cache_key.json").write_text("{trunc"), "cache_key.json is unreadable"),
        (lambda p: (p / "cache_key.json").write_text('{"key": {"n": 2}}'), "records another key"),
        (lambda p: (p / "cache_key.json").unlink(), "cache_key.json is missing"),
    ],
)
def test_an_incomplete_entry_is_reported_and_rebuilt_not_returned(tmp_path, damage, reason):
    calls, messages = [], []
    path, _ = cached(tmp_path, "things", {"n": 1}, _counting_build(calls), log=None)
    damage(path)
    path2, hit = cached(tmp_path, "things", {"n": 1}, _counting_build(calls), log=messages.append)
    assert not hit and path2 == path and len(calls) == 2
    assert any("is incomplete" in m and reason in m for m in messages), messages
    assert (path / "data.bin").stat().st_size == 100 and (path / "sub" / "more.bin").is_file()
    assert entry_problem(path, {"n": 1}) is None
    _, hit = cached(tmp_path, "things", {"n": 1}, _counting_build(calls), log=None)
    assert hit and len(calls) == 2


def test_an_entry_from_before_manifests_is_still_a_hit(tmp_path):
    calls = []
    path, _ = cached(tmp_path, "things", {"n": 1}, _counting_build(calls), log=None)
    (path / "cache_key.json").write_text(json.dumps({"key": {"n": 1}, "build_seconds": 1.0}))
    _, hit = cached(tmp_path, "things", {"n": 1}, _counting_build(calls), log=None)
    assert hit and len(calls) == 1


def test_a_build_that_makes_no_folder_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="did not create the folder"):
        cached(tmp_path, "things", {"n": 1}, lambda path: None, log=None)
    assert not (tmp_path / "things" / config_hash({"n": 1})).exists()
