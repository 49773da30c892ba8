"""Window labels, balanced / K-spikes-per-unit window sets, and batches of windows.

A window is named by its start sample i (absolute, in the recording): it covers samples
[i, i + W) and is "about" its anchor sample i + A (ModelConfig.window / .anchor; paper 60 / 29).
Unit n is positive for window i when one of its spikes s has |s - (i + A)| <= J
(`WindowConfig.jitter`; paper 5 for training, 0 for exact labels). Overlapping spikes of several
units make several positives. Labels come from any `Sorting`: ground truth, or a conventional
sorter's output on the first stretch of a real recording.

Spans are half-open sample intervals [start, stop):

    recording                 [0, T)
    ├── training region       [r0, r1)   first `train_fraction` of T, or `train_span`
    │   ├── fit part          [r0, v0)   training windows (K mode: only its prefix [r0, p))
    │   └── validation part   [v0, r1)   last `validation_fraction` of the region
    └── evaluation span       [e0, e1)   default [r1, T); never touched: a window that
                                         overlaps it is never used, for training or validation

Training set (`make_windows`):
- positives: every start within ±J of a *kept* spike (all of its 2J+1 windows must fit in the
  fit part, so a kept spike gives exactly 2J+1 positive starts; spikes too close to an edge are
  not eligible). All spikes are kept by default; with `spikes_per_unit = K` only each unit's
  first K eligible spikes are kept (label-efficiency mode, K·(2J+1) positive windows per unit),
  and the training span is cut to the prefix [r0, p) that ends with the last positive window of
  the last unit to reach K.
- negatives: `negatives_per_positive` × #positives random starts drawn from the same span whose
  label vector is all zero with respect to ALL spikes of the sorting -- every unit, kept or not,
  selected or not, dropped or not. A window whose anchor is within ±J of an unkept spike is not a
  true negative (the neuron did fire there), so it is never drawn as one.
- label vectors are computed from all spikes of the selected units, not only the kept ones. The
  K limit decides which windows are *chosen* as positives; a chosen window that also sees an
  unkept spike of another unit is labelled positive for that unit too, because it is (the label
  source, ground truth or a sorter's output over the stretch, is complete there). The report
  lists, per unit, its kept spikes and its positive (window, unit) entries.
- units with fewer than K eligible spikes in the fit part are never silent
  (`short_units`): 'error' (default) raises `LabelError` listing them with their counts;
  'drop' removes them from the label columns (the model gets fewer outputs, `unit_ids` says
  which); 'keep_all' keeps all their (fewer than K) spikes -- the prefix is then set by the
  units that did reach K and their positives may lie beyond it. Both log a warning and appear in
  `WindowSets.report`.

Validation set: balanced windows (positives within ±J of any spike of a selected unit, plus
all-negative windows in the same ratio) from the validation part, at most
`max_validation_windows`, drawn once with a fixed seed. It lies after the fit part, so no sample
of a validation window is in any training window; it does not depend on K, so window-level
metrics are comparable across K. It uses labels beyond the first K spikes: it is for monitoring,
not for training.

Windows are never materialised here: a batch is gathered from the traces by start sample when a
step needs it (esort_jax.batches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Literal

import numpy as np

from esort_jax.config import ConfigError, require
from esort_jax.recording import Recording, Sorting

__all__ = [
    "WindowConfig",
    "WindowSet",
    "WindowSets",
    "LabelError",
    "check_labels",
    "check_distinct_ids",
    "window_labels",
    "positive_starts",
    "make_windows",
    "split_spans",
    "balanced_windows",
]

log = logging.getLogger(__name__)

# The named numpy streams of window sampling: default_rng((seed, STREAMS[name])). The numbers are
# part of every result (changing one changes the windows drawn), so they are fixed here once.
STREAMS = {"negatives": 0, "validation": 1, "balanced": 2, "held_out": 7}

ShortUnitPolicy = Literal["error", "drop", "keep_all"]


class LabelError(ValueError):
    """Spike labels do not fit the recording or the requested window sets cannot be built."""


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """How training and validation windows are chosen (window length and anchor: ModelConfig).

    Attributes:
      jitter: J, a unit is positive if one of its spikes is within ±J samples of the anchor.
      spikes_per_unit: K for label-efficiency mode (first K eligible spikes per unit); None keeps
        every spike of the training region.
      short_units: what to do with units that have fewer than K eligible spikes: 'error',
        'drop' (remove the unit) or 'keep_all' (keep its fewer spikes). See the module doc.
      negatives_per_positive: all-negative windows drawn per positive window (paper: 1).
      train_fraction: the training region is the first `train_fraction` of the recording (when
        no explicit `train_span` is passed); the rest is the evaluation span.
      validation_fraction: trailing fraction of the training region held out for validation.
      max_validation_windows: cap on the validation set (0 disables validation).
      units: restrict the label columns to these unit ids (None: every unit of the sorting).
        Ids are matched by value, or by their string form (config files give strings or ints).
    """

    jitter: int = 5
    spikes_per_unit: int | None = None
    short_units: ShortUnitPolicy = "error"
    negatives_per_positive: float = 1.0
    train_fraction: float = 0.5
    validation_fraction: float = 0.1
    max_validation_windows: int = 8192
    units: tuple[Any, ...] | None = None

    def validate(self, where: str = "windows") -> None:
        require(self.jitter >= 0, f"{where}.jitter", f"must be >= 0; got {self.jitter}")
        require(
            self.spikes_per_unit is None or self.spikes_per_unit >= 1,
            f"{where}.spikes_per_unit",
            f"K must be >= 1 (or null for all spikes); got {self.spikes_per_unit}",
        )
        require(
            self.short_units in ("error", "drop", "keep_all"),
            f"{where}.short_units",
            f"must be 'error', 'drop' or 'keep_all'; got {self.short_units!r}",
        )
        require(
            self.negatives_per_positive >= 0,
            f"{where}.negatives_per_positive",
            f"must be >= 0; got {self.negatives_per_positive}",
        )
        require(
            0.0 < self.train_fraction <= 1.0,
            f"{where}.train_fraction",
            f"must lie in (0, 1]; got {self.train_fraction}",
        )
        require(
            0.0 <= self.validation_fraction < 1.0,
            f"{where}.validation_fraction",
            f"must lie in [0, 1); got {self.validation_fraction}",
        )
        require(
            self.max_validation_windows >= 0,
            f"{where}.max_validation_windows",
            f"must be >= 0; got {self.max_validation_windows}",
        )
        require(
            self.units is None or len(self.units) > 0,
            f"{where}.units",
            "must list at least one unit id (or be null for all units)",
        )


@dataclasses.dataclass(frozen=True, eq=False)
class WindowSet:
    """Windows named by start sample, with their multi-label targets.

    Attributes:
      starts: [M] int64 absolute start samples, increasing.
      labels: [M, N] uint8, 1 where the unit (column) is positive for the window.
      window: W.  anchor: A.  jitter: J the labels were made with.
    """

    starts: np.ndarray
    labels: np.ndarray
    window: int
    anchor: int
    jitter: int

    def __post_init__(self):
        starts = np.asarray(self.starts, dtype=np.int64).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.uint8)
        if labels.ndim != 2 or labels.shape[0] != starts.size:
            raise ValueError(f"labels must be [{starts.size}, N]; got shape {labels.shape}")
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def num_units(self) -> int:
        return int(self.labels.shape[1])

    @property
    def num_positive_windows(self) -> int:
        return int(np.count_nonzero(self.labels.any(axis=1)))

    def span(self) -> tuple[int, int]:
        """The samples [start, stop) the windows touch ((0, 0) when empty)."""
        if not len(self):
            return (0, 0)
        return (int(self.starts.min()), int(self.starts.max()) + self.window)

    def fingerprint(self) -> str:
        """sha256 of the starts and labels (identifies the training data of a run)."""
        digest = hashlib.sha256()
        digest.update(np.asarray([self.window, self.anchor, self.jitter], np.int64).tobytes())
        digest.update(self.starts.tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class WindowSets:
    """What `make_windows` returns.

    Attributes:
      train, validation: the window sets (validation may be empty).
      unit_ids: [N] ids of the label columns (after `units` selection and the short-unit policy).
      kept_spikes: the spikes whose windows are the training positives (a Sorting over the
        original unit ids).
      train_span: samples the training windows touch (K mode: the prefix, plus keep_all units'
        later positives); validation_span; eval_span: reserved for evaluation.
      config: the WindowConfig used.
      report: JSON-able summary (counts per unit, short units and the action taken, sizes).
    """

    train: WindowSet
    validation: WindowSet
    unit_ids: np.ndarray
    kept_spikes: Sorting
    train_span: tuple[int, int]
    validation_span: tuple[int, int]
    eval_span: tuple[int, int]
    config: WindowConfig
    report: dict

    @property
    def num_units(self) -> int:
        return int(self.unit_ids.size)

    @property
    def window(self) -> int:
        return self.train.window

    @property
    def anchor(self) -> int:
        return self.train.anchor


# ----------------------------------------------------------------------------------------------
# Labels


def check_labels(recording: Recording, sorting: Sorting) -> None:
    """Raise LabelError unless `sorting` fits `recording` (sampling rate, spike times in [0, T))
    and its unit ids can name the network's outputs (unique, not NaN)."""
    check_distinct_ids(sorting.unit_ids, "the labels'")
    fs_rec, fs_lab = recording.sampling_frequency, sorting.sampling_frequency
    if abs(fs_rec - fs_lab) > 1e-6 * fs_rec:
        raise LabelError(
            f"labels are at {fs_lab} Hz but the recording is at {fs_rec} Hz; convert spike times "
            "to the recording's samples first"
        )
    num_samples = recording.num_samples
    outside = (sorting.samples < 0) | (sorting.samples >= num_samples)
    if outside.any():
        bad = sorting.samples[outside]
        raise LabelError(
            f"{int(outside.sum())} spike time(s) lie outside the recording's samples [0, {num_samples}) "
            f"(range of offenders [{int(bad.min())}, {int(bad.max())}]); were the labels made for "
            "another recording or another sampling rate?"
        )


