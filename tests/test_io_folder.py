"""esort_jax.io.folder: the recording folder (traces bit-exact and memory-mapped, ground truth,
unit table, probe, metadata) and sorting .npz files; writes are atomic; every file read is
checked against metadata.json and errors name the file and field."""

import json
import os

import numpy as np
import pytest

from esort_jax import ArrayTraces, Drift, GroundTruth, Recording, Sorting
from esort_jax.io import RecordingFormatError, load_recording, read_recording_folder, write_recording_folder
from esort_jax.io import folder as folder_module
from esort_jax.io.folder import (
    FORMAT_NAME,
    FORMAT_VERSION,
    is_recording_folder,
    metadata_problem,
    read_sorting_npz,
    write_sorting_npz,
)
from esort_jax.io.loader import load_ground_truth
from tests._files import FS, failing_after_first_read, noise_recording, recording_folder, unchanged

_recording = noise_recording


def _truth():
    """Ground truth with every optional part: a unit table (numbers, strings, rows of
    positions), drift and per-spike amplitude scales."""
    return GroundTruth(
        samples=[700, 5, 300], unit_indices=[0, 1, 1], unit_ids=[3, 4], sampling_frequency=FS,
        unit_table={"snr": np.array([2.0, 3.0]), "peak_channel": np.array([1, 6]),
                    "cell_type": np.array(["exc", "inh"]),
                    "position_um": np.array([[0.0, 10.0, 5.0], [0.0, 90.0, 7.0]])},
        drift=Drift(samples=np.array([0, 500, 999]), displacement_um=np.array([[0.0, 0.0], [2.5, -1.0], [5.0, -2.0]])),
        spike_amplitude_scales=[1.25, 0.5, 0.75],
    )


def _assert_same_sorting(loaded, expected):
    """Same kind, spikes, units and rate; for ground truth also the same table, drift and scales."""
    assert type(loaded) is type(expected)
    for name in ("samples", "unit_indices", "unit_ids"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(expected, name))
    assert loaded.sampling_frequency == expected.sampling_frequency
    if isinstance(expected, GroundTruth):
        assert sorted(loaded.unit_table) == sorted(expected.unit_table)
        for name, column in expected.unit_table.items():
            np.testing.assert_array_equal(loaded.unit_table[name], column)
        assert (loaded.drift is None) == (expected.drift is None)
        if expected.drift is not None:
            np.testing.assert_array_equal(loaded.drift.samples, expected.drift.samples)
            np.testing.assert_array_equal(loaded.drift.displacement_um, expected.drift.displacement_um)
        assert (loaded.spike_amplitude_scales is None) == (expected.spike_amplitude_scales is None)
        if expected.spike_amplitude_scales is not None:
            np.testing.assert_array_equal(loaded.spike_amplitude_scales, expected.spike_amplitude_scales)


# ----------------------------------------------------------------------------------------------
# Writing and reading a folder


def test_folder_round_trip_is_exact_and_lazy(tmp_path):
    recording, traces = _recording()
    truth = GroundTruth(samples=[5, 700], unit_indices=[1, 0], unit_ids=[3, 4], sampling_frequency=32e3,
                        unit_table={"snr": np.array([2.0, 3.0])})
    write_recording_folder(tmp_path / "rec", recording, truth, metadata={"seed": 7}, chunk_samples=333)
    loaded, loaded_truth = read_recording_folder(tmp_path / "rec")
    assert isinstance(loaded.traces.array, np.memmap)
    np.testing.assert_array_equal(loaded.read(), traces)
    np.testing.assert_array_equal(loaded.read(100, 200), traces[100:200])
    assert loaded_truth.samples.tolist() == [5, 700]
    assert loaded_truth.unit_table["snr"].tolist() == [2.0, 3.0]
    assert loaded.metadata["folder_metadata"]["seed"] == 7


