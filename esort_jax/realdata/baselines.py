"""Conventional spike sorters as baselines: run one through SpikeInterface on a span of a Recording.

    result = run_baseline("kilosort4", recording, "runs/ks4", span=(480_000, 960_000))
    result.sorting          # esort_jax Sorting, absolute sample indices of `recording`
    result.wall_seconds     # the run_sorter call, as a user waits for it
    result.version          # the sorter's version (SpikeInterface's for its own sorters)
    metrics = run_and_score("kilosort4", recording, truth, "runs/ks4", spans)   # results.json entry

The sorters themselves are never re-implemented: `spikeinterface.sorters.run_sorter` runs them
with their own defaults; `DEFAULT_PARAMS` lists the only values we change (and why), and any
parameter can be overridden. The optional stack (torch, kilosort, hdbscan, ...) is pinned in
`requirements-baselines.txt` and installed by `make baselines-venv`.

Spans: the recording is cut with SpikeInterface's `frame_slice(start, stop)`, so the sorter sees
exactly [start, stop) and numbers its spikes from 0; `shift_sorting` moves them back to absolute
samples. Recordings SpikeInterface cannot serialise (in-memory traces, e.g. a lazily
synthesised recording or an HDF5 file) are first written to a binary folder next to the sorter's
output, because every sorter re-loads its recording from its folder; that copy is not timed and
is deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from esort_jax.config import ConfigError, require
from esort_jax.evaluate import EvaluationResult, evaluate, scored_span
from esort_jax.model import ModelConfig
from esort_jax.recording import Recording, Sorting
from esort_jax.runtime.spikeinterface_jobs import spikeinterface_jobs
from esort_jax.windows import WindowConfig, split_spans

__all__ = [
    "SORTERS",
    "DEFAULT_PARAMS",
    "SORTER_SEED",
    "INSTALL_TARGET",
    "BaselinesConfig",
    "BaselineResult",
    "SorterNotInstalled",
    "SorterFailed",
    "check_sorter_name",
    "missing_modules",
    "require_installed",
    "sorter_params",
    "sorter_version",
    "sorted_span",
    "shift_sorting",
    "log_tail",
    "run_baseline",
    "evaluation_spans",
    "sorter_metrics",
    "run_and_score",
]

# The sorters this module knows, with the Python modules each needs beyond the core stack.
SORTER_MODULES: dict[str, tuple[str, ...]] = {
    "kilosort4": ("torch", "kilosort"),
    "spykingcircus2": ("numba", "hdbscan", "sklearn"),
    "tridesclous2": ("numba", "hdbscan", "sklearn"),
}
SORTERS: tuple[str, ...] = tuple(SORTER_MODULES)
INSTALL_TARGET = "make baselines-venv"

# The only parameters we set away from each sorter's own defaults.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    # SpikeInterface's 'auto' picks CUDA when torch sees a GPU; the comparison here runs on CPU.
    # Override with torch_device='cuda' (or 'auto') on a GPU host.
    "kilosort4": {"torch_device": "cpu"},
    "spykingcircus2": {},
    "tridesclous2": {},
}
# A sorter's random parameters that SpikeInterface leaves unseeded (default None: 'seed' of
# Tridesclous2, 'whitening_seed' of MountainSort5, ...) get this seed unless given (every random
# thing takes a named seed). Sorters that seed themselves (SpykingCircus2 seed=42, Kilosort4
# cluster_init_seed=5) keep their own. It does not make Tridesclous2 0.105.3 repeat: seeded, on
# one thread, it still labelled the same 64-channel recording differently from run to run
# (docs/claims.md, section 0).
SORTER_SEED = 0


class SorterNotInstalled(RuntimeError):
    """A baseline sorter's Python packages are missing (the message names the make target)."""


