import multiprocessing
import time

from esort_jax.runtime.cache import cached, config_hash


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
