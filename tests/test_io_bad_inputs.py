"""Bad inputs to the readers get errors that name the file and what is wrong (no bare KeyError,
no "not recognised" for a file that is recognised but broken). Probe files and recording folders
have their own test files (test_io_probes.py, test_io_folder.py)."""

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from esort_jax import GroundTruth
from esort_jax.config import ConfigError
from esort_jax.io import RecordingFormatError, load_recording, write_mearec, write_recording_folder, write_sorting_npz
from esort_jax.io.extractors import BinaryOptions
from esort_jax.io.loader import load_ground_truth
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from tests._files import FS, small_data

pytestmark = [pytest.mark.filterwarnings("ignore:The extractor is not serializable"),
              pytest.mark.filterwarnings("ignore:BinaryRecordingExtractor. the recording has no probe")]


# ----------------------------------------------------------------------------------------------
# raw binary files


def test_binary_offsets_beyond_the_file_are_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 64)
    options = dict(sampling_frequency=FS, num_channels=4, dtype="int16")
    with pytest.raises(RecordingFormatError, match=r"raw\.bin: holds no samples: 64 bytes, recording\.binary\.file_offset is 64"):
        load_recording(raw, "binary", binary=BinaryOptions(**options, file_offset=64))
    with pytest.raises(RecordingFormatError, match=r"holds no samples: 64 bytes, recording\.binary\.file_offset is 100"):
        load_recording(raw, "binary", binary=BinaryOptions(**options, file_offset=100))
    recording, _ = load_recording(raw, "binary", binary=BinaryOptions(**options, file_offset=16))
    assert recording.num_samples == 6


# ----------------------------------------------------------------------------------------------
# ground truth from every input that carries it


def test_ground_truth_from_every_input_that_carries_it(tmp_path):
    from esort_jax.io import to_spikeinterface_sorting
    from esort_jax.io.phy import write_sorting_folder

    recording, truth = small_data()
    write_recording_folder(tmp_path / "ours", recording, truth)
    write_mearec(tmp_path / "sim.h5", recording, truth)
    write_sorting_npz(tmp_path / "truth.npz", truth)
    write_sorting_folder(truth, tmp_path / "si_sorting")
    to_spikeinterface_sorting(truth).save(folder=tmp_path / "plain_si_sorting")
    phy = tmp_path / "phy"
    phy.mkdir()
    np.save(phy / "spike_times.npy", truth.samples)
    np.save(phy / "spike_clusters.npy", truth.unit_ids[truth.unit_indices].astype(np.int32))
    (phy / "params.py").write_text(f"sample_rate = {FS}\ndtype = 'float32'\n")
    for name in ("ours", "sim.h5", "truth.npz", "si_sorting", "plain_si_sorting", "phy"):
        loaded = load_ground_truth(tmp_path / name)
        assert loaded.samples.tolist() == [10, 200, 390], name
        assert loaded.unit_ids[loaded.unit_indices].tolist() == [5, 6, 5], name
        assert loaded.sampling_frequency == FS, name
    assert isinstance(load_ground_truth(tmp_path / "sim.h5"), GroundTruth)


