"""esort_jax.realdata.quality: which of a labeller's units E-Sort trains on, and why not the others."""

from pathlib import Path

import numpy as np
import pytest

from esort_jax import Sorting
from esort_jax.config import ConfigError
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from esort_jax.realdata.labeller import SorterLabels, make_unit_table
from esort_jax.realdata.quality import QualityFilter, isi_violations, select_units
from tests._tiny import FS, fast_compile  # noqa: F401  (fixture)


REPO = Path(__file__).resolve().parent.parent
JOB = SAVE_JOB_KWARGS
pytestmark = pytest.mark.filterwarnings(
    "ignore:The extractor is not serializable", "ignore:Empty units have been removed"
)


def test_quality_filter_keeps_and_drops_the_right_units():
    fs, span = FS, (0, 32000)  # training span: the first second
    regular = np.arange(100, 32000, 800)  # 40 spikes, ISIs 25 ms
    trains = {
        "a": regular,                                            # good, plenty
        "b": regular + 7,                                        # mua
        "c": regular + 11,                                       # noise
        "d": np.r_[regular[:5], np.arange(40000, 60000, 500)],   # good, but 5 spikes in the span
        "e": np.sort(np.r_[regular, regular + 16]),              # good, 40 ISIs of 0.5 ms
        "f": np.arange(50000, 60000, 200),                       # unsorted, no spike in the span
    }
    sorting = Sorting.from_unit_dict(trains, fs)
    table, _ = make_unit_table(sorting, labels=np.array(["good", "mua", "noise", "good", "good", "unsorted"], object))
    labels = SorterLabels(sorting, table)
    default = select_units(labels, span, QualityFilter(min_spikes=20))
    assert default.kept_ids == ["a", "e"] and default.labels_kept == ("good",)
    reasons = {row["unit_id"]: row["reasons"] for row in default.dropped}
    assert reasons["b"] == ["label: 'mua' is not in ['good']"]
    assert reasons["d"] == ["spikes: 5 in the training span < min_spikes 20"]
    assert default.report()["dropped_by_reason"] == {"label": 3, "spikes": 2}
    assert default.sorting.unit_ids.tolist() == ["a", "e"]
    assert default.sorting.num_spikes == regular.size * 3  # kept units, all their spikes
    strict = select_units(labels, span, QualityFilter(min_spikes=20, max_isi_violation_ratio=0.5))
    rows = {row["unit_id"]: row for row in strict.rows}
    assert strict.kept_ids == ["a"] and rows["a"]["isi_violation_ratio"] == 0.0
    assert rows["e"]["reasons"] == ["isi: violation ratio 2.08 > max_isi_violation_ratio 0.5"]
    assert "isi: no spikes in the training span to compute it" in rows["f"]["reasons"]
    mua_too = select_units(labels, span, QualityFilter(labels=("good", "mua"), min_spikes=20, min_rate_hz=30.0))
    assert mua_too.kept_ids == ["a", "b", "e"]
    assert select_units(labels, span, QualityFilter(min_rate_hz=45.0)).kept_ids == ["e"]
    unlabelled = SorterLabels(sorting, make_unit_table(sorting)[0])
    assert not unlabelled.has_labels
    assert select_units(unlabelled, span, QualityFilter(min_spikes=20)).kept_ids == ["a", "b", "c", "e"]
    with pytest.raises(ConfigError, match=r"labels\.filter\.labels: unknown label\(s\) \['great'\]"):
        QualityFilter(labels=("great",)).validate()
    # the ISI ratio is SpikeInterface's
    from spikeinterface.metrics.quality.misc_metrics import isi_violations as si_isi_violations

    ratios, counts = isi_violations(sorting, span)
    for i in range(5):  # the units with spikes in the span
        train = sorting.in_span(*span).unit_samples(i) / fs
        expected_ratio, _, expected_count = si_isi_violations([train], 1.0)
        assert counts[i] == expected_count
        np.testing.assert_allclose(ratios[i], expected_ratio)
    assert counts[4] == 40