def test_ground_truth_unit_table_drift_and_metadata_round_trip(tmp_path):
    recording, traces = _recording()
    recording = Recording(recording.traces, FS, recording.channel_positions, channel_ids=[f"ch{i}" for i in range(8)],
                          metadata={"kind": "noise", "seed": 0})
    truth = _truth()
    path = write_recording_folder(tmp_path / "rec", recording, truth, metadata={"generator": "test"})
    assert path == tmp_path / "rec" and is_recording_folder(path)
    assert sorted(p.name for p in path.iterdir()) == ["channels.npz", "ground_truth.npz", "metadata.json", "traces.npy"]
    loaded, loaded_truth = read_recording_folder(path)
    assert loaded.traces.array.tobytes() == traces.tobytes()  # bit for bit
    _assert_same_sorting(loaded_truth, truth)
    assert loaded.channel_ids.tolist() == [f"ch{i}" for i in range(8)]
    np.testing.assert_array_equal(loaded.channel_positions, recording.channel_positions)
    assert loaded.sampling_frequency == FS and loaded.probe is None
    meta = loaded.metadata["folder_metadata"]
    assert (meta["format"], meta["format_version"]) == (FORMAT_NAME, FORMAT_VERSION)
    sizes = (meta["num_samples"], meta["num_channels"], meta["dtype"], meta["has_ground_truth"])
    assert sizes == (1000, 8, "float32", True)
    assert meta["generator"] == "test" and meta["recording_metadata"] == {"kind": "noise", "seed": 0}
    assert set(meta["provenance"]) == {"created_utc", "git_commit", "packages", "native_thread_pools"}
    assert loaded.metadata["kind"] == "noise" and loaded.metadata["source"] == str(path)


def test_a_probe_is_written_as_probe_json_and_read_back(tmp_path):
    import probeinterface

    recording, _ = _recording(num_channels=4)
    probe = probeinterface.generate_linear_probe(num_elec=4, ypitch=20)
    probe.set_device_channel_indices(np.arange(4))
    with_probe = Recording(recording.traces, FS, probe.contact_positions, probe=probe)
    loaded, truth = read_recording_folder(write_recording_folder(tmp_path / "rec", with_probe))
    assert truth is None and (tmp_path / "rec" / "probe.json").is_file()
    np.testing.assert_array_equal(loaded.probe.contact_positions, probe.contact_positions)
    assert loaded.probe.contact_shapes.tolist() == probe.contact_shapes.tolist()


def test_folder_int16_storage_scales_back(tmp_path):
    recording, traces = _recording()
    write_recording_folder(tmp_path / "rec", recording, dtype="int16", gain_to_uv=0.01)
    loaded, truth = read_recording_folder(tmp_path / "rec")
    assert truth is None and loaded.traces.array.dtype == np.int16
    np.testing.assert_allclose(loaded.read(), traces, atol=0.005 + 1e-6)


def test_int16_storage_rounds_and_clips_to_the_int16_range(tmp_path):
    values = np.array([[0.26, -0.26], [1e6, -1e6], [0.24, 3.0]], np.float32)
    recording = Recording(ArrayTraces(values), FS, np.zeros((2, 2)))
    write_recording_folder(tmp_path / "rec", recording, dtype="int16", gain_to_uv=0.5)
    loaded, _ = read_recording_folder(tmp_path / "rec")
    assert np.asarray(loaded.traces.array).tolist() == [[1, -1], [32767, -32768], [0, 6]]
    np.testing.assert_allclose(loaded.read(), [[0.5, -0.5], [16383.5, -16384.0], [0.0, 3.0]])


def test_bad_storage_options_are_refused_before_writing(tmp_path):
    recording, _ = _recording()
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'int16'; got int32"):
        write_recording_folder(tmp_path / "a", recording, dtype="int32")
    with pytest.raises(ValueError, match="gain_to_uv applies to int16 storage only"):
        write_recording_folder(tmp_path / "b", recording, gain_to_uv=0.5)
    assert list(tmp_path.iterdir()) == []


def test_folder_write_is_atomic(tmp_path):
    recording, _ = _recording()
    broken = failing_after_first_read(recording)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_recording_folder(tmp_path / "rec", broken, chunk_samples=100)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    write_recording_folder(tmp_path / "rec", recording)
    with pytest.raises(FileExistsError):
        write_recording_folder(tmp_path / "rec", recording)


