"""The labels a result actually used: what every results.json arm reports as its label accounting.

    facts = training_labels(windows, labels)                   # after make_windows (pipeline.fit)
    noise = label_noise(windows, truth)                        # k_only: against complete labels
    keys  = accounting(facts, threshold_curve, train_steps=..., early_stopping=...)

"K labelled spikes per unit" names the positives; the labels a run needs are more (issue 17):

- `labels_used_spikes`: labelled spikes whose times entered training. The kept spikes (positives),
  and in `label_mode='complete_span'` every spike of the labels the negatives were kept clear of
  (any spike whose ±J zone meets an anchor of the span the negatives are drawn from) or that
  labels a training window; in 'k_only' only the kept spikes. With early stopping, also every
  labelled spike of the validation part (its loss chose when to stop).
- `labelled_seconds`: seconds of recording whose labels had to be complete: the negatives' span
  (complete_span; 0 in k_only), plus the validation part when the threshold sweep or early
  stopping read its labels.
- `threshold_labels`: labelled spikes the threshold choice saw: the network's units' spikes of
  the validation part (the sweep), the held-out K spikes (k_only's cross-validation), 0 for a
  fixed threshold.
- `train_steps`: optimiser steps taken by the reported network. The k_only threshold rule fits
  two more networks on the folds of the K labels; their steps are in
  `label_accounting.threshold_train_steps` (0 otherwise), so a budget comparison can add them.

Pure numpy on a WindowSets and Sortings; no training, no I/O.
"""

from __future__ import annotations

import numpy as np

from esort_jax.recording import Sorting
from esort_jax.windows import WindowSets, window_labels

__all__ = ["ACCOUNTING_KEYS", "training_labels", "label_noise", "accounting"]

# The keys every arm of every results.json carries (tests check them).
ACCOUNTING_KEYS = ("labels_used_spikes", "labelled_seconds", "threshold_labels", "train_steps")


def _near_any(samples: np.ndarray, anchors: np.ndarray, jitter: int) -> np.ndarray:
    """[S] bool: the sample lies within ±jitter of one of `anchors`."""
    if not anchors.size:
        return np.zeros(samples.shape, dtype=bool)
    anchors = np.sort(anchors)
    lo = np.searchsorted(anchors, samples - jitter, side="left")
    hi = np.searchsorted(anchors, samples + jitter, side="right")
    return hi > lo


def training_labels(windows: WindowSets, labels: Sorting) -> dict:
    """What the training set of `windows` (made from `labels`) read of the labels: positive
    spikes, all spikes used (positives, negatives' clearance, window labels), the seconds
    whose labels had to be complete, and the validation part's labelled spikes and seconds."""
    report = windows.report
    anchor, jitter, fs = report["anchor"], report["jitter"], labels.sampling_frequency
    complete = report.get("label_mode", "complete_span") == "complete_span" or report["spikes_per_unit"] is None
    kept = windows.kept_spikes
    if complete:
        first, stop = report["negative_starts"]  # the negatives' candidate starts [first, stop)
        samples = labels.samples
        cleared = (samples >= first + anchor - jitter) & (samples <= stop - 1 + anchor + jitter)
        used = int(np.count_nonzero(cleared | _near_any(samples, windows.train.starts + anchor, jitter)))
        negative_span = report["negative_span"]
        seconds = (negative_span[1] - negative_span[0]) / fs
    else:
        used, seconds = kept.num_spikes, 0.0
    v0, v1 = windows.validation_span
    return {
        "label_mode": report.get("label_mode", "complete_span") if report["spikes_per_unit"] else "all_spikes",
        "positive_spikes": kept.num_spikes,
        "train_labels_spikes": used,
        "clearance_spikes": used - kept.num_spikes,
        "train_labelled_seconds": seconds,
        "validation_span_spikes": labels.in_span(v0, v1).num_spikes,
        "validation_span_seconds": (v1 - v0) / fs,
    }


def label_noise(windows: WindowSets, truth: Sorting) -> dict:
    """The training labels against complete ones (`truth`, with the network's unit ids): the
    negatives that hold a spike of a network unit within ±J of their anchor, and the positive
    (window, unit) entries the training labels miss. Zero in complete_span mode when `truth`
    is the labels trained on; the label noise of 'k_only'."""
    train = windows.train
    columns = truth.unit_index_of(windows.unit_ids)
    full = window_labels(train.starts, truth, train.anchor, train.jitter, columns)
    negatives = ~train.labels.any(axis=1)
    noisy = negatives & full.any(axis=1)
    missing = (full == 1) & (train.labels == 0)
    num_negatives = int(np.count_nonzero(negatives))
    return {
        "negative_windows": num_negatives,
        "noisy_negative_windows": int(np.count_nonzero(noisy)),
        "negative_label_noise": float(np.count_nonzero(noisy) / num_negatives) if num_negatives else 0.0,
        "positive_entries": int(full.sum()),
        "missing_positive_entries": int(np.count_nonzero(missing)),
    }


def accounting(facts: dict, threshold_curve: dict, *, train_steps: int, early_stopping: bool) -> dict:
    """The four ACCOUNTING_KEYS plus `label_accounting` (the breakdown) from `training_labels`'
    facts, the threshold choice's curve (its `labels` and `rule`; {} for a fixed threshold) and
    how training ran (steps, whether early stopping read the validation part)."""
    rule = threshold_curve.get("rule", "validation_sweep") if threshold_curve else "fixed"
    threshold_labels = int(threshold_curve.get("labels", 0)) if threshold_curve else 0
    validation_read = early_stopping or rule == "validation_sweep"
    used = facts["train_labels_spikes"] + (facts["validation_span_spikes"] if early_stopping else 0)
    seconds = facts["train_labelled_seconds"] + (facts["validation_span_seconds"] if validation_read else 0.0)
    breakdown = {**facts, "threshold_rule": rule, "early_stopping": bool(early_stopping),
                 "threshold_train_steps": int(sum(threshold_curve.get("fold_train_steps", []))) if threshold_curve else 0,
                 "validation_labels_read_by": [name for name, on in (("threshold", rule == "validation_sweep"),
                                                                     ("early_stopping", early_stopping)) if on]}
    return {"labels_used_spikes": int(used), "labelled_seconds": float(seconds),
            "threshold_labels": threshold_labels, "train_steps": int(train_steps), "label_accounting": breakdown}
