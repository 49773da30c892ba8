"""esort_jax.realdata.labeller: a labeller's spikes and unit table from every source it may come
from (our Sorting / GroundTruth, .npz, a recording folder with ground truth, SpikeInterface
objects and folders, read safely), and the checks that they fit a recording."""

import json

import numpy as np
import pytest

from esort_jax import GroundTruth, Sorting
from esort_jax.io import RecordingFormatError, to_spikeinterface_recording, to_spikeinterface_sorting
from esort_jax.io import write_recording_folder, write_sorting_npz
from esort_jax.io.phy import PhyFormatError
from esort_jax.io.untrusted import UnsafeFileError
from esort_jax.realdata.labeller import (
    UNIT_LABELS,
    LabelFitError,
    SorterLabels,
    check_labels_fit,
    load_labels,
    make_unit_table,
    unit_label,
)
from esort_jax.windows import LabelError
from tests._phy import blank_recording, write_phy
from tests._tiny import FS

pytestmark = pytest.mark.filterwarnings("ignore:The extractor is not serializable")


def _sorting(cls=Sorting, **extra):
    """Units 'a' (3 spikes), 'b' (1) and 'c' (none) in the first 1000 samples."""
    return cls(samples=[10, 500, 999, 20], unit_indices=[0, 0, 0, 1], unit_ids=np.array(["a", "b", "c"]),
               sampling_frequency=FS, **extra)


def _plain(sorting) -> tuple:
    return (sorting.samples.tolist(), sorting.unit_indices.tolist(), sorting.unit_ids.tolist(),
            sorting.sampling_frequency)


# ----------------------------------------------------------------------------------------------
# Unit labels and the unit table


@pytest.mark.parametrize("curated, sorter, expected", [
    ("good", "mua", "good"), (" MUA ", None, "mua"), ("unsorted", "noise", "noise"), (None, "Good", "good"),
    ("", "", "unsorted"), (None, None, "unsorted"), ("nan", np.nan, "unsorted"), ("excellent", "mua", "mua"),
])
def test_unit_label_takes_curation_then_the_sorters_label(curated, sorter, expected):
    assert unit_label(curated, sorter) == expected and expected in UNIT_LABELS


def test_unit_table_counts_and_rates_over_the_given_duration():
    sorting = _sorting()
    table, span = make_unit_table(sorting, duration_s=2.0)
    assert span == 2.0
    assert table["label"].tolist() == ["unsorted"] * 3 and table["label"].dtype == object
    assert table["spike_count"].tolist() == [3, 1, 0] and table["spike_count"].dtype == np.int64
    np.testing.assert_allclose(table["firing_rate_hz"], [1.5, 0.5, 0.0])
    assert table["peak_channel"].tolist() == [-1, -1, -1] and np.isnan(table["template_peak_to_peak"]).all()
    table, span = make_unit_table(sorting)  # up to the last spike: samples 0..999
    assert span == 1000 / FS
    np.testing.assert_allclose(table["firing_rate_hz"], np.array([3, 1, 0]) * FS / 1000)
    labelled, _ = make_unit_table(sorting, labels=np.array(["good", "mua", "noise"]), duration_s=1.0,
                                  extra={"peak_channel": [4, 5, 6], "Amplitude": [10.0, 20.0, 30.0]})
    assert labelled["label"].tolist() == ["good", "mua", "noise"]
    assert labelled["peak_channel"].tolist() == [4, 5, 6] and labelled["Amplitude"].tolist() == [10.0, 20.0, 30.0]
    empty = Sorting(np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([1, 2]), FS)
    table, span = make_unit_table(empty)
    assert span == 0.0 and table["firing_rate_hz"].tolist() == [0.0, 0.0]
    assert make_unit_table(empty, duration_s=0.0)[0]["firing_rate_hz"].tolist() == [0.0, 0.0]