class SorterFailed(RuntimeError):
    """A baseline sorter raised while sorting (the message ends with the tail of its log)."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """Which sorters run, on what, with which parameter overrides.

    Attributes:
      sorters: names from SORTERS, run in this order.
      span: 'full' (default) sorts the whole recording, as a user runs a sorter; 'eval' sorts
        exactly the evaluation span (the held-out part E-Sort is scored on). Either way only the
        evaluation span is scored. Kilosort4 needs minutes of data (>= 1000 spikes per 40 µm
        depth bin), so 'eval' on short recordings cripples it.
      sorter_params: per sorter, parameters passed to run_sorter on top of DEFAULT_PARAMS.
      n_jobs: worker count for SpikeInterface's chunked steps (-1: every core).
      keep_recording_copy: keep the binary copy of a recording SpikeInterface cannot
        serialise (see run_baseline), e.g. to open a sorter's Phy output with waveforms.
      reference_sorter: the sorter whose accuracy E-Sort's label curve is measured against
        (None: none); must be one of `sorters`.
    """

    sorters: tuple[str, ...] = SORTERS
    span: Literal["eval", "full"] = "full"
    sorter_params: dict = dataclasses.field(default_factory=dict)
    n_jobs: int = -1
    keep_recording_copy: bool = False
    reference_sorter: str | None = "kilosort4"

    def validate(self, where: str = "") -> None:
        key = (lambda name: f"{where}.{name}" if where else name)
        require(len(self.sorters) > 0, key("sorters"), f"must name at least one of {list(SORTERS)}")
        for i, name in enumerate(self.sorters):
            check_sorter_name(name, f"{key('sorters')}[{i}]")
        require(
            len(set(self.sorters)) == len(self.sorters), key("sorters"),
            f"entries must be distinct; got {list(self.sorters)}",
        )
        for name, params in self.sorter_params.items():
            check_sorter_name(name, f"{key('sorter_params')}.{name}")
            require(
                params is None or isinstance(params, Mapping), f"{key('sorter_params')}.{name}",
                f"must be a mapping of parameter overrides; got {params!r}",
            )
        require(self.n_jobs != 0, key("n_jobs"), "must be -1 (every core) or >= 1; got 0")
        require(self.n_jobs >= -1, key("n_jobs"), f"must be -1 (every core) or >= 1; got {self.n_jobs}")
        if self.reference_sorter is not None:
            require(
                self.reference_sorter in self.sorters, key("reference_sorter"),
                f"must be one of sorters {list(self.sorters)} or null; got {self.reference_sorter!r}",
            )

    def overrides(self, name: str) -> dict:
        return dict(self.sorter_params.get(name) or {})


def check_sorter_name(name: Any, key: str = "sorter") -> str:
    """`name` if it is a known sorter; ConfigError naming `key` and the known sorters otherwise."""
    if name not in SORTER_MODULES:
        raise ConfigError(f"{key}: unknown sorter {name!r}; known sorters: {', '.join(SORTERS)}")
    return name


def check_spikeinterface_sorter(name: Any, key: str = "sorter") -> str:
    """`name` if SpikeInterface knows the sorter (run_baseline runs any, e.g. as a labeller);
    ConfigError naming `key` and the known sorters otherwise."""
    from spikeinterface.sorters import sorter_dict

    if name not in SORTER_MODULES and name not in sorter_dict:
        raise ConfigError(f"{key}: unknown sorter {name!r}; SpikeInterface's sorters: {', '.join(sorted(sorter_dict))}")
    return name


def missing_modules(name: str) -> list[str]:
    """The Python modules `name` needs that cannot be imported here."""
    check_spikeinterface_sorter(name)
    return [m for m in SORTER_MODULES.get(name, ()) if importlib.util.find_spec(m) is None]


def require_installed(name: str) -> None:
    """Raise SorterNotInstalled (naming the missing modules and the make target) unless the
    sorter can run here."""
    missing = missing_modules(name)
    if missing:
        raise SorterNotInstalled(
            f"sorter {name!r} is not installed: missing Python module(s) {', '.join(missing)}; "
            f"install the baseline stack with `{INSTALL_TARGET}` (requirements-baselines.txt)"
        )
    from spikeinterface.sorters import sorter_dict

    if not sorter_dict[name].is_installed():
        raise SorterNotInstalled(
            f"SpikeInterface reports sorter {name!r} as not installed; run `{INSTALL_TARGET}`"
        )


def sorter_params(name: str, overrides: Mapping[str, Any] | None = None, where: str = "sorter_params") -> dict:
    """DEFAULT_PARAMS[name] updated by `overrides`, each key checked against the sorter's own
    parameters (ConfigError naming `where.<name>.<key>` and the known ones), and SORTER_SEED for
    the sorter's seeds that are neither given nor seeded by default (`seed`, `*_seed` whose
    default is None). Needs the sorter installed (Kilosort4 lists its parameters only then)."""
    check_spikeinterface_sorter(name, where)
    require_installed(name)
    from spikeinterface.sorters import get_default_sorter_params

    known = get_default_sorter_params(name)
    params = {**DEFAULT_PARAMS.get(name, {}), **dict(overrides or {})}
    for key in params:
        if key not in known:
            raise ConfigError(
                f"{where}.{name}.{key}: not a parameter of {name} (known: {', '.join(sorted(known))})"
            )
    unseeded = [key for key, value in known.items() if value is None and (key == "seed" or key.endswith("_seed"))]
    return {**params, **{key: SORTER_SEED for key in unseeded if key not in params}}


def sorter_version(name: str) -> str:
    """The sorter's version as SpikeInterface reports it."""
    require_installed(name)
    from spikeinterface.sorters import sorter_dict

    return str(sorter_dict[name].get_sorter_version())


