"""esort_jax.runtime.benchmarking (statistics over runs, machine description, reading a
benchmark's figures) and the A/B runner benchmarks/compare_revisions.py on a throw-away git
repository with a fake benchmark."""

import importlib.util
import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from esort_jax.runtime.benchmarking import (
    Spread, child_peak_rss_mb, describe_machine, figures_from_output, flat_numbers, machine, matmul_peak_gflops,
    paired_ratios, ratio_spread, spread, timings,
)

REPO = Path(__file__).resolve().parents[1]


def test_spread_is_median_and_range():
    s = spread([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.count) == (2.0, 1.0, 3.0, 3)
    assert spread([4, 1, 2, 3]).median == 2.5
    assert s.range() == [1.0, 3.0]
    assert s.format(".1f", " s") == "2.0 s [1.0–3.0 s]"
    assert s.to_dict() == {"median": 2.0, "low": 1.0, "high": 3.0, "count": 3}
    assert Spread(**s.to_dict()) == s
    with pytest.raises(ValueError):
        spread([])


def test_ratio_of_medians_with_range_over_pairs():
    current, base = [2.0, 4.0, 3.0], [1.0, 2.0, 6.0]
    assert paired_ratios(current, base) == [2.0, 2.0, 0.5]
    ratio = ratio_spread(current, base)
    assert ratio.median == pytest.approx(3.0 / 2.0)  # median(current) / median(base), not a median of ratios
    assert (ratio.low, ratio.high, ratio.count) == (0.5, 2.0, 3)
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    assert math.isnan(paired_ratios([1.0], [0.0])[0])


def test_timings_warm_up_then_time_each_call():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.01)

    seconds = timings(work, repeats=3)
    assert len(calls) == 4 and len(seconds) == 3  # one untimed warm-up
    assert all(0.01 <= s < 1.0 for s in seconds)
    calls.clear()
    assert len(timings(work, repeats=2, warmup=False)) == 2 and len(calls) == 2


def test_matmul_peak_over_given_shapes():
    peaks = matmul_peak_gflops(repeats=1, shapes=[(64, 128, 32), (32, 32, 32)])
    assert set(peaks) == {"64x128x32", "32x32x32", "peak"}
    assert peaks["peak"] == max(peaks["64x128x32"], peaks["32x32x32"]) > 0


def test_machine_describes_cpus_and_jax():
    description = machine()
    assert description["cpus"] >= description["cpus_usable"] >= 1
    assert isinstance(description["cpu_model"], str) and description["cpu_model"]
    assert description["backend"] == "cpu" and description["devices"]
    assert len(description["load_average"]) == 3
    line = describe_machine(description)
    assert f"{description['cpus_usable']}/{description['cpus']} CPUs" in line and "jax" in line
    assert "jax" not in machine(with_jax=False)


def test_flat_numbers_keeps_numeric_leaves():
    figures = {"a": 1, "b": {"c": 2.5, "d": {"e": 3}}, "flag": True, "name": "x", "runs": [1, 2], "none": None}
    assert flat_numbers(figures) == {"a": 1.0, "b.c": 2.5, "b.d.e": 3.0}


def test_figures_from_file_else_last_json_line(tmp_path):
    stdout = 'progress\n{"a": 1}\n[1, 2]\n{"a": 2}\n{not json\ndone\n'
    assert figures_from_output(stdout) == {"a": 2}
    path = tmp_path / "out.json"
    assert figures_from_output(stdout, [path]) == {"a": 2}  # no file: stdout
    path.write_text('{"a": 3}')
    assert figures_from_output(stdout, [tmp_path / "missing.json", path]) == {"a": 3}
    with pytest.raises(ValueError):
        figures_from_output("no json here\n[1]\n")


def test_child_peak_rss():
    result = child_peak_rss_mb("import numpy as np\nx = np.ones(20_000_000)\nRESULT = {'n': int(x.size)}")
    assert result["n"] == 20_000_000
    assert result["peak_rss_mb"] > 150  # 160 MB of float64 were resident
    with pytest.raises(RuntimeError):
        child_peak_rss_mb("raise SystemExit(3)")


# ----------------------------------------------------------------------------------------------
# benchmarks/compare_revisions.py