def test_sorter_labels_check_their_table_and_summarise():
    sorting = _sorting()
    table, _ = make_unit_table(sorting, labels=np.array(["good", "unsorted", "unsorted"], object), duration_s=1.0)
    with pytest.raises(ValueError, match=r"unit_table column 'spike_count' has 2 rows; expected 3"):
        SorterLabels(sorting, {**table, "spike_count": table["spike_count"][:2]})
    labels = SorterLabels(sorting, table, source={"kind": "sorting", "path": "x.npz"}, sorter_seconds=4.5)
    assert labels.unit_ids.tolist() == ["a", "b", "c"] and labels.has_labels
    assert not SorterLabels(sorting, make_unit_table(sorting)[0]).has_labels
    assert labels.summary() == {"kind": "sorting", "path": "x.npz", "num_units": 3, "num_spikes": 4,
                                "has_labels": True, "sorter_seconds": 4.5}
    rows = labels.table_rows()
    assert rows[0] == {"unit_id": "a", "label": "good", "spike_count": 3, "firing_rate_hz": 3.0,
                       "peak_channel": -1, "template_peak_to_peak": rows[0]["template_peak_to_peak"]}
    assert np.isnan(rows[0]["template_peak_to_peak"]) and [r["unit_id"] for r in rows] == ["a", "b", "c"]
    assert all(type(v) in (str, int, float) for row in rows for v in row.values())  # plain JSON values
    json.dumps(rows)


# ----------------------------------------------------------------------------------------------
# load_labels from objects


def test_labels_from_our_sorting_and_ground_truth():
    sorting = _sorting()
    labels = load_labels(sorting, duration_s=0.5)
    assert type(labels.sorting) is Sorting and _plain(labels.sorting) == _plain(sorting)
    assert labels.source == {"kind": "sorting", "rate_span_s": 0.5}
    assert labels.unit_table["label"].tolist() == ["unsorted"] * 3 and not labels.has_labels
    np.testing.assert_allclose(labels.unit_table["firing_rate_hz"], [6.0, 2.0, 0.0])
    assert (labels.times_field, labels.rate_field) == ("labels: spike samples", "labels: sampling_frequency")
    assert labels.sorter_seconds is None and load_labels(sorting, sorter_seconds=12).sorter_seconds == 12.0
    assert load_labels(labels) is labels  # already labels
    truth = _sorting(GroundTruth, unit_table={"peak_channel": np.array([3, 1, 2]), "snr": np.array([1.0, 2.0, 3.0])})
    from_truth = load_labels(truth)
    assert type(from_truth.sorting) is Sorting and _plain(from_truth.sorting) == _plain(truth)  # no GroundTruth extras
    assert from_truth.source["kind"] == "ground_truth"
    assert from_truth.unit_table["peak_channel"].tolist() == [3, 1, 2] and "snr" not in from_truth.unit_table
    with pytest.raises(TypeError, match=r"labels: expected a path, a SpikeInterface sorting, a Sorting or "
                                        r"SorterLabels; got dict"):
        load_labels({"a": [1, 2]})


def test_labels_from_a_spikeinterface_sorting_object():
    si_sorting = to_spikeinterface_sorting(_sorting())
    si_sorting.set_property("quality", np.array(["good", "unsorted", "noise"]))
    si_sorting.set_property("KSLabel", np.array(["mua", "mua", "good"]))
    labels = load_labels(si_sorting, duration_s=1.0)
    assert _plain(labels.sorting) == _plain(_sorting())
    assert labels.unit_table["label"].tolist() == ["good", "mua", "noise"]
    assert labels.unit_table["spike_count"].tolist() == [3, 1, 0]
    assert labels.source == {"kind": "spikeinterface", "class": type(si_sorting).__name__, "rate_span_s": 1.0}
    assert labels.times_field == "SpikeInterface sorting: spike sample indices" and labels.sorter_seconds is None
    bare = load_labels(to_spikeinterface_sorting(_sorting()))
    assert bare.unit_table["label"].tolist() == ["unsorted"] * 3


# ----------------------------------------------------------------------------------------------
# load_labels from files and folders