# ----------------------------------------------------------------------------------------------
# Spans and spikes


def sorted_span(mode: str, num_samples: int, eval_span: tuple[int, int]) -> tuple[int, int]:
    """The samples a baseline sorts: the evaluation span ('eval') or everything ('full')."""
    if mode == "eval":
        return (int(eval_span[0]), int(eval_span[1]))
    if mode == "full":
        return (0, int(num_samples))
    raise ConfigError(f"span: must be 'eval' or 'full'; got {mode!r}")


def shift_sorting(sorting: Sorting, offset: int) -> Sorting:
    """The same spikes with `offset` added to every sample (span-relative → absolute)."""
    return dataclasses.replace(sorting, samples=sorting.samples + np.int64(offset))


# ----------------------------------------------------------------------------------------------
# Running a sorter


@dataclasses.dataclass(frozen=True, eq=False)
class BaselineResult:
    """One sorter's output on one span.

    Attributes:
      sorter, version: name and version (SpikeInterface's own sorters report a date version).
      sorting: spikes in absolute samples of the recording, units as the sorter numbered them.
      span: [start, stop) that was sorted.
      wall_seconds: the run_sorter call (folder set-up, binary copy the sorter makes, sorting,
        reading the result): what a user waits for.
      sorter_seconds: the sorter's own run as SpikeInterface logs it (without the set-up).
      folder: the sorter's output folder.
      params: the parameters we passed (DEFAULT_PARAMS + overrides); the rest are the sorter's.
    """

    sorter: str
    version: str
    sorting: Sorting
    span: tuple[int, int]
    wall_seconds: float
    sorter_seconds: float | None
    folder: Path
    params: dict

    @property
    def sorted_duration_s(self) -> float:
        return (self.span[1] - self.span[0]) / self.sorting.sampling_frequency

    @property
    def num_units_found(self) -> int:
        """Units with at least one spike."""
        return int(np.count_nonzero(self.sorting.spike_counts()))


def _serialisable(si_recording) -> bool:
    return bool(si_recording.check_serializability("json") or si_recording.check_serializability("pickle"))


def _warn_dangling_phy_params(sorter_folder: Path, removed: Path) -> None:
    """Warn about Phy params.py files whose dat_path points into the removed recording copy."""
    for params_file in sorted(sorter_folder.rglob("params.py")):
        try:
            text = params_file.read_text()
        except OSError:
            continue
        if str(removed.resolve()) in text or str(removed) in text:
            warnings.warn(
                f"{params_file}: dat_path points to {removed}, the binary copy of the recording made for the "
                "sorter and removed after it (Phy will open without waveforms); run_baseline(..., "
                "keep_recording_copy=True) keeps it",
                stacklevel=3,
            )


def log_tail(folder: Path, lines: int = 40) -> str:
    """The end of what a sorter left in its folder: SpikeInterface's error trace and the
    sorter's own log files."""
    parts = []
    si_log = folder / "spikeinterface_log.json"
    if si_log.is_file():
        try:
            trace = json.loads(si_log.read_text()).get("error_trace") or []
        except (OSError, ValueError):
            trace = []
        if trace:
            parts.append(f"--- {si_log} (error_trace, last {lines} lines)\n" + "\n".join(trace[-lines:]))
    for path in sorted((folder / "sorter_output").glob("*.log")) if (folder / "sorter_output").is_dir() else []:
        text = path.read_text(errors="replace").splitlines()
        parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) if parts else f"(no log found in {folder})"


# Sorters that may write their preprocessed traces (float32) into the sorter folder: Tridesclous2
# and SpykingCircus2 cache them on disk when they exceed their share of the RAM
# (`cache_preprocessing`); 10 minutes of 384 channels are 30 GB.
DISK_CACHING_SORTERS = ("tridesclous2", "spykingcircus2")