def test_a_failed_overwrite_keeps_the_old_folder_and_a_good_one_replaces_it(tmp_path, monkeypatch):
    old, old_traces = _recording(seed=1)
    new, new_traces = _recording(seed=2)
    write_recording_folder(tmp_path / "rec", old)

    def failing(path, sorting):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(folder_module, "write_sorting_npz", failing)
        with pytest.raises(OSError, match="disk full"):
            write_recording_folder(tmp_path / "rec", new, _truth(), overwrite=True)
        with pytest.raises(OSError, match="disk full"):
            write_recording_folder(tmp_path / "fresh", new, _truth())
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]  # no temporary, no half-written "fresh"
    np.testing.assert_array_equal(read_recording_folder(tmp_path / "rec")[0].read(), old_traces)
    write_recording_folder(tmp_path / "rec", new, overwrite=True)
    np.testing.assert_array_equal(read_recording_folder(tmp_path / "rec")[0].read(), new_traces)
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]


def test_a_source_returning_the_wrong_shape_is_named_and_leaves_nothing(tmp_path):
    class Short:
        shape = (300, 2)

        def read(self, start, stop):
            return np.zeros((stop - start - 1, 2), np.float32)

    with pytest.raises(ValueError, match=r"recording\.read\(0, 100\) returned shape \(99, 2\); expected \(100, 2\)"):
        write_recording_folder(tmp_path / "rec", Recording(Short(), FS, np.zeros((2, 2))), chunk_samples=100)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# What a folder is, and what is wrong with it


def test_is_recording_folder_only_for_our_tagged_metadata(tmp_path):
    assert is_recording_folder(recording_folder(tmp_path))
    assert not is_recording_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not is_recording_folder(tmp_path / "empty")
    for name, text in [("broken", "{"), ("list", "[1]"), ("other", '{"format": "someone.else"}'),
                       ("binary", b"\xff\xfe{")]:
        (tmp_path / name).mkdir()
        meta = tmp_path / name / "metadata.json"
        meta.write_bytes(text) if isinstance(text, bytes) else meta.write_text(text)
        assert not is_recording_folder(tmp_path / name), name


def test_metadata_problem_says_why_metadata_json_does_not_parse(tmp_path):
    folder = recording_folder(tmp_path)
    assert metadata_problem(folder) is None
    assert metadata_problem(tmp_path / "nowhere") is None  # no metadata.json: nothing to say
    (folder / "metadata.json").write_text('{\n  "format": "esort_jax.recording",\n  "num_samples": 4 5\n}')
    assert metadata_problem(folder) == (f"{folder / 'metadata.json'} is not valid JSON: Expecting ',' delimiter "
                                        "at line 3, column 20")
    (folder / "metadata.json").write_bytes(b'{"format": "\xff"}')
    assert metadata_problem(folder).startswith(f"{folder / 'metadata.json'} cannot be read as JSON text: ")
    with pytest.raises(RecordingFormatError, match=r"cannot be read as JSON text"):
        read_recording_folder(folder)