def test_labels_from_npz_files_and_a_recording_folder_with_ground_truth(tmp_path):
    write_sorting_npz(tmp_path / "sorting.npz", _sorting())
    labels = load_labels(tmp_path / "sorting.npz", duration_s=1.0)
    assert _plain(labels.sorting) == _plain(_sorting())
    assert labels.source == {"kind": "sorting", "path": str((tmp_path / "sorting.npz").resolve()), "rate_span_s": 1.0}
    assert labels.times_field == f"{tmp_path / 'sorting.npz'}: spike samples"
    assert labels.rate_field == f"{tmp_path / 'sorting.npz'}: sampling_frequency"
    truth = _sorting(GroundTruth, unit_table={"peak_channel": np.array([0, 1, 2])})
    write_sorting_npz(tmp_path / "truth.npz", truth)
    assert load_labels(str(tmp_path / "truth.npz")).source["kind"] == "ground_truth"  # a str path too
    write_recording_folder(tmp_path / "rec", blank_recording(num_samples=1000), truth)
    from_folder = load_labels(tmp_path / "rec", duration_s=2.0)
    assert _plain(from_folder.sorting) == _plain(truth) and from_folder.source["kind"] == "ground_truth"
    assert from_folder.unit_table["peak_channel"].tolist() == [0, 1, 2]
    write_recording_folder(tmp_path / "no_truth", blank_recording(num_samples=1000))
    with pytest.raises(RecordingFormatError, match=r"no_truth: labels: an esort_jax recording folder without "
                                                   r"ground truth"):
        load_labels(tmp_path / "no_truth")


def _si_sorting_folder(folder, quality):
    si_sorting = to_spikeinterface_sorting(_sorting())
    si_sorting.set_property("quality", quality)
    si_sorting.save(folder=folder)
    return folder


def test_labels_from_a_spikeinterface_folder_with_the_sorters_run_time(tmp_path):
    run = tmp_path / "run"
    folder = _si_sorting_folder(run / "sorter_output", np.array(["good", "mua", "unsorted"]))  # strings: no pickle
    (run / "spikeinterface_log.json").write_text(json.dumps({"sorter_name": "x", "run_time": 31.5}))
    labels = load_labels(folder, duration_s=1.0)
    assert _plain(labels.sorting) == _plain(_sorting())
    assert labels.unit_table["label"].tolist() == ["good", "mua", "unsorted"] and labels.has_labels
    assert labels.source["kind"] == "spikeinterface" and labels.source["path"] == str(folder.resolve())
    assert labels.sorter_seconds == 31.5 and labels.summary()["sorter_seconds"] == 31.5
    assert load_labels(folder, sorter_seconds=2).sorter_seconds == 2.0
    assert labels.times_field == f"{folder}: spike sample indices"


def test_a_spikeinterface_folder_with_pickles_loads_only_when_allowed(tmp_path):
    folder = _si_sorting_folder(tmp_path / "sorting", np.array(["good", None, "noise"], dtype=object))  # pickled
    with pytest.raises(UnsafeFileError, match=r"properties/quality\.npy: an array of Python objects"):
        load_labels(folder)
    trusted = load_labels(folder, allow_pickle=True)
    assert trusted.unit_table["label"].tolist() == ["good", "unsorted", "noise"]
    assert _plain(trusted.sorting) == _plain(_sorting())
    to_spikeinterface_recording(blank_recording(num_samples=300)).save(folder=tmp_path / "si_rec", n_jobs=1,
                                                                       progress_bar=False)
    with pytest.raises(RecordingFormatError, match=r"si_rec: labels: holds a SpikeInterface \w+, not a sorting"):
        load_labels(tmp_path / "si_rec")