def disk_warning(name: str, num_channels: int, num_samples: int, folder: Path) -> str | None:
    """A warning when `folder`'s disk has less free space than sorter `name` may write there
    (its preprocessed traces as float32: 4 x channels x samples bytes), else None. A warning,
    not a refusal: the sorter caches in memory when the traces fit."""
    if name not in DISK_CACHING_SORTERS:
        return None
    need = 4 * int(num_channels) * int(num_samples)
    free = shutil.disk_usage(folder).free
    if free >= need:
        return None
    return (f"{name} may cache its preprocessed traces ({need / 1e9:.1f} GB as float32) in {folder}, whose disk has "
            f"{free / 1e9:.1f} GB free: it can fail with 'No space left on device' after running for a while; "
            "free space or give an output folder on a larger disk")


def _sorter_input(recording, start: int, stop: int, output_folder: Path):
    """(SpikeInterface recording of [start, stop), the binary copy made for the sorter or None) of a
    Recording or a SpikeInterface recording: one SpikeInterface cannot serialise is written to
    `<output_folder>/recording_binary/`."""
    from esort_jax.io import to_spikeinterface_recording
    from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS

    if isinstance(recording, Recording):
        recording = to_spikeinterface_recording(recording)
    si_recording = recording.frame_slice(start_frame=start, end_frame=stop)
    if _serialisable(si_recording):
        return si_recording, None
    copy_folder = output_folder / "recording_binary"
    with warnings.catch_warnings():  # "not serializable ... provenance": expected, that is why we copy
        warnings.filterwarnings("ignore", message="The extractor is not serializable")
        return si_recording.save(folder=copy_folder, format="binary", **SAVE_JOB_KWARGS), copy_folder


def _run_sorter(name, version, si_recording, sorter_folder: Path, params: dict, span, n_jobs: int,
                verbose: bool) -> tuple[Sorting, float]:
    """(the sorter's spikes in absolute samples, wall seconds) of SpikeInterface's run_sorter;
    SorterFailed with the log's tail when the sorter raises."""
    from spikeinterface.sorters import run_sorter

    from esort_jax.io import from_spikeinterface_sorting

    start, stop = span
    # Threads, not forked processes: the caller may already run JAX (forking it is unsafe).
    with spikeinterface_jobs(n_jobs=n_jobs, pool_engine="thread", progress_bar=False):
        started = time.perf_counter()
        try:
            si_sorting = run_sorter(
                name, si_recording, folder=str(sorter_folder), remove_existing_folder=True,
                verbose=verbose, raise_error=True, **params,
            )
        except Exception as error:  # the sorter's own exception types vary
            raise SorterFailed(
                f"{name} {version} failed on samples [{start}, {stop}) with parameters {params}: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}\n"
                f"{log_tail(sorter_folder)}"
            ) from error
        sorting = shift_sorting(from_spikeinterface_sorting(si_sorting), start)
        return sorting, time.perf_counter() - started


