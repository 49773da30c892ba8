"""A/B timing of two revisions on this machine: the current working tree against a git revision.

    .venv/bin/python benchmarks/compare_revisions.py --base REV [--pairs 5] [--warmup 1]
        [--metrics GLOB,GLOB...] [--overlay PATH]... [--overlay-from REV] [--base-command CMD]
        [--out FILE] "COMMAND"

The base revision is checked out into a temporary `git worktree` (removed afterwards). COMMAND
(run by the shell) is run alternately in the base and the current tree, --pairs times each
(base first in even pairs, current first in odd ones, so neither always runs on a warmer or
quieter machine), with the working directory and PYTHONPATH set to that tree and the same
Python. Placeholders in COMMAND: {python} (this interpreter), {tree} (the tree's root), {out}
(a JSON file path for this run), {outdir} (an empty folder for this run), {shared} (a folder
shared by all runs, e.g. a cache). A run's figures are read from {out}, else
{outdir}/results.json (a Hydra run folder), else the last line of its output that is a JSON
object; every numeric leaf is a metric ('a.b' for nested keys).

Printed per metric: the median [min–max] over the runs of each tree and the ratio of the
medians, current / base, with its range over the pairs of runs (a ratio near 1 whose range
straddles 1 means "same speed within run-to-run noise"). Examples:

  # training step (bench_train.py has printed a JSON line with --json at every revision)
  compare_revisions.py --base 170ba88 --pairs 5 --metrics 'step_seconds_*,windows_per_second*,fraction_of_peak*' \\
      '{python} benchmarks/bench_train.py --json'
  # sorting benchmark (a Hydra main: results.json in the run folder)
  compare_revisions.py --base 170ba88 --pairs 3 --metrics '*realtime_factor*,fraction_of_peak*' \\
      '{python} experiments/benchmark.py hydra.run.dir={outdir} logger=disabled cache_dir={shared}'
  # a script whose base version cannot write JSON: run the current script in both trees
  compare_revisions.py --base 170ba88 --overlay benchmarks/bench_infer.py \\
      --overlay esort_jax/runtime/benchmarking.py '{python} benchmarks/bench_infer.py --out {out}'
  (--overlay-from REV takes those files from a revision instead, e.g. one whose script still
  imports the names the base revision has)
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from any folder
    sys.path.insert(0, str(REPO))

from esort_jax.runtime.benchmarking import (  # noqa: E402
    figures_from_output, flat_numbers, load_average, machine, ratio_spread, spread,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", help="benchmark command (shell), with placeholders; see above")
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--current", type=Path, default=None,
                        help="the current tree (default: the git work tree of the working directory)")
    parser.add_argument("--pairs", type=int, default=5, help="runs of each tree, alternating")
    parser.add_argument("--warmup", type=int, default=0, help="untimed runs of each tree first")
    parser.add_argument("--metrics", action="append", default=None,
                        help="glob patterns (comma-separated; repeatable) of metrics to report; default all")
    parser.add_argument("--overlay", action="append", default=[], type=Path,
                        help="a file copied from the current tree into the base tree before running (repeatable)")
    parser.add_argument("--overlay-from", default=None,
                        help="take the --overlay files from this git revision instead of the current tree")
    parser.add_argument("--base-command", default=None, help="a different command for the base tree")
    parser.add_argument("--all", action="store_true", help="list metrics equal in every run even if many")
    parser.add_argument("--keep", action="store_true", help="keep run folders and logs (path printed)")
    parser.add_argument("--out", type=Path, default=None, help="write every run's metrics and the summary here")
    return parser.parse_args(argv)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def base_worktree(current: Path, revision: str, overlay: list[Path], overlay_from: str | None = None):
    """A temporary detached worktree of `revision`, with the files in `overlay` copied over it
    from the current tree (or, given `overlay_from`, from that revision); removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="ab_base_"))
    tree = folder / "tree"
    _git(current, "worktree", "add", "--detach", str(tree), revision)
    try:
        for path in overlay:
            target = tree / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if overlay_from:
                target.write_bytes(subprocess.run(["git", "show", f"{overlay_from}:{path.as_posix()}"], cwd=current,
                                                  check=True, capture_output=True).stdout)
            else:
                shutil.copy2(current / path, target)
        yield tree
    finally:
        _git(current, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)


def fill(command: str, values: dict[str, str]) -> str:
    """`command` with each {name} of `values` replaced (other braces left alone)."""
    for name, value in values.items():
        command = command.replace("{" + name + "}", value)
    return command