def test_paths_that_hold_no_labels_are_described(tmp_path):
    with pytest.raises(RecordingFormatError, match=r"nope: labels: does not exist"):
        load_labels(tmp_path / "nope")
    (tmp_path / "spikes.csv").write_text("1,2\n")
    with pytest.raises(RecordingFormatError, match=r"spikes\.csv: labels: a file \(\.csv\); expected a Phy/Kilosort "
                                                   r"folder"):
        load_labels(tmp_path / "spikes.csv")
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(RecordingFormatError, match=r"other: labels: not recognised: a folder containing \[notes\.txt, "
                                                   r"sub/\]; expected .* \(as a Phy folder it lacks spike_times\.npy"):
        load_labels(tmp_path / "other")
    (tmp_path / "partial").mkdir()
    np.save(tmp_path / "partial" / "spike_times.npy", np.arange(5, dtype=np.uint64))
    with pytest.raises(PhyFormatError, match=r"missing params\.py"):
        load_labels(tmp_path / "partial")


# ----------------------------------------------------------------------------------------------
# Do the labels fit the recording?


def test_labels_that_fit_pass_and_each_misfit_is_named():
    recording = blank_recording(num_samples=1000)
    labels = load_labels(_sorting())
    check_labels_fit(labels, recording)  # the last spike is at sample 999 of 1000
    check_labels_fit(labels, blank_recording(num_samples=1000, fs=FS * (1 + 1e-7)))  # within the tolerance
    with pytest.raises(LabelFitError, match=r"^labels: sampling_frequency is 32000 Hz but the recording is sampled at "
                                            r"30000 Hz; the labels were made for another recording"):
        check_labels_fit(labels, blank_recording(num_samples=1000, fs=30000.0))
    with pytest.raises(LabelFitError) as caught:
        check_labels_fit(labels, blank_recording(num_samples=999))
    assert str(caught.value).startswith(
        "labels: spike samples: spike time(s) outside the recording: the first, spike #3 in time order (unit a), is "
        f"at sample 999 but the recording has 999 samples ({999 / FS:.6g} s at 32000 Hz); 1 spike(s) of 1 unit(s) "
        "lie outside.")
    early = load_labels(Sorting([-3, 5], [1, 0], [7, 8], FS))
    with pytest.raises(LabelFitError, match=r"spike #0 in time order \(unit 8\), is at sample -3"):
        check_labels_fit(early, recording)
    wide = SorterLabels(labels.sorting, labels.unit_table, source={"path": "ks"},
                        channel_references=(("channel_map.npy", 8), ("templates.npy", 9)))
    with pytest.raises(LabelFitError, match=r"^templates\.npy: refers to 9 channels \(highest index 8\) but the "
                                            r"recording has 8 channels \(ks\)$"):
        check_labels_fit(wide, recording)
    assert issubclass(LabelFitError, LabelError)


def test_phy_labels_that_do_not_fit_name_the_phy_file_and_field(tmp_path):
    # a sampling rate other than the recording's: both values and params.py: sample_rate
    write_phy(tmp_path / "rate", sample_rate=30000.0)
    with pytest.raises(LabelFitError, match=r"params\.py: sample_rate is 30000 Hz but the recording is sampled at 32000 Hz"):
        check_labels_fit(load_labels(tmp_path / "rate"), blank_recording())
    # spike times beyond the recording: the file, the first offending spike, its unit, the length
    trains = write_phy(tmp_path / "long")
    last = max(int(t.max()) for c, t in trains.items() if c != 9)
    unit = [c for c, t in trains.items() if c != 9 and t.max() == last][0]
    with pytest.raises(LabelFitError) as caught:
        check_labels_fit(load_labels(tmp_path / "long"), blank_recording(num_samples=last))
    message = str(caught.value)
    assert "spike_times.npy: spike time(s) outside the recording" in message
    assert f"(unit {unit}), is at sample {last} but the recording has {last} samples" in message
    # templates / channel_map referring to channels the recording does not have
    write_phy(tmp_path / "chan", channel_map=[0, 1, 2, 3, 4, 11])
    with pytest.raises(LabelFitError, match=r"channel_map\.npy: refers to 12 channels \(highest index 11\) but the "
                                            r"recording has 8 channels"):
        check_labels_fit(load_labels(tmp_path / "chan"), blank_recording())
