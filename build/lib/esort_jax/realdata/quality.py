"""Which of a sorter's units E-Sort trains on: a quality filter over the training span.

    selection = select_units(labels, (0, train_end), QualityFilter(min_spikes=50))
    selection.sorting        # the kept units' spikes (whole recording), unit ids as the sorter's
    selection.report()       # per unit: label, spikes and rate in the span, ISI ratio, kept, why

A unit is kept when every test passes:
  label      its label is in `labels` (default: 'good' when the sorter labelled its units,
             i.e. some unit is good/mua/noise; every unit otherwise)
  spikes     at least `min_spikes` spikes in the training span
  rate       at least `min_rate_hz` spikes per second over the training span
  ISI        when `max_isi_violation_ratio` is set: SpikeInterface's isi_violations_ratio over
             the training span at most that (Hill et al. / UMS formula, computed here with numpy)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from esort_jax.config import require
from esort_jax.realdata.labeller import UNIT_LABELS, SorterLabels
from esort_jax.recording import Sorting

__all__ = ["QualityFilter", "UnitSelection", "isi_violations", "select_units"]


@dataclasses.dataclass(frozen=True)
class QualityFilter:
    """Unit selection rules (see the module doc).

    Attributes:
      labels: labels to keep (subset of good, mua, noise, unsorted); None: ('good',) when the
        sorter labelled its units, all units otherwise.
      min_spikes: minimum spikes in the training span.
      min_rate_hz: minimum firing rate over the training span.
      max_isi_violation_ratio: maximum ISI violation ratio (None: no ISI test).
      isi_threshold_ms: refractory period for the ISI test (SpikeInterface default 1.5 ms).
      min_isi_ms: the censored period (SpikeInterface default 0).
    """

    labels: tuple[str, ...] | None = None
    min_spikes: int = 20
    min_rate_hz: float = 0.0
    max_isi_violation_ratio: float | None = None
    isi_threshold_ms: float = 1.5
    min_isi_ms: float = 0.0

    def validate(self, where: str = "labels.filter") -> None:
        if self.labels is not None:
            unknown = [label for label in self.labels if label not in UNIT_LABELS]
            require(not unknown, f"{where}.labels", f"unknown label(s) {unknown}; choose from {list(UNIT_LABELS)}")
            require(len(self.labels) > 0, f"{where}.labels", "must list at least one label (or be null)")
        require(self.min_spikes >= 1, f"{where}.min_spikes", f"must be >= 1; got {self.min_spikes}")
        require(self.min_rate_hz >= 0, f"{where}.min_rate_hz", f"must be >= 0; got {self.min_rate_hz}")
        require(
            self.max_isi_violation_ratio is None or self.max_isi_violation_ratio >= 0,
            f"{where}.max_isi_violation_ratio", f"must be >= 0 or null; got {self.max_isi_violation_ratio}",
        )
        require(
            0 <= self.min_isi_ms < self.isi_threshold_ms, f"{where}.isi_threshold_ms",
            f"must exceed min_isi_ms={self.min_isi_ms}; got {self.isi_threshold_ms}",
        )


def isi_violations(
    sorting: Sorting, span: tuple[int, int], *, isi_threshold_ms: float = 1.5, min_isi_ms: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(ratio [N], count [N]) of ISI violations per unit over the spikes in `span`, as
    SpikeInterface's `isi_violations`: count = consecutive intervals < threshold;
    ratio = count · T / (2 n² (threshold − min_isi)) with n spikes over T seconds (NaN if n = 0)."""
    fs = sorting.sampling_frequency
    inside = sorting.in_span(*span)
    duration_s = (span[1] - span[0]) / fs
    threshold = isi_threshold_ms / 1000.0
    counts = np.zeros(sorting.num_units, dtype=np.int64)
    order = np.lexsort((inside.samples, inside.unit_indices))  # by unit, then time
    units, samples = inside.unit_indices[order], inside.samples[order]
    same_unit = units[1:] == units[:-1]
    short = same_unit & (np.diff(samples) / fs < threshold)
    np.add.at(counts, units[1:][short], 1)
    n = inside.spike_counts().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = counts * duration_s / (2.0 * n**2 * (threshold - min_isi_ms / 1000.0))
    ratio[n == 0] = np.nan
    return ratio, counts