def check_distinct_ids(unit_ids: np.ndarray, whose: str = "the labels'") -> None:
    """LabelError for NaN or repeated unit ids (`whose` names the sorting in the message): a unit
    is scored, saved and reported by its id, so two units with one id (or an id equal to
    nothing, NaN) could never be told apart."""
    ids = np.asarray(unit_ids).tolist()
    if any(isinstance(u, float) and u != u for u in ids):
        raise LabelError(f"{whose} unit ids include NaN; give every unit a number or a name")
    seen, repeated = set(), []
    for u in ids:
        if u in seen and u not in repeated:
            repeated.append(u)
        seen.add(u)
    if repeated:
        raise LabelError(
            f"{whose} unit ids are not unique: {repeated[:10]} name more than one unit; give every "
            "unit its own id (or merge the units first)"
        )


def _select_units(sorting: Sorting, units: tuple | None) -> np.ndarray:
    """Indices into sorting.unit_ids of the requested units (all when None)."""
    if units is None:
        return np.arange(sorting.num_units)
    ids = list(sorting.unit_ids.tolist())
    as_text = [str(u) for u in ids]
    chosen, unknown = [], []
    for u in units:
        if u in ids:
            chosen.append(ids.index(u))
        elif str(u) in as_text:
            chosen.append(as_text.index(str(u)))
        else:
            unknown.append(u)
    if unknown:
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        raise LabelError(f"unknown unit id(s) {unknown} in windows.units; the labels have units [{shown}]")
    if len(set(chosen)) != len(chosen):
        raise LabelError(f"windows.units lists a unit twice: {list(units)}")
    return np.asarray(chosen, dtype=np.int64)