def _load_runner():
    spec = importlib.util.spec_from_file_location("compare_revisions", REPO / "benchmarks" / "compare_revisions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def two_commits(tmp_path):
    """A git repository whose file speed.txt holds 2.0 at HEAD~1 and 3.0 at HEAD."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for value in ("2.0", "3.0"):
        (repo / "speed.txt").write_text(value)
        _git(repo, "add", "speed.txt")
        _git(repo, "commit", "-q", "-m", value)
    return repo


# A fake benchmark: reports the tree's speed.txt, the run's order (a counter shared by all runs),
# a constant, and whether PYTHONPATH points at the tree it runs in.
FAKE = ("{python} -c \"import json, os, pathlib; c = pathlib.Path('{shared}') / 'n'; "
        "n = int(c.read_text()) if c.exists() else 0; c.write_text(str(n + 1)); "
        "json.dump({'speed': float(open('speed.txt').read()), 'order': n, 'const': {'k': 7}, "
        "'own_path': int(os.environ['PYTHONPATH'] == os.getcwd() == '{tree}')}, open('{out}', 'w'))\"")


def _worktrees(repo) -> int:
    listing = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True)
    return len(listing.stdout.splitlines())


def test_runner_alternates_trees_and_reports_ratio(two_commits, tmp_path, capsys):
    runner = _load_runner()
    out = tmp_path / "ab.json"
    result = runner.main(["--base", "HEAD~1", "--current", str(two_commits), "--pairs", "3", "--warmup", "1",
                          "--out", str(out), FAKE])
    rows = {r["metric"]: r for r in result["summary"]}
    speed = rows["speed"]
    assert speed["base"]["median"] == 2.0 and speed["current"]["median"] == 3.0
    assert speed["ratio"]["median"] == pytest.approx(1.5) and speed["ratio"]["low"] == pytest.approx(1.5)
    # 2 warm-up runs, then base first in even pairs and current first in odd ones
    assert [r["order"] for r in result["runs"]["base"]] == [2, 5, 6]
    assert [r["order"] for r in result["runs"]["current"]] == [3, 4, 7]
    assert all(r["own_path"] == 1 for r in result["runs"]["base"] + result["runs"]["current"])
    assert result["constant"] == ["const.k", "own_path"]
    assert json.loads(out.read_text())["summary"][0]["metric"] in ("speed", "order")
    printed = capsys.readouterr().out
    assert "speed" in printed and "1.500 [1.500–1.500]" in printed
    assert _worktrees(two_commits) == 1  # the temporary worktree is gone


def test_runner_metric_filter_overlay_and_base_command(two_commits):
    runner = _load_runner()
    (two_commits / "speed.txt").write_text("4.0")  # uncommitted: the current tree is the working tree
    (two_commits / "extra.txt").write_text("8.0")  # not in the base revision: copied over
    command = ("{python} -c \"import json; print('noise'); print(json.dumps({'speed': float(open('speed.txt').read()), "
               "'extra': float(open('extra.txt').read())}))\"")
    result = runner.main(["--base", "HEAD", "--current", str(two_commits), "--pairs", "2", "--metrics", "sp*,nothing*",
                          "--overlay", "extra.txt", command])
    assert [r["metric"] for r in result["summary"]] == ["speed"]
    assert result["summary"][0]["ratio"]["median"] == pytest.approx(4.0 / 3.0)
    base_only = command.replace("speed.txt", "extra.txt")
    result = runner.main(["--base", "HEAD", "--current", str(two_commits), "--pairs", "1", "--metrics", "speed",
                          "--overlay", "extra.txt", "--base-command", base_only, command])
    assert result["summary"][0]["base"]["median"] == 8.0
    # overlay files from a revision: speed.txt of HEAD~1 (2.0) replaces the base's (3.0)
    result = runner.main(["--base", "HEAD", "--current", str(two_commits), "--pairs", "1", "--metrics", "speed",
                          "--overlay", "speed.txt", "--overlay-from", "HEAD~1",
                          command.replace("'extra.txt'", "'speed.txt'")])
    assert result["summary"][0]["base"]["median"] == 2.0 and result["summary"][0]["current"]["median"] == 4.0


def test_runner_failure_names_the_command_and_cleans_up(two_commits):
    runner = _load_runner()
    with pytest.raises(RuntimeError, match="exit 3"):
        runner.main(["--base", "HEAD~1", "--current", str(two_commits), "--pairs", "1",
                     "{python} -c 'raise SystemExit(3)'"])
    with pytest.raises(RuntimeError, match="no JSON"):
        runner.main(["--base", "HEAD~1", "--current", str(two_commits), "--pairs", "1", "echo hello"])
    assert _worktrees(two_commits) == 1