def run_once(command: str, tree: Path, run_dir: Path, shared: Path) -> dict[str, float]:
    """Run `command` in `tree` (cwd and PYTHONPATH) and return its metrics; its output goes to
    run_dir/log.txt. Raises RuntimeError if it fails or reports nothing."""
    run_dir.mkdir(parents=True)
    outdir = run_dir / "outdir"
    outdir.mkdir()
    out = run_dir / "result.json"
    filled = fill(command, {"python": sys.executable, "tree": str(tree), "out": str(out),
                            "outdir": str(outdir), "shared": str(shared)})
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(filled, shell=True, cwd=tree, env=env, capture_output=True, text=True)
    (run_dir / "log.txt").write_text(f"$ {filled}\n{done.stdout}\n--- stderr ---\n{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"{filled!r} failed in {tree} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    try:
        return flat_numbers(figures_from_output(done.stdout, [out, outdir / "results.json"]))
    except ValueError as error:
        raise RuntimeError(f"{filled!r} in {tree}: {error}") from None


def alternate(commands: dict[str, str], trees: dict[str, Path], pairs: int, warmup: int, workdir: Path) -> dict:
    """{'base': [metrics per run], 'current': [...]}: warm-up runs first (discarded), then
    `pairs` pairs of runs, base first in even pairs and current first in odd ones."""
    shared = workdir / "shared"
    shared.mkdir(exist_ok=True)
    runs: dict[str, list] = {"base": [], "current": []}
    schedule = [(f"warmup{i}", name, False) for i in range(warmup) for name in ("base", "current")]
    for i in range(pairs):
        order = ("base", "current") if i % 2 == 0 else ("current", "base")
        schedule += [(f"pair{i}", name, True) for name in order]
    for label, name, kept in schedule:
        started = time.perf_counter()
        metrics = run_once(commands[name], trees[name], workdir / f"{label}_{name}", shared)
        print(f"[ab] {label} {name:7s} {time.perf_counter() - started:7.1f} s  load {load_average()[0]:.2f}",
              file=sys.stderr, flush=True)
        if kept:
            runs[name].append(metrics)
    return runs


def summarise(runs: dict, patterns: list[str]) -> tuple[list[dict], list[str], list[str]]:
    """(rows for metrics that vary, names of metrics equal in every run, names missing from
    some run). A row: metric, base and current Spread, ratio (current / base) Spread."""
    names = [n for n in runs["current"][0] if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    every = runs["base"] + runs["current"]
    missing = [n for n in names if any(n not in r for r in every)]
    rows, constant = [], []
    for name in (n for n in names if n not in missing):
        base = [r[name] for r in runs["base"]]
        current = [r[name] for r in runs["current"]]
        if len(set(base + current)) == 1:
            constant.append(name)
            continue
        rows.append({"metric": name, "base": spread(base), "current": spread(current),
                     "ratio": ratio_spread(current, base)})
    return rows, constant, missing


def _number_format(*spreads) -> str:
    """A format spec that suits the magnitude of a metric's values (no exponents for rates)."""
    values = [v for s in spreads for v in (s.median, s.low, s.high)]
    smallest = min(abs(v) for v in values)
    integral = all(float(v).is_integer() for v in values)
    return ".0f" if smallest >= 1000 or integral else ".2f" if smallest >= 10 else ".4g"


def format_rows(rows: list[dict]) -> str:
    """The comparison table: median [min–max] per tree, ratio of medians [range over pairs]."""
    width = max([len(r["metric"]) for r in rows] + [6])
    lines = [f"{'metric':{width}s}  {'base: median [min–max]':>30s}  {'current: median [min–max]':>30s}  "
             f"{'current/base [pairs]':>22s}"]
    for r in rows:
        spec = _number_format(r["base"], r["current"])
        lines.append(f"{r['metric']:{width}s}  {r['base'].format(spec):>30s}  {r['current'].format(spec):>30s}  "
                     f"{r['ratio'].format('.3f'):>22s}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    current = (args.current or Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))).resolve()
    base_hash = _git(current, "rev-parse", "--verify", f"{args.base}^{{commit}}")
    head = _git(current, "rev-parse", "HEAD") + (" (with uncommitted changes)" if _git(current, "status", "--porcelain")
                                                  else "")
    commands = {"base": args.base_command or args.command, "current": args.command}
    workdir = Path(tempfile.mkdtemp(prefix="ab_runs_"))
    print(f"[ab] base {args.base} = {base_hash}; current {current} at {head}; {args.pairs} pairs", file=sys.stderr)
    try:
        with base_worktree(current, base_hash, args.overlay, args.overlay_from) as base_tree:
            runs = alternate(commands, {"base": base_tree, "current": current}, args.pairs, args.warmup, workdir)
    finally:
        if args.keep:
            print(f"[ab] run folders and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    patterns = [p for group in args.metrics or ["*"] for p in group.split(",") if p]
    rows, constant, missing = summarise(runs, patterns)
    print(f"A/B: current ({head}) / base ({args.base} = {base_hash[:12]}), {args.pairs} runs each, alternating")
    print(format_rows(rows))
    if constant:  # e.g. a loss or a spike count: the same work was done in both trees
        listed = args.all or len(constant) <= 12
        print(f"{len(constant)} metrics equal in every run" + (f": {', '.join(constant)}" if listed else ""))
    if missing:
        print(f"not in every run (left out): {', '.join(missing)}")
    result = {"base": base_hash, "current": head, "command": commands, "pairs": args.pairs,
              "machine": machine(with_jax=False), "runs": runs, "constant": constant, "missing": missing,
              "summary": [{"metric": r["metric"], **{k: r[k].to_dict() for k in ("base", "current", "ratio")}}
                          for r in rows]}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