def test_invalid_metadata_json_says_where(tmp_path):
    folder = recording_folder(tmp_path)
    text = (folder / "metadata.json").read_text().splitlines()
    text[2] = text[2].rstrip(",")  # a missing comma on line 3
    (folder / "metadata.json").write_text("\n".join(text))
    with unchanged(tmp_path):
        for read in (load_recording, load_ground_truth):
            with pytest.raises(RecordingFormatError, match=rf"{folder / 'metadata.json'} is not valid JSON: "
                                                           r"Expecting ',' delimiter at line 4, column 3"):
                read(folder)
    (folder / "traces.npy").unlink()  # no traces: still our metadata.json that is broken, not "unrecognised"
    with pytest.raises(RecordingFormatError, match=r"metadata\.json is not valid JSON"):
        load_recording(folder)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda m: m.pop("sampling_frequency"), r"field 'sampling_frequency' is missing"),
        (lambda m: m.update(sampling_frequency=-1), r"field 'sampling_frequency' must be a number > 0 \(Hz\); got -1"),
        (lambda m: m.update(num_channels="4"), r"field 'num_channels' must be an integer >= 1; got '4'"),
        (lambda m: m.update(gain_to_uv=0), r"field 'gain_to_uv' must be a non-zero number; got 0"),
        (lambda m: m.update(format_version=99), r"format_version 99 is newer"),
        (lambda m: m.update(dtype="int16"), r"traces\.npy: holds float32 samples but metadata\.json says dtype 'int16'"),
        (lambda m: m.update(num_samples=401), r"traces shape \(400, 4\) does not match metadata\.json \(401, 4\)"),
    ],
)
def test_metadata_fields_are_checked(tmp_path, change, expected):
    folder = recording_folder(tmp_path)
    meta = json.loads((folder / "metadata.json").read_text())
    change(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    with unchanged(tmp_path), pytest.raises(RecordingFormatError, match=expected):
        load_recording(folder)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: (f / "metadata.json").unlink(), r"is not an esort_jax recording folder: no metadata\.json"),
        (lambda f: (f / "metadata.json").write_text('{"format": "other"}'),
         r"metadata\.json: field 'format' is 'other'; expected 'esort_jax\.recording'"),
        (lambda f: (f / "metadata.json").write_text("[1, 2]"), r"field 'format' is 'a JSON list'"),
        (lambda f: (f / "traces.npy").unlink(), r"rec: traces\.npy is missing"),
        (lambda f: (f / "traces.npy").write_bytes(b"not an npy file at all"), r"traces\.npy: not a valid \.npy file"),
        (lambda f: np.save(f / "traces.npy", np.zeros((400, 4), np.float32, order="F")),
         r"traces must be C-ordered"),
        (lambda f: (f / "channels.npz").unlink(), r"rec: channels\.npz is missing"),
        (lambda f: np.savez(f / "channels.npz", channel_positions=np.zeros((4, 2))),
         r"channels\.npz: missing array\(s\) \['channel_ids'\]"),
        (lambda f: (f / "ground_truth.npz").unlink(),
         r"metadata says it has ground truth but ground_truth\.npz is missing"),
    ],
)
def test_missing_or_damaged_files_are_named(tmp_path, damage, expected):
    folder = recording_folder(tmp_path)
    damage(folder)
    with unchanged(tmp_path), pytest.raises(RecordingFormatError, match=expected):
        read_recording_folder(folder)


def test_truncated_traces_are_named(tmp_path):
    recording, _ = _recording()
    write_recording_folder(tmp_path / "rec", recording)
    with open(tmp_path / "rec" / "traces.npy", "r+b") as handle:
        handle.truncate(4000)
    with pytest.raises(RecordingFormatError, match="traces.npy is truncated"):
        read_recording_folder(tmp_path / "rec")


def test_truncated_or_inconsistent_files_are_refused(tmp_path):
    folder = recording_folder(tmp_path)
    size = (folder / "traces.npy").stat().st_size
    with open(folder / "traces.npy", "r+b") as handle:
        handle.truncate(size - 4)
    with pytest.raises(RecordingFormatError, match=r"traces\.npy is truncated: header says \(400, 4\) float32"):
        load_recording(folder)

    folder = recording_folder(tmp_path, "channels")
    np.savez(folder / "channels.npz", channel_positions=np.zeros((3, 2)), channel_ids=np.arange(3))
    with pytest.raises(RecordingFormatError, match=r"channels\.npz: traces have 4 channels but channel_positions has 3 rows"):
        load_recording(folder)

    folder = recording_folder(tmp_path, "late")
    write_sorting_npz(folder / "ground_truth.npz",
                      GroundTruth(samples=[10, 400], unit_indices=[0, 0], unit_ids=[1], sampling_frequency=FS))
    with pytest.raises(RecordingFormatError, match=r"ground_truth\.npz: spike sample 400 is beyond the recording's "
                                                   r"400 samples"):
        load_recording(folder)

    folder = recording_folder(tmp_path, "rate")
    write_sorting_npz(folder / "ground_truth.npz",
                      GroundTruth(samples=[10], unit_indices=[0], unit_ids=[1], sampling_frequency=30000.0))
    with pytest.raises(RecordingFormatError, match=r"sampling_frequency 30000 Hz differs from metadata\.json's 32000 Hz"):
        load_recording(folder)


def test_a_probe_of_another_size_is_refused(tmp_path):
    import probeinterface

    folder = recording_folder(tmp_path)
    probe = probeinterface.generate_linear_probe(num_elec=3)
    probeinterface.write_probeinterface(folder / "probe.json", probe)
    with pytest.raises(RecordingFormatError, match=r"probe\.json: describes 1 probe\(s\) with 3 contacts; metadata"
                                                   r"\.json says 4 channels"):
        load_recording(folder)


# ----------------------------------------------------------------------------------------------
# Sorting .npz files