@dataclasses.dataclass(frozen=True, eq=False)
class UnitSelection:
    """The outcome of `select_units`.

    Attributes:
      sorting: the kept units' spikes over the whole recording (unit ids as the sorter's).
      kept: [N] bool per unit of the labels.
      rows: one dict per unit: unit_id, label, spikes_in_span, rate_hz, isi_violation_ratio,
        kept, reasons (why it was dropped; empty when kept).
      labels_kept: the labels that were accepted (after resolving the default).
      span: the training span the counts refer to.
    """

    sorting: Sorting
    kept: np.ndarray
    rows: list
    labels_kept: tuple
    span: tuple[int, int]

    @property
    def kept_ids(self) -> list:
        return [row["unit_id"] for row in self.rows if row["kept"]]

    @property
    def dropped(self) -> list:
        return [row for row in self.rows if not row["kept"]]

    def report(self) -> dict:
        """JSON-able summary: counts, the accepted labels, kept ids, dropped units with reasons."""
        reasons: dict[str, int] = {}
        for row in self.dropped:
            for reason in row["reasons"]:
                key = reason.split(":")[0]
                reasons[key] = reasons.get(key, 0) + 1
        return {
            "num_units": len(self.rows),
            "num_kept": int(self.kept.sum()),
            "labels_kept": list(self.labels_kept),
            "span": list(self.span),
            "kept_unit_ids": self.kept_ids,
            "dropped": [{"unit_id": r["unit_id"], "reasons": r["reasons"]} for r in self.dropped],
            "dropped_by_reason": reasons,
            "units": self.rows,
        }


def select_units(labels: SorterLabels, span: tuple[int, int], config: QualityFilter) -> UnitSelection:
    """Apply `config` to the units of `labels`, counting over `span` (the training span)."""
    config.validate()
    sorting = labels.sorting
    fs = sorting.sampling_frequency
    start, stop = int(span[0]), int(span[1])
    duration_s = (stop - start) / fs
    in_span = sorting.in_span(start, stop).spike_counts()
    rates = in_span / duration_s if duration_s > 0 else np.zeros(sorting.num_units)
    unit_labels = np.asarray(labels.unit_table["label"]).astype(str)
    if config.labels is not None:
        accepted = tuple(config.labels)
    else:
        accepted = ("good",) if labels.has_labels else UNIT_LABELS
    isi_ratio = np.full(sorting.num_units, np.nan)
    if config.max_isi_violation_ratio is not None:
        isi_ratio, _ = isi_violations(
            sorting, (start, stop), isi_threshold_ms=config.isi_threshold_ms, min_isi_ms=config.min_isi_ms
        )

    rows, kept = [], np.zeros(sorting.num_units, dtype=bool)
    for i, unit in enumerate(sorting.unit_ids.tolist()):
        reasons = []
        if unit_labels[i] not in accepted:
            reasons.append(f"label: '{unit_labels[i]}' is not in {list(accepted)}")
        if in_span[i] < config.min_spikes:
            reasons.append(f"spikes: {int(in_span[i])} in the training span < min_spikes {config.min_spikes}")
        if rates[i] < config.min_rate_hz:
            reasons.append(f"rate: {rates[i]:.3g} Hz in the training span < min_rate_hz {config.min_rate_hz:g}")
        if config.max_isi_violation_ratio is not None:
            ratio = isi_ratio[i]
            if np.isnan(ratio) or ratio > config.max_isi_violation_ratio:
                reasons.append(
                    f"isi: violation ratio {ratio:.3g} > max_isi_violation_ratio {config.max_isi_violation_ratio:g}"
                    if not np.isnan(ratio) else "isi: no spikes in the training span to compute it"
                )
        kept[i] = not reasons
        rows.append({
            "unit_id": unit,
            "label": unit_labels[i],
            "spikes_in_span": int(in_span[i]),
            "rate_hz": float(rates[i]),
            "isi_violation_ratio": None if np.isnan(isi_ratio[i]) else float(isi_ratio[i]),
            "kept": bool(kept[i]),
            "reasons": reasons,
        })
    return UnitSelection(
        sorting=sorting.select_units(np.flatnonzero(kept)),
        kept=kept,
        rows=rows,
        labels_kept=accepted,
        span=(start, stop),
    )