def test_ground_truth_errors_say_what_the_path_holds(tmp_path):
    write_recording_folder(tmp_path / "no_truth", small_data()[0])
    with pytest.raises(RecordingFormatError, match=r"no_truth: ground truth: a recording \(esort_jax format\) that carries no spike times"):
        load_ground_truth(tmp_path / "no_truth")
    with pytest.raises(RecordingFormatError, match=r"nope: ground truth: does not exist"):
        load_ground_truth(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(RecordingFormatError, match=r"ground truth: .*notes\.txt: not a recognised recording.*Phy"):
        load_ground_truth(tmp_path / "notes.txt")
    from esort_jax.io import to_spikeinterface_recording

    to_spikeinterface_recording(small_data()[0]).save(folder=tmp_path / "si_recording", **SAVE_JOB_KWARGS)
    with pytest.raises(RecordingFormatError, match=r"si_recording: ground truth: a recording \(spikeinterface "
                                                   r"format\) that carries no spike times"):
        load_ground_truth(tmp_path / "si_recording")


# ----------------------------------------------------------------------------------------------
# sort.py's loader path: the binary options are passed through


class _Run:
    def __init__(self, cfg):
        self.cfg = cfg

    @contextlib.contextmanager
    def stage(self, name):
        yield


def _sort_config(*overrides):
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return compose("sort", overrides=["checkpoint=unused", "logger=disabled", *overrides])


def test_sort_config_passes_the_binary_options(tmp_path):
    from experiments._data import obtain_recording

    recording, _ = small_data()
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.rint(recording.read() * 10).astype(np.int16).tobytes())
    binary = ["recording.format=binary", "recording.binary.sampling_frequency=32000",
              "recording.binary.num_channels=4", "recording.binary.gain_to_uv=0.1"]
    loaded, truth, info = obtain_recording(_Run(_sort_config(f"recording.path={raw}", *binary)), "recording")
    assert (loaded.num_channels, loaded.num_samples, loaded.sampling_frequency) == (4, 400, FS)
    np.testing.assert_allclose(loaded.read(), np.rint(recording.read() * 10) * 0.1, rtol=1e-6)
    assert truth is None and info == {"source": "file", "path": str(raw.resolve())}
    with pytest.raises(ConfigError, match=r"recording\.binary\.sampling_frequency: required for a raw binary"):
        obtain_recording(_Run(_sort_config(f"recording.path={raw}", "recording.format=binary")), "recording")
    with pytest.raises(ConfigError, match=r"recording\.binary\.num_channels: must be >= 1; got 0"):
        obtain_recording(_Run(_sort_config(f"recording.path={raw}", *binary, "recording.binary.num_channels=0")),
                         "recording")


def test_sort_py_sorts_a_raw_binary_recording(tmp_path):
    """End to end: `sort.py recording.format=binary recording.binary...` (an untrained network:
    the loader path is under test, not the spikes)."""
    import subprocess
    import sys

    from flax import nnx

    from esort_jax import checkpoint as ckpt
    from esort_jax.model import ESortNet, ModelConfig

    recording, _ = small_data(samples=3200, channels=4)
    model = ESortNet(4, 2, ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16),
                     rngs=nnx.Rngs(0))
    ckpt.save_checkpoint(tmp_path / "checkpoint", model, ckpt.make_metadata(model, unit_ids=[5, 6], recording=recording))
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.rint(recording.read() * 100).astype(np.int16).tobytes())
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(repo / "experiments" / "sort.py"), f"checkpoint={tmp_path / 'checkpoint'}",
         f"recording.path={raw}", "recording.format=binary", "recording.binary.sampling_frequency=32000",
         "recording.binary.num_channels=4", "recording.binary.gain_to_uv=0.01", "logger=disabled",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=repo, env={**os.environ, "WANDB_MODE": "disabled"}, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["recording"]["path"] == str(raw.resolve())
    assert results["duration_s"] == pytest.approx(0.1)


def test_truncated_spikeinterface_and_mearec_files_are_refused(tmp_path):
    import h5py

    from esort_jax.io import to_spikeinterface_recording

    recording, truth = small_data()
    folder = tmp_path / "si"
    to_spikeinterface_recording(recording).save(folder=folder, **SAVE_JOB_KWARGS)
    raw = folder / "traces_cached_seg0.raw"
    with open(raw, "r+b") as handle:
        handle.truncate(raw.stat().st_size - 6)  # a copy cut mid-frame
    for allow_pickle in (False, True):
        with pytest.raises(RecordingFormatError, match=r"traces_cached_seg0\.raw: 6394 bytes after the 0-byte offset "
                                                       r"are not a whole number of 16-byte frames"):
            load_recording(folder, allow_pickle=allow_pickle)
    write_mearec(tmp_path / "late.h5", recording, truth)
    with h5py.File(tmp_path / "late.h5", "r+") as f:
        f["spiketrains/1/times"][0] = 400 / FS
    with pytest.raises(RecordingFormatError, match=r"late\.h5: spike of unit 6 at sample 400 is beyond the recording's "
                                                   r"400 samples"):
        load_recording(tmp_path / "late.h5")
    with h5py.File(tmp_path / "late.h5", "r+") as f:
        f["spiketrains/1/times"][0] = np.nan
    with pytest.raises(RecordingFormatError, match=r"spiketrains/1/times holds nan s; times must be finite and >= 0"):
        load_ground_truth(tmp_path / "late.h5")