@pytest.mark.parametrize("sorting", [
    Sorting(samples=[9, 3, 3], unit_indices=[0, 1, 0], unit_ids=["a", "b"], sampling_frequency=30000.0),
    Sorting(samples=np.zeros(0, np.int64), unit_indices=np.zeros(0, np.int64), unit_ids=[7, 8], sampling_frequency=FS),
    _truth(),
    GroundTruth(samples=[4], unit_indices=[0], unit_ids=[2], sampling_frequency=FS),  # no table, drift or scales
], ids=["sorting", "empty", "ground_truth", "bare_ground_truth"])
def test_sorting_npz_round_trip_keeps_the_kind_and_every_field(tmp_path, sorting):
    write_sorting_npz(tmp_path / "s.npz", sorting)
    _assert_same_sorting(read_sorting_npz(tmp_path / "s.npz"), sorting)
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary left


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_npz_files_are_never_unpickled(tmp_path):
    folder = recording_folder(tmp_path)
    marker = tmp_path / "RAN"
    np.savez(folder / "ground_truth.npz", samples=np.array([_Payload(marker)], dtype=object), unit_indices=[0],
             unit_ids=[1], sampling_frequency=FS)
    with pytest.raises(RecordingFormatError, match=r"ground_truth\.npz: not a readable \.npz file .*allow_pickle"):
        load_recording(folder)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RecordingFormatError, match=r"bad\.npz: not a readable \.npz file"):
        load_ground_truth(tmp_path / "bad.npz")
    np.savez(tmp_path / "negative.npz", samples=np.array([-5, 3]), unit_indices=[0, 0], unit_ids=[1],
             sampling_frequency=FS)
    with pytest.raises(RecordingFormatError, match=r"negative\.npz: 'samples' must be a 1-D array of sample indices "
                                                   r">= 0.*min -5"):
        load_ground_truth(tmp_path / "negative.npz")
    assert not marker.exists()


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"samples": [1], "unit_indices": [0]}, r"missing array\(s\) \['unit_ids', 'sampling_frequency'\]"),
        ({"samples": [1.5], "unit_indices": [0], "unit_ids": [1], "sampling_frequency": FS},
         r"'samples' must be a 1-D array of sample indices >= 0; got shape \(1,\), dtype float64, min 1\.5"),
        ({"samples": [[1]], "unit_indices": [0], "unit_ids": [1], "sampling_frequency": FS},
         r"'samples' must be a 1-D array .*; got shape \(1, 1\)"),
        ({"samples": [1], "unit_indices": [3], "unit_ids": [1], "sampling_frequency": FS},
         r"not a valid sorting: ValueError: unit_indices must lie in \[0, 1\)"),
        ({"samples": [1], "unit_indices": [0], "unit_ids": [1], "sampling_frequency": FS, "is_ground_truth": True,
          "unit_table__snr": [1.0, 2.0]}, r"not a valid sorting: ValueError: unit_table column 'snr' has 2 rows"),
    ],
)
def test_sorting_npz_errors_name_the_file_and_array(tmp_path, arrays, expected):
    np.savez(tmp_path / "s.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(RecordingFormatError, match=rf"^{tmp_path / 's.npz'}: {expected}"):
        read_sorting_npz(tmp_path / "s.npz")


def test_string_columns_held_as_objects_round_trip(tmp_path):
    """Object arrays of strings are stored as strings (the reader never unpickles); objects that
    are neither strings nor numbers are refused at write time, nothing written."""
    truth = GroundTruth(samples=[1, 2], unit_indices=[0, 1], unit_ids=np.array(["a", "b"], dtype=object),
                        sampling_frequency=FS, unit_table={"cell_type": np.array(["exc", "inh"], dtype=object)})
    write_sorting_npz(tmp_path / "t.npz", truth)
    back = read_sorting_npz(tmp_path / "t.npz")
    assert back.unit_table["cell_type"].tolist() == ["exc", "inh"] and back.unit_ids.tolist() == ["a", "b"]
    odd = GroundTruth(samples=[1], unit_indices=[0], unit_ids=[0], sampling_frequency=FS,
                      unit_table={"meta": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match=r"unit_table\['meta'\]: holds Python objects \(dict"):
        write_sorting_npz(tmp_path / "odd.npz", odd)
    assert not (tmp_path / "odd.npz").exists()
