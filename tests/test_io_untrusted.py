"""Files from others do not run code: Phy params.py and .prb files are parsed, not executed;
SpikeInterface folders are loaded from their JSON description, pickles refused unless the user
opts in. Each refusal names the file (and line) and runs nothing (a marker file stays absent).
(.prb files, read through esort_jax.io.probes: test_io_probes.py.)"""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from esort_jax import ArrayTraces, GroundTruth, Recording
from esort_jax.io import load_recording, open_spikeinterface_recording
from esort_jax.io.folder import RecordingFormatError
from esort_jax.io.loader import load_ground_truth
from esort_jax.io.phy import PhyFormatError, read_phy_folder
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from esort_jax.io.untrusted import UnsafeFileError, load_spikeinterface_folder, read_python_literals

pytestmark = pytest.mark.filterwarnings("ignore:The extractor is not serializable")
FS = 30000.0


class _Payload:
    """Pickled, it runs `touch <marker>` when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _phy(folder: Path, params: str) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "spike_times.npy", np.array([10, 20, 30], np.int64))
    np.save(folder / "spike_clusters.npy", np.array([0, 1, 0], np.int32))
    (folder / "params.py").write_text(params)
    return folder


# ----------------------------------------------------------------------------------------------
# params.py and .prb


@pytest.mark.parametrize(
    "text, expected",
    [  # Kilosort 4; SpikeInterface's export_to_phy; Kilosort 1-2 (MATLAB); numpy dtype forms, comments, range
        ("dat_path = 'C:/data/rec.bin'\nn_channels_dat = 385\ndtype = 'int16'\noffset = 0\nsample_rate = 30000.0\n"
         "hp_filtered = False\n", {"n_channels_dat": 385, "dtype": "int16", "sample_rate": 30000.0, "hp_filtered": False}),
        ("dat_path = r'recording.dat'\nn_channels_dat = 8\ndtype = 'float32'\noffset = 0\nsample_rate = 32000.0\n"
         "hp_filtered = True", {"dat_path": "recording.dat", "dtype": "float32", "hp_filtered": True}),
        ("dat_path = 'D:/rec.dat'\nn_channels_dat = 32\ndtype = 'int16'\noffset = 0\nsample_rate = 25000.\n",
         {"sample_rate": 25000.0, "dat_path": "D:/rec.dat"}),
        ('"""Phy params."""\n# a comment\nDTYPE = "<i2"\nchannels = range(4)\nx = -1.5\ny = (1, [2])\n',
         {"dtype": "<i2", "channels": [0, 1, 2, 3], "x": -1.5, "y": (1, [2])}),
        ("dtype = 'float32'\ndat_path = None\n", {"dtype": "float32", "dat_path": None}),
    ],
)
def test_the_params_py_forms_writers_use_are_read(tmp_path, text, expected):
    (tmp_path / "params.py").write_text(text)
    values = read_python_literals(tmp_path / "params.py")
    assert {k: values[k] for k in expected} == expected


@pytest.mark.parametrize(
    "line, text, why",
    [
        (1, "import os\nsample_rate = 1.0", "an Import statement"),
        (2, "sample_rate = 1.0\nos.system('touch {marker}')", "an Expr statement"),
        (1, "sample_rate = __import__('os').system('touch {marker}') or 1.0", "a computed value"),
        (1, "sample_rate = 10 ** 4", "a computed value"),
        (1, "a = b = 1", "one plain name"),
        (1, "x = f'{{1}}'", "a computed value"),
        (1, "channels = range(10**9)", "a computed value"),
        (1, "channels = range(100000000)", "more than"),
        (1, "dtype = np.int16", "a computed value"),
        (1, "dtype = 'frobnicate'", "is not a string naming a numpy dtype"),
        (1, "with open('x') as f:\n    pass", "a With statement"),
    ],
)
def test_params_py_that_would_run_code_is_refused_naming_the_line(tmp_path, line, text, why):
    marker = tmp_path / "RAN"
    folder = _phy(tmp_path / "phy", text.format(marker=marker) + "\n")
    with pytest.raises(UnsafeFileError) as caught:
        read_phy_folder(folder)
    message = str(caught.value)
    assert f"{folder / 'params.py'}, line {line}: " in message and why in message, message
    assert "without running it" in message
    assert not marker.exists()


def test_params_py_syntax_errors_name_the_line(tmp_path):
    folder = _phy(tmp_path / "phy", "sample_rate = 30000.0\nn_channels = (\n")
    with pytest.raises(PhyFormatError, match=r"params\.py, line \d: not valid Python syntax"):
        read_phy_folder(folder)


def test_a_safe_params_py_still_reads(tmp_path):
    folder = _phy(tmp_path / "phy", "dtype = 'int16'\nsample_rate = 30000.\n")
    labels = read_phy_folder(folder)
    assert labels.sorting.sampling_frequency == 30000.0 and labels.sorting.num_spikes == 3
    assert labels.source["params"]["dtype"] == "int16"


# ----------------------------------------------------------------------------------------------
# SpikeInterface folders


def _recording(channels=3, samples=300):
    traces = np.random.default_rng(0).standard_normal((samples, channels)).astype(np.float32)
    positions = np.stack([np.zeros(channels), 20.0 * np.arange(channels)], 1)
    return Recording(ArrayTraces(traces), FS, positions)


def _saved_sorting(folder: Path, labels=None) -> Path:
    from esort_jax.io import to_spikeinterface_sorting

    truth = GroundTruth(samples=[10, 20, 30], unit_indices=[0, 1, 0], unit_ids=[4, 5], sampling_frequency=FS)
    si_sorting = to_spikeinterface_sorting(truth)
    if labels is not None:
        si_sorting.set_property("quality", np.asarray(labels, dtype=object if None in labels else str))
    si_sorting.save(folder=folder)
    return folder


def _saved_recording(folder: Path) -> Path:
    from esort_jax.io import to_spikeinterface_recording

    to_spikeinterface_recording(_recording()).save(folder=folder, **SAVE_JOB_KWARGS)
    return folder


def test_a_pickled_description_is_refused_unless_allowed(tmp_path):
    marker = tmp_path / "RAN"
    folder = tmp_path / "old_si"
    folder.mkdir()
    (folder / "cached.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnsafeFileError) as caught:
        load_recording(folder)
    message = str(caught.value)
    assert f"{folder / 'cached.pkl'}: this SpikeInterface folder is described by a pickle" in message
    assert "allow_pickle=True" in message and "recording.allow_pickle=true" in message
    with pytest.raises(UnsafeFileError, match="cached.pkl"):
        load_ground_truth(folder)
    assert not marker.exists()


def _as_pickled_folder(folder: Path) -> Path:
    """A folder SpikeInterface saved, described by a pickle (cached.pkl) instead of its JSON, as
    SpikeInterface <= 0.94 wrote extractors that were not JSON-serialisable."""
    import spikeinterface

    extractor = spikeinterface.load(folder)
    extractor.dump_to_pickle(folder / "cached.pkl", relative_to=folder)
    for name in ("si_folder.json", "provenance.json", "provenance.pkl"):
        (folder / name).unlink(missing_ok=True)
    return folder


def test_a_trusted_pickled_description_loads_with_allow_pickle(tmp_path):
    """allow_pickle=True is an opt-in that works: a genuine pickled SpikeInterface folder loads
    (recording, sorting, and the pair as ground truth); without it each is refused by name."""
    recording_folder = _as_pickled_folder(_saved_recording(tmp_path / "pair" / "recording"))
    sorting_folder = _as_pickled_folder(_saved_sorting(tmp_path / "pair" / "sorting"))
    for load in (load_recording, open_spikeinterface_recording, load_ground_truth):
        with pytest.raises(UnsafeFileError, match=r"cached\.pkl: this SpikeInterface folder is described by a pickle"):
            load(recording_folder if load is not load_ground_truth else sorting_folder)
    loaded, _ = load_recording(recording_folder, allow_pickle=True)
    np.testing.assert_array_equal(loaded.read(), _recording().read())
    si_recording, _ = open_spikeinterface_recording(recording_folder, allow_pickle=True)
    assert si_recording.get_num_channels() == 3
    truth = load_ground_truth(sorting_folder, allow_pickle=True)
    assert truth.unit_ids.tolist() == [4, 5] and truth.samples.tolist() == [10, 20, 30]
    paired, sorting = load_recording(tmp_path / "pair", allow_pickle=True)
    assert paired.num_channels == 3 and sorting.samples.tolist() == [10, 20, 30]
    with pytest.raises(UnsafeFileError, match="cached.pkl"):
        load_recording(tmp_path / "pair")


def test_a_description_naming_any_callable_is_refused(tmp_path):
    marker = tmp_path / "RAN"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "si_folder.json").write_text(json.dumps({
        "class": "os.system", "module": "spikeinterface", "version": "0.105.3",
        "kwargs": {"command": f"touch {marker}"}, "annotations": {}, "properties": {}, "relative_paths": False,
    }))
    for load in (load_recording, open_spikeinterface_recording, load_ground_truth):
        with pytest.raises(UnsafeFileError, match=r"si_folder\.json: describes os\.system; .*BinaryFolderRecording"):
            load(folder)
    nested = _saved_recording(tmp_path / "nested")
    description = json.loads((nested / "si_folder.json").read_text())
    description["kwargs"]["parent"] = {"class": "os.system", "kwargs": {"command": f"touch {marker}"}}
    (nested / "si_folder.json").write_text(json.dumps(description))
    with pytest.raises(UnsafeFileError, match="2 nested extractors"):
        load_recording(nested)
    assert not marker.exists()


def test_pickled_properties_are_refused_unless_allowed(tmp_path):
    folder = _saved_sorting(tmp_path / "sorting", labels=["good", None])  # SpikeInterface pickles it
    with pytest.raises(UnsafeFileError, match=r"properties/quality\.npy: an array of Python objects"):
        load_spikeinterface_folder(folder)
    with pytest.raises(UnsafeFileError, match=r"quality\.npy"):
        load_ground_truth(folder)
    trusted = load_ground_truth(folder, allow_pickle=True)  # the user opted in
    assert trusted.samples.tolist() == [10, 20, 30]
    marker = tmp_path / "RAN"
    recording = _saved_recording(tmp_path / "recording")
    np.save(recording / "properties" / "evil.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match=r"properties/evil\.npy"):
        load_recording(recording)
    assert not marker.exists()


def test_safe_spikeinterface_folders_load_as_before(tmp_path):
    recording_folder = _saved_recording(tmp_path / "pair" / "recording")
    _saved_sorting(tmp_path / "pair" / "sorting", labels=["good", "mua"])  # strings: no pickle
    loaded, sorting = load_recording(tmp_path / "pair")
    np.testing.assert_array_equal(loaded.read(), _recording().read())
    assert sorting.unit_ids.tolist() == [4, 5]
    assert load_ground_truth(tmp_path / "pair").samples.tolist() == [10, 20, 30]
    assert load_ground_truth(tmp_path / "pair" / "sorting").unit_ids.tolist() == [4, 5]
    si_recording, _ = open_spikeinterface_recording(recording_folder)
    assert si_recording.get_num_channels() == 3
    (recording_folder / "si_folder.json").write_text('{"class": "x",\n "kwargs": }')
    with pytest.raises(RecordingFormatError, match=r"si_folder\.json is not valid JSON: .* at line 2, column"):
        load_recording(recording_folder)


def test_our_sorting_folders_store_no_pickles(tmp_path):
    from esort_jax.io.phy import write_sorting_folder

    truth = GroundTruth(samples=[10, 20], unit_indices=[0, 1], unit_ids=[4, 5], sampling_frequency=FS)
    folder = write_sorting_folder(truth, tmp_path / "s", properties={"label": np.array(["good", "mua"], dtype=object)})
    assert load_spikeinterface_folder(folder).get_property("label").tolist() == ["good", "mua"]
    with pytest.raises(ValueError, match="property 'bad': holds Python objects"):
        write_sorting_folder(truth, tmp_path / "t", properties={"bad": np.array(["good", None], dtype=object)})
    assert not (tmp_path / "t").exists()
