"""Fabricated comparison rows (three sorters, one failed; E-Sort's two arms at K = 5, 10, 15) for
the comparison and plot tests."""

from esort_jax.report import comparison


def esort_row(arm, k, acc, sort_seconds=2.0, duration=15.0):
    """An E-Sort row of `arm` at `k` with pooled accuracy `acc`."""
    return comparison.method_row(f"{arm} K={k}", "esort", {
        "accuracy_pooled": acc, "accuracy_mean": acc - 0.05, "sort_seconds": sort_seconds,
        "sorted_duration_s": duration, "train_seconds": 30.0, "well_detected": 40, "n_units": 51,
    }, arm=arm, k=k)


def fake_rows():
    """kilosort4 (0.8, 300 s for 15 s of data), tridesclous2 (0.9, 120 s for 30 s), spykingcircus2
    failed; transfer reaches 0.70 / 0.85 / 0.90 and scratch 0.50 / 0.70 / 0.85 at K = 5 / 10 / 15."""
    return [
        comparison.method_row("kilosort4", "sorter", {"accuracy_pooled": 0.8, "accuracy_mean": 0.75,
                                                      "sort_seconds": 300.0, "sorted_duration_s": 15.0,
                                                      "num_units_found": 60, "n_units": 51, "well_detected": 38,
                                                      "sorter_version": "4.1.7"}),
        comparison.method_row("tridesclous2", "sorter", {"accuracy_pooled": 0.9, "sort_seconds": 120.0,
                                                         "sorted_duration_s": 30.0}),
        comparison.method_row("spykingcircus2", "sorter", {"status": "failed", "error": "boom\nmore"}),
        esort_row("transfer", 5, 0.70, 1.5), esort_row("transfer", 10, 0.85, 2.5), esort_row("transfer", 15, 0.90),
        esort_row("scratch", 5, 0.50), esort_row("scratch", 10, 0.70), esort_row("scratch", 15, 0.85),
    ]