def run_baseline(
    name: str,
    recording: Recording,
    output_folder: str | Path,
    *,
    span: tuple[int, int] | None = None,
    params: Mapping[str, Any] | None = None,
    n_jobs: int = -1,
    verbose: bool = False,
    keep_recording_copy: bool = False,
) -> BaselineResult:
    """Run sorter `name` on recording[start:stop] with SpikeInterface's `run_sorter`.

    Args:
      name: one of SORTERS.
      recording: an esort_jax Recording (with channel positions), or a SpikeInterface recording.
      output_folder: created (replaced when it exists); the sorter's files go to
        `<output_folder>/sorter/`.
      span: [start, stop) to sort (default: the whole recording).
      params: parameter overrides on top of DEFAULT_PARAMS[name] (checked against the sorter's).
      n_jobs: workers for SpikeInterface's chunked steps (-1: every core).
      keep_recording_copy: a recording SpikeInterface cannot serialise (e.g. in memory) is
        first written as a binary folder `<output_folder>/recording_binary/` for the sorter;
        keep it (it is what a sorter's Phy output, e.g. Kilosort's params.py, points to) or
        remove it after sorting (default: it is as large as the span in float32; a warning
        names any params.py left pointing to it).
    Returns a BaselineResult whose sorting is in absolute samples.
    Raises SorterNotInstalled, ConfigError (a bad parameter), SorterFailed (with the log tail).
    """
    params = sorter_params(name, params)
    version = sorter_version(name)
    num_samples = recording.num_samples if isinstance(recording, Recording) else recording.get_num_samples()
    start, stop = (0, num_samples) if span is None else (int(span[0]), int(span[1]))
    if not 0 <= start < stop <= num_samples:
        raise ValueError(f"span [{start}, {stop}) does not lie within the recording's [0, {num_samples})")
    output_folder = Path(output_folder)
    if output_folder.exists():
        shutil.rmtree(output_folder)
    output_folder.mkdir(parents=True)
    sorter_folder = output_folder / "sorter"

    num_channels = recording.num_channels if isinstance(recording, Recording) else recording.get_num_channels()
    low_disk = disk_warning(name, num_channels, stop - start, output_folder)
    if low_disk:
        warnings.warn(low_disk, stacklevel=2)
    si_recording, copy_folder = _sorter_input(recording, start, stop, output_folder)
    try:
        sorting, wall = _run_sorter(name, version, si_recording, sorter_folder, params, (start, stop), n_jobs, verbose)
    finally:
        if copy_folder is not None and not keep_recording_copy:
            shutil.rmtree(copy_folder, ignore_errors=True)
            _warn_dangling_phy_params(sorter_folder, copy_folder)

    sorter_seconds = None
    si_log = sorter_folder / "spikeinterface_log.json"
    if si_log.is_file():
        sorter_seconds = json.loads(si_log.read_text()).get("run_time")
    return BaselineResult(
        sorter=name, version=version, sorting=sorting, span=(start, stop), wall_seconds=wall,
        sorter_seconds=sorter_seconds, folder=sorter_folder, params=params,
    )


# ----------------------------------------------------------------------------------------------
# A sorter beside E-Sort: the same spans, the same evaluator


def evaluation_spans(num_samples: int, windows: WindowConfig, model: ModelConfig, mode: str) -> dict:
    """The spans of a comparison, in samples:
      eval_span: the held-out span, split as E-Sort's `make_windows` splits the recording;
      scored_span: where everything is scored, the samples `sort_and_evaluate` scores E-Sort on;
      sorted_span: what the sorters see ('eval': the held-out span, 'full': everything)."""
    _, eval_span = split_spans(num_samples, windows)
    return {
        "span": mode,
        "train_fraction": windows.train_fraction,
        "eval_span": list(eval_span),
        "scored_span": list(scored_span(eval_span, window=model.window, anchor=model.anchor)),
        "sorted_span": list(sorted_span(mode, num_samples, eval_span)),
    }


def sorter_metrics(result: BaselineResult, evaluation: EvaluationResult) -> dict:
    """results.json entry of one sorter: the keys of an E-Sort arm's where they apply."""
    import spikeinterface

    return {
        "status": "ok",
        **evaluation.to_dict(),
        "sort_seconds": result.wall_seconds,
        "sorter_run_seconds": result.sorter_seconds,
        "sorted_duration_s": result.sorted_duration_s,
        "sorted_span": list(result.span),
        "num_units_found": result.num_units_found,
        "num_spikes_found": result.sorting.num_spikes,
        "sorter_version": result.version,
        "spikeinterface_version": spikeinterface.__version__,
        "params": result.params,
        "folder": str(result.folder),
        "per_unit": evaluation.per_unit(),
    }


def run_and_score(name: str, recording: Recording, truth: Sorting, folder: str | Path, spans: Mapping, *,
                  params: Mapping[str, Any] | None = None, n_jobs: int = -1, keep_recording_copy: bool = False,
                  tolerance_ms: float = 0.4) -> dict:
    """Sorter `name` on spans['sorted_span'] (`run_baseline` into `folder`), its spikes written to
    `folder`/sorting.npz and scored against `truth` on spans['scored_span'] (identities
    unknown: units paired by Hungarian matching). Returns `sorter_metrics`, or {status 'failed',
    error, params} when the sorter failed."""
    from esort_jax.io import write_sorting_npz

    try:
        result = run_baseline(name, recording, folder, span=tuple(spans["sorted_span"]), params=params,
                              n_jobs=n_jobs, keep_recording_copy=keep_recording_copy)
    except SorterFailed as error:
        return {"status": "failed", "error": str(error), "params": params}
    scored = evaluate(result.sorting, truth, tolerance_ms=tolerance_ms, identities="unknown",
                      span=tuple(spans["scored_span"]))
    write_sorting_npz(Path(folder) / "sorting.npz", result.sorting)
    return sorter_metrics(result, scored)
