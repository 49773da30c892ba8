"""esort_jax.report.summary: the flat JSON summary of a recording and its ground truth, and the
per-unit text table."""

import json

import numpy as np
import pytest

from esort_jax import ArrayTraces, Drift, GroundTruth, Recording, Sorting
from esort_jax.report.summary import recording_summary, unit_table_text

FS = 32000.0


def _recording(num_samples=64000, num_channels=4):
    positions = np.stack([np.zeros(num_channels), [10.0, 30.0, 50.0, 130.0][:num_channels]], axis=1)
    return Recording(ArrayTraces(np.zeros((num_samples, num_channels), np.float32)), FS, positions)


def _truth(drift=True):
    return GroundTruth(
        samples=[1, 2, 3, 4, 5, 6], unit_indices=[0, 0, 0, 1, 2, 2], unit_ids=[10, 11, 12], sampling_frequency=FS,
        unit_table={"peak_amplitude_uv": np.array([80.0, 20.0, 50.0]), "snr": np.array([8.0, 2.0, 5.0]),
                    "cell_type": np.array(["exc", "inh", "exc"]), "peak_channel": np.array([3, 0, 1]),
                    "position_um": np.array([[0.0, 125.5, 3.0], [0.0, 12.25, 4.0], [0.0, 40.0, 5.0]]),
                    "firing_rate_hz": np.array([3.0, 1.0, 2.0])},
        drift=Drift(samples=np.array([0, 32000, 64000]),
                    displacement_um=np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 1.0], [-3.0, 2.0, 0.5]])) if drift else None,
    )


def test_recording_summary_without_and_with_ground_truth():
    recording = _recording()
    assert recording_summary(recording) == {"num_channels": 4, "num_samples": 64000, "duration_s": 2.0,
                                            "sampling_frequency": FS, "probe_span_um": 120.0}
    summary = recording_summary(recording, _truth())
    assert summary == {
        "num_channels": 4, "num_samples": 64000, "duration_s": 2.0, "sampling_frequency": FS, "probe_span_um": 120.0,
        "num_units": 3, "num_spikes": 6, "spikes_per_unit_min": 1, "spikes_per_unit_median": 2.0,
        "spikes_per_unit_max": 3,
        "peak_amplitude_uv_min": 20.0, "peak_amplitude_uv_median": 50.0, "peak_amplitude_uv_max": 80.0,
        "snr_min": 2.0, "snr_median": 5.0, "snr_max": 8.0, "num_excitatory": 2, "num_inhibitory": 1,
        "drift_min_um": -3.0, "drift_max_um": 4.0, "drift_max_step_um": 7.0,
    }
    json.dumps(summary)  # flat, JSON-able
    assert all(type(v) in (int, float) for v in summary.values())


def test_recording_summary_of_a_static_or_plain_or_empty_sorting():
    recording = _recording()
    static = recording_summary(recording, _truth(drift=False))
    assert (static["drift_min_um"], static["drift_max_um"], static["drift_max_step_um"]) == (0.0, 0.0, 0.0)
    plain = recording_summary(recording, Sorting.from_unit_dict({1: [5, 9], 2: [7]}, FS))
    assert plain["num_units"] == 2 and plain["spikes_per_unit_median"] == 1.5
    assert "snr_min" not in plain and "drift_max_um" not in plain
    empty = recording_summary(recording, Sorting.from_unit_dict({}, FS))
    assert (empty["num_units"], empty["num_spikes"], empty["spikes_per_unit_min"], empty["spikes_per_unit_median"],
            empty["spikes_per_unit_max"]) == (0, 0, 0, 0.0, 0)
    one_step = GroundTruth(samples=[1], unit_indices=[0], unit_ids=[0], sampling_frequency=FS,
                           drift=Drift(samples=np.array([0]), displacement_um=np.array([[2.0]])))
    assert recording_summary(recording, one_step)["drift_max_step_um"] == 0.0


def test_unit_table_text_orders_by_snr_and_shows_depth():
    lines = unit_table_text(_truth()).splitlines()
    assert lines[0] == " unit type depth_um peak_ch  amp_uV    snr rate_Hz  spikes"
    assert [line.split() for line in lines[2:]] == [
        ["10", "exc", "125.5", "3", "80.0", "8.0", "3.00", "3"],
        ["12", "exc", "40.0", "1", "50.0", "5.0", "2.00", "2"],
        ["11", "inh", "12.2", "0", "20.0", "2.0", "1.00", "1"],
    ]
    assert len(unit_table_text(_truth(), max_rows=1).splitlines()) == 2 + 1 + 1


def test_unit_table_text_without_a_unit_table_and_with_more_units_than_rows():
    truth = Sorting.from_unit_dict({3: [1, 2, 3], 7: [5], 9: [6, 8]}, FS)
    lines = unit_table_text(truth, max_rows=2).splitlines()
    assert lines[0] == " unit type depth_um peak_ch  amp_uV    snr rate_Hz  spikes"
    assert lines[2] == "    3    -        -       -       -      -       -       3"
    assert lines[3].split() == ["7", "-", "-", "-", "-", "-", "-", "1"]
    assert lines[-1] == "... 1 more units" and len(lines) == 5
    assert len(unit_table_text(truth).splitlines()) == 5


@pytest.mark.parametrize("max_rows", [0, 3, 10])
def test_unit_table_text_says_how_many_units_it_left_out(max_rows):
    lines = unit_table_text(_truth(), max_rows=max_rows).splitlines()
    shown = min(max_rows, 3)
    assert len(lines) == 2 + shown + (max_rows < 3)
    assert (lines[-1] == f"... {3 - max_rows} more units") == (max_rows < 3)