def positive_starts(spike_samples: np.ndarray, anchor: int, jitter: int) -> np.ndarray:
    """Sorted unique window starts whose anchor lies within ±jitter of one of the spikes."""
    spikes = np.asarray(spike_samples, dtype=np.int64).reshape(-1, 1)
    offsets = np.arange(-jitter, jitter + 1, dtype=np.int64).reshape(1, -1)
    return np.unique((spikes - anchor + offsets).reshape(-1))


def window_labels(
    starts: np.ndarray,
    sorting: Sorting,
    anchor: int,
    jitter: int,
    unit_indices: np.ndarray | None = None,
) -> np.ndarray:
    """[M, N] uint8 multi-labels: column n is 1 where unit `unit_indices[n]` has a spike within
    ±jitter of the window's anchor (start + anchor). Columns default to every unit."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    unit_indices = np.arange(sorting.num_units) if unit_indices is None else _unit_indices(unit_indices, sorting)
    column_of = np.full(sorting.num_units, -1, dtype=np.int64)
    column_of[unit_indices] = np.arange(unit_indices.size)
    labels = np.zeros((starts.size, unit_indices.size), dtype=np.uint8)
    if not starts.size or not sorting.num_spikes:
        return labels
    order = np.argsort(starts, kind="stable")
    sorted_starts = starts[order]
    columns = column_of[sorting.unit_indices]
    keep = columns >= 0
    spikes, columns = sorting.samples[keep], columns[keep]
    # Window i is positive for spike s iff s - anchor - jitter <= i <= s - anchor + jitter.
    lo = np.searchsorted(sorted_starts, spikes - anchor - jitter, side="left")
    hi = np.searchsorted(sorted_starts, spikes - anchor + jitter, side="right")
    counts = hi - lo
    rows = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    labels[order[rows], np.repeat(columns, counts)] = 1
    return labels


def _unit_indices(unit_indices, sorting: Sorting) -> np.ndarray:
    """Label columns as positions into `sorting.unit_ids`: integers in [0, N), each once (a
    negative index would silently label another unit: numpy counts it from the end)."""
    indices = np.asarray(unit_indices).reshape(-1)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise LabelError(
            f"unit_indices must be integer positions into the unit ids; got {indices.dtype} {indices[:5].tolist()}"
        )
    outside = indices[(indices < 0) | (indices >= sorting.num_units)]
    if outside.size:
        raise LabelError(
            f"unit_indices {outside[:10].tolist()} are not positions of the {sorting.num_units} units "
            f"(valid: 0..{sorting.num_units - 1}); to select units by id use Sorting.unit_index_of"
        )
    if np.unique(indices).size != indices.size:
        raise LabelError(f"unit_indices list a unit twice: {indices.tolist()[:20]}")
    return indices.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Start masks: which window starts a span allows


@dataclasses.dataclass(frozen=True)
class _Starts:
    """Allowed window starts: allowed[k] says whether start `first + k` may be used."""

    first: int
    allowed: np.ndarray

    @classmethod
    def of(cls, span: tuple[int, int], window: int, avoid: tuple[int, int]) -> "_Starts":
        first, last = span[0], span[1] - window  # windows inside the span
        allowed = np.ones(max(last - first + 1, 0), dtype=bool)
        if allowed.size and avoid[1] > avoid[0]:
            # Window [i, i + W) overlaps [e0, e1) iff e0 - W < i < e1.
            lo = max(avoid[0] - window + 1 - first, 0)
            hi = min(avoid[1] - 1 - first, allowed.size - 1)
            if lo <= hi:
                allowed[lo : hi + 1] = False
        return cls(first, allowed)

    def count(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Number of allowed starts in [lo, hi] (inclusive, absolute) for each pair."""
        cum = np.concatenate([[0], np.cumsum(self.allowed, dtype=np.int64)])
        lo = np.clip(np.asarray(lo) - self.first, 0, self.allowed.size)
        hi = np.clip(np.asarray(hi) - self.first + 1, 0, self.allowed.size)
        return np.where(hi > lo, cum[hi] - cum[np.minimum(lo, hi)], 0)

    def near(self, spikes: np.ndarray, anchor: int, jitter: int) -> np.ndarray:
        """[len] bool: the start's anchor lies within ±jitter of one of `spikes`."""
        n = self.allowed.size
        diff = np.zeros(n + 1, dtype=np.int64)
        lo = np.clip(np.asarray(spikes) - anchor - jitter - self.first, 0, n)
        hi = np.clip(np.asarray(spikes) - anchor + jitter + 1 - self.first, 0, n)
        np.add.at(diff, lo, 1)
        np.add.at(diff, hi, -1)
        return np.cumsum(diff[:n]) > 0

    def restrict(self, stop: int, window: int) -> "_Starts":
        """Only windows ending at or before `stop`."""
        n = int(np.clip(stop - window - self.first + 1, 0, self.allowed.size))
        return _Starts(self.first, self.allowed[:n])


def _span(value, name: str, num_samples: int) -> tuple[int, int]:
    start, stop = (int(v) for v in value)
    if not (0 <= start <= stop <= num_samples):
        raise LabelError(f"{name} [{start}, {stop}) does not lie within the recording's [0, {num_samples})")
    return (start, stop)


# ----------------------------------------------------------------------------------------------
# Window sets


def split_spans(
    num_samples: int,
    config: WindowConfig,
    *,
    train_span: tuple[int, int] | None = None,
    eval_span: tuple[int, int] | None = None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(training region, evaluation span) of a recording of `num_samples` samples, as
    `make_windows` splits it: the region is the first `config.train_fraction` (or `train_span`),
    the evaluation span the rest (or `eval_span`). Other tools (baseline sorters) use this to
    sort and score exactly the span E-Sort is scored on."""
    if train_span is None:
        region = (0, int(np.floor(config.train_fraction * num_samples)))
    else:
        region = _span(train_span, "train_span", num_samples)
    evaluation = _span((region[1], num_samples) if eval_span is None else eval_span, "eval_span", num_samples)
    return region, evaluation


def make_windows(
    recording: Recording,
    sorting: Sorting,
    config: WindowConfig,
    *,
    window: int,
    anchor: int,
    seed: int,
    train_span: tuple[int, int] | None = None,
    eval_span: tuple[int, int] | None = None,
) -> WindowSets:
    """Training and validation windows of `recording` labelled by `sorting` (see module doc).

    Args:
      recording: gives the sample count and the sampling rate the labels must match.
      sorting: spike labels (ground truth or a sorter's output); may cover only part of it.
      config: a WindowConfig.
      window, anchor: W and A (from ModelConfig).
      seed: seeds the negative and validation draws (numpy generators keyed by (seed, STREAMS[name])).
      train_span: explicit training region [start, stop) in samples (default: first
        `config.train_fraction` of the recording).
      eval_span: explicit evaluation span (default: the rest of the recording after the region).
    """
    config.validate()
    _check_window(window, anchor, config.jitter)
    check_labels(recording, sorting)
    spans = _Spans.of(recording.num_samples, config, window, train_span, eval_span)
    kept = _kept_spikes(sorting, _select_units(sorting, config.units), spans, config, anchor)
    train, negatives = _training_set(sorting, kept, spans, config, window=window, anchor=anchor, seed=seed)
    validation = balanced_windows(
        sorting, spans.validation, window=window, anchor=anchor, jitter=config.jitter,
        unit_indices=kept.columns, seed=seed, stream="validation",
        negatives_per_positive=config.negatives_per_positive, max_windows=config.max_validation_windows,
        avoid=spans.evaluation,
    )
    train_span = (int(train.starts.min()), int(train.starts.max()) + window)
    report = _report(spans, kept, train, validation, negatives, config, window=window, anchor=anchor,
                     num_samples=recording.num_samples, train_span=train_span)
    return WindowSets(
        train=train, validation=validation, unit_ids=kept.ids, kept_spikes=kept.sorting,
        train_span=train_span, validation_span=spans.validation, eval_span=spans.evaluation,
        config=config, report=report,
    )


def _check_window(window: int, anchor: int, jitter: int) -> None:
    if not (0 <= anchor < window):
        raise ConfigError(f"model.anchor: must lie in [0, window={window}); got {anchor}")
    if anchor - jitter < 0 or anchor + jitter >= window:
        raise ConfigError(
            f"windows.jitter: anchor {anchor} ± jitter {jitter} must stay inside the window [0, {window})"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class _Spans:
    """How make_windows splits the recording: training region = fit part + validation part,
    and the evaluation span; `fit_starts` are the window starts allowed in the fit part."""

    region: tuple[int, int]
    fit: tuple[int, int]
    validation: tuple[int, int]
    evaluation: tuple[int, int]
    fit_starts: "_Starts"

    @classmethod
    def of(cls, num_samples: int, config: WindowConfig, window: int, train_span, eval_span) -> "_Spans":
        region, evaluation = split_spans(num_samples, config, train_span=train_span, eval_span=eval_span)
        validation_length = int(np.floor(config.validation_fraction * (region[1] - region[0])))
        fit = (region[0], region[1] - validation_length)
        fit_starts = _Starts.of(fit, window, evaluation)
        if not fit_starts.allowed.any():
            raise LabelError(
                f"empty training span: the fit part [{fit[0]}, {fit[1]}) of the training region "
                f"[{region[0]}, {region[1]}) holds no window of {window} samples outside the evaluation "
                f"span [{evaluation[0]}, {evaluation[1]}); check windows.train_fraction / train_span"
            )
        return cls(region, fit, (fit[1], region[1]), evaluation, fit_starts)


@dataclasses.dataclass(frozen=True, eq=False)
class _Kept:
    """The spikes whose windows become training positives (see the module doc).

    columns: label columns (unit indices of the sorting); ids their unit ids; eligible [N] spikes
    per column whose 2J+1 windows fit the fit part; short [N] columns with fewer than K;
    spikes / units: the spikes of the selected columns, `keep` which of them are kept;
    sorting: the kept spikes over the original unit ids; short_report: the JSON-able summary.
    """

    columns: np.ndarray
    ids: np.ndarray
    eligible: np.ndarray
    short: np.ndarray
    spikes: np.ndarray
    units: np.ndarray
    keep: np.ndarray
    sorting: Sorting
    short_report: dict


def _kept_spikes(sorting: Sorting, columns: np.ndarray, spans: _Spans, config: WindowConfig, anchor: int) -> _Kept:
    """Eligible spikes (all 2J+1 positive windows in the fit part), limited to each unit's first
    K in label-efficiency mode, after the short-unit policy."""
    jitter, k = config.jitter, config.spikes_per_unit
    in_columns = np.isin(sorting.unit_indices, columns)
    spikes, units = sorting.samples[in_columns], sorting.unit_indices[in_columns]
    full = spans.fit_starts.count(spikes - anchor - jitter, spikes - anchor + jitter) == 2 * jitter + 1
    eligible = np.array([np.count_nonzero(full & (units == u)) for u in columns], dtype=np.int64)
    keep = full.copy()
    short = np.zeros(columns.size, dtype=bool)
    if k is not None:
        rank = np.zeros(spikes.size, dtype=np.int64)
        for u in columns:
            where = np.flatnonzero(full & (units == u))
            rank[where] = np.arange(where.size)
        keep &= rank < k
        short = eligible < k
    ids = sorting.unit_ids[columns]
    short_report = {"policy": config.short_units, "unit_ids": ids[short].tolist(),
                    "eligible_spikes": eligible[short].tolist()}
    if short.any():
        keep, columns, eligible, ids, short = _apply_short_policy(config, spans, keep, units, columns, eligible,
                                                                  ids, short)
    kept_mask = np.zeros(sorting.num_spikes, dtype=bool)
    kept_mask[np.flatnonzero(in_columns)[keep]] = True
    if not keep.any():
        raise LabelError(
            f"no labelled spike has its windows inside the training span [{spans.fit[0]}, {spans.fit[1]}) "
            f"(the labels hold {sorting.num_spikes} spikes in [{int(sorting.samples.min()) if sorting.num_spikes else 0}, "
            f"{int(sorting.samples.max()) + 1 if sorting.num_spikes else 0})); check the span and the labels"
        )
    return _Kept(columns, ids, eligible, short, spikes, units, keep, sorting.select_spikes(kept_mask), short_report)


def _apply_short_policy(config, spans, keep, units, columns, eligible, ids, short):
    """Units with fewer than K eligible spikes: raise ('error'), remove them ('drop') or keep all
    their spikes ('keep_all'), with a warning. Returns the updated (keep, columns, eligible, ids, short)."""
    k, fit = config.spikes_per_unit, spans.fit
    listing = ", ".join(f"unit {u} ({c} spikes)" for u, c in zip(ids[short].tolist(), eligible[short].tolist()))
    message = (
        f"{int(short.sum())} of {columns.size} units have fewer than K={k} spikes whose windows fit "
        f"the training span [{fit[0]}, {fit[1]}): {listing}"
    )
    if config.short_units == "error":
        raise LabelError(
            message + "; set windows.short_units to 'drop' (remove them) or 'keep_all' (train "
            "on the spikes they have), or lower K, or lengthen the training span"
        )
    if config.short_units == "keep_all":
        log.warning("%s; keeping all of their spikes (windows.short_units='keep_all')", message)
        return keep, columns, eligible, ids, short
    log.warning("%s; dropping them (windows.short_units='drop')", message)
    keep = keep & ~np.isin(units, columns[short])
    columns, eligible, ids, short = columns[~short], eligible[~short], ids[~short], short[~short]
    if not columns.size:
        raise LabelError("no unit has K spikes in the training span; nothing left to train on")
    return keep, columns, eligible, ids, short


def _training_set(sorting: Sorting, kept: _Kept, spans: _Spans, config: WindowConfig, *, window: int,
                  anchor: int, seed: int) -> tuple[WindowSet, dict]:
    """Every positive window of the kept spikes plus all-negative windows (w.r.t. every spike of
    the sorting) drawn from the fit part, or in K mode from its prefix where every non-short
    unit has K. Returns (the training WindowSet, facts about the negatives for the report)."""
    jitter, fit = config.jitter, spans.fit
    if config.spikes_per_unit is None:
        prefix_stop = fit[1]
    else:
        defining = kept.keep & np.isin(kept.units, kept.columns[~kept.short])
        prefix_stop = int(kept.spikes[defining].max()) - anchor + jitter + window if defining.any() else fit[1]
    pos = positive_starts(kept.spikes[kept.keep], anchor, jitter)
    negative_starts = spans.fit_starts.restrict(prefix_stop, window)
    candidates = negative_starts.allowed & ~negative_starts.near(sorting.samples, anchor, jitter)
    candidates = negative_starts.first + np.flatnonzero(candidates)
    wanted = int(round(config.negatives_per_positive * pos.size))
    rng = np.random.default_rng((seed, STREAMS["negatives"]))
    if wanted > candidates.size:
        log.warning(
            "only %d all-negative windows available in [%d, %d) for %d requested; using all of them",
            candidates.size, fit[0], prefix_stop, wanted,
        )
    neg = np.sort(rng.choice(candidates, size=min(wanted, candidates.size), replace=False))
    starts = np.union1d(pos, neg)
    train = WindowSet(starts, window_labels(starts, sorting, anchor, jitter, kept.columns), window, anchor, jitter)
    negatives = {"span": [fit[0], int(prefix_stop)], "positives": int(pos.size), "negatives": int(neg.size),
                 "shortfall": int(max(wanted - candidates.size, 0))}
    return train, negatives


def _report(spans: _Spans, kept: _Kept, train: WindowSet, validation: WindowSet, negatives: dict,
            config: WindowConfig, *, window: int, anchor: int, num_samples: int, train_span) -> dict:
    """WindowSets.report: JSON-able counts per unit, spans and sizes."""
    k = config.spikes_per_unit
    kept_counts = np.array([np.count_nonzero(kept.sorting.unit_indices == u) for u in kept.columns])
    return {
        "mode": "all_spikes" if k is None else "k_spikes",
        "spikes_per_unit": k,
        "window": window,
        "anchor": anchor,
        "jitter": config.jitter,
        "num_samples": num_samples,
        "training_region": list(spans.region),
        "fit_span": list(spans.fit),
        "negative_span": negatives["span"],
        "train_span": list(train_span),
        "validation_span": list(spans.validation),
        "eval_span": list(spans.evaluation),
        "unit_ids": kept.ids.tolist(),
        "eligible_spikes": kept.eligible.tolist(),
        "kept_spikes": kept_counts.tolist(),
        "positive_entries": train.labels.sum(axis=0, dtype=np.int64).tolist(),
        "short_units": kept.short_report,
        "num_train_windows": len(train),
        "num_train_positive_windows": negatives["positives"],
        "num_train_negative_windows": negatives["negatives"],
        "negatives_shortfall": negatives["shortfall"],
        "num_validation_windows": len(validation),
        "num_validation_positive_windows": validation.num_positive_windows,
    }


def balanced_windows(
    sorting: Sorting,
    span: tuple[int, int],
    *,
    window: int,
    anchor: int,
    jitter: int,
    seed: int,
    stream: str = "balanced",
    unit_indices: np.ndarray | None = None,
    negatives_per_positive: float = 1.0,
    max_windows: int | None = None,
    avoid: tuple[int, int] = (0, 0),
) -> WindowSet:
    """A balanced window set inside `span`: every start near a spike of the chosen units, plus
    all-negative starts (w.r.t. every spike of `sorting`) in the given ratio, at most
    `max_windows` in total (both kinds subsampled in proportion). Windows overlapping `avoid`
    are excluded. Used for the validation set; also handy for window-level metrics on the
    evaluation span."""
    unit_indices = np.arange(sorting.num_units) if unit_indices is None else _unit_indices(unit_indices, sorting)
    starts = _Starts.of(span, window, avoid)
    if max_windows == 0 or not starts.allowed.any():
        return WindowSet(np.zeros(0, np.int64), np.zeros((0, unit_indices.size), np.uint8), window, anchor, jitter)
    chosen = sorting.samples[np.isin(sorting.unit_indices, unit_indices)]
    pos = starts.first + np.flatnonzero(starts.allowed & starts.near(chosen, anchor, jitter))
    neg = starts.first + np.flatnonzero(starts.allowed & ~starts.near(sorting.samples, anchor, jitter))
    num_pos = pos.size
    num_neg = min(int(round(negatives_per_positive * num_pos)), neg.size)
    if max_windows is not None and num_pos + num_neg > max_windows:
        scale = max_windows / (num_pos + num_neg)
        num_pos, num_neg = int(num_pos * scale), int(num_neg * scale)
    rng = np.random.default_rng((seed, STREAMS[stream]))
    pos = rng.choice(pos, size=num_pos, replace=False)
    neg = rng.choice(neg, size=num_neg, replace=False)
    all_starts = np.sort(np.concatenate([pos, neg]))
    return WindowSet(
        all_starts, window_labels(all_starts, sorting, anchor, jitter, unit_indices), window, anchor, jitter
    )
