"""Motion correction in the one preprocessing config: settings checked, online modes refused, the
estimate following the true drift of a SpikeInterface drifting recording, saved and plotted."""

import importlib.util
import json

import numpy as np
import pytest

from esort_jax.config import ConfigError, from_dict
from esort_jax.realdata.motion import MOTION_PRESETS, MotionConfig
from esort_jax.realdata.preprocess import PreprocessConfig, describe, preprocess, preprocessed_recording


def test_settings_are_checked_and_named():
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.preset: must be one of \['dredge_fast'"):
        PreprocessConfig(motion=MotionConfig(preset="rigid")).validate()
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.n_jobs"):
        from_dict(PreprocessConfig, {"motion": {"n_jobs": 0}}, where="preprocess")
    with pytest.raises(ConfigError, match=r"'medicine' needs the Python module\(s\) medicine"):
        MotionConfig(enabled=True, preset="medicine").validate()
    assert set(MOTION_PRESETS) >= {"rigid_fast", "dredge", "nonrigid_accurate"}
    # (presets without torch here: dredge, dredge_fast and rigid_fast need it, test_a_preset_needing_torch...)
    config = from_dict(PreprocessConfig, {"motion": {"enabled": True, "preset": "nonrigid_accurate"}}, where="preprocess")
    assert describe(config) == ["bandpass_filter 300-6000 Hz", "common_reference global median",
                                "correct_motion nonrigid_accurate"]


def test_online_compatibility_is_stated_and_enforced():
    plain = PreprocessConfig()
    assert plain.online_problems() == [] and not plain.causal  # zero-phase band-pass looks ahead
    plain.require_online()
    assert PreprocessConfig(bandpass=False, phase_shift="off").causal
    moving = PreprocessConfig(motion=MotionConfig(enabled=True))
    assert not moving.causal and "no preset is causal" in moving.online_problems()[0]
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.enabled: cannot run online: motion correction"):
        moving.require_online()
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.enabled, preprocess\.whiten: cannot run online"):
        PreprocessConfig(motion=MotionConfig(enabled=True), whiten=True).require_online()
    assert PreprocessConfig(enabled=False, motion=MotionConfig(enabled=True)).online_problems() == []


def test_auto_corrects_long_recordings_with_depth_only():
    from spikeinterface.core import generate_recording

    short = generate_recording(num_channels=4, durations=[2.0], sampling_frequency=32000.0)
    config = PreprocessConfig(motion=MotionConfig(enabled="auto"))
    assert config.motion.applies_to(short) == (False, "auto: off, the recording lasts 2 s < min_duration_s 120")
    recording = preprocessed_recording(short, config)
    assert recording.metadata["motion"]["applied"] is False and "correct_motion" not in " ".join(
        recording.metadata["preprocess"])
    assert MotionConfig(enabled="auto", min_duration_s=1.0, preset="nonrigid_fast_and_accurate").applies_to(short)[0]
    flat = generate_recording(num_channels=4, durations=[2.0], sampling_frequency=32000.0, set_probe=False)
    assert MotionConfig(enabled="auto", min_duration_s=1.0).applies_to(flat) == (
        False, "auto: off, the channels lie at fewer than two depths (or have no positions)")
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.enabled: expected true/false; got 'yes'"):
        from_dict(PreprocessConfig, {"motion": {"enabled": "yes"}}, where="preprocess")
    assert PreprocessConfig(motion=MotionConfig(enabled="auto")).online_problems()


def test_motion_correction_needs_channel_positions():
    from spikeinterface.core import NumpyRecording

    recording = NumpyRecording([np.zeros((32000, 4), dtype="float32")], sampling_frequency=32000.0)
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.enabled: motion correction needs channel positions"):
        preprocess(recording, PreprocessConfig(bandpass=False, common_reference="none",
                                               motion=MotionConfig(enabled=True, preset="nonrigid_accurate")))


def test_a_preset_needing_torch_is_refused_up_front_or_left_off_by_auto(monkeypatch):
    import esort_jax.realdata.motion as motion

    real = importlib.util.find_spec
    monkeypatch.setattr(motion.importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.preset: 'dredge_fast' needs the Python module\(s\) torch"):
        PreprocessConfig(motion=MotionConfig(enabled=True)).validate()
    from spikeinterface.core import generate_recording

    long = generate_recording(num_channels=8, durations=[130.0], seed=0)
    applies, why = MotionConfig(enabled="auto").applies_to(long)
    assert not applies and "needs torch, not installed" in why, why
    assert MotionConfig(enabled="auto", preset="nonrigid_fast_and_accurate").applies_to(long)[0]


# SpikeInterface's DREDge estimator (rigid_fast, dredge, dredge_fast) imports torch, which only the
# optional baselines stack installs; the presets without it (decentralised registration,
# iterative template) did not follow this small probe's drift (correlation 0.02-0.66) or failed.
@pytest.mark.baselines
@pytest.mark.parametrize("preset", ["rigid_fast"])
def test_estimate_follows_the_true_drift_and_is_saved(tmp_path, preset):
    from spikeinterface.generation import generate_drifting_recording

    _, drifting, _, extra = generate_drifting_recording(
        num_units=10, duration=30.0, sampling_frequency=32000.0, seed=0, extra_outputs=True,
        generate_probe_kwargs=dict(num_columns=2, num_contact_per_column=8, xpitch=16, ypitch=20,
                                   contact_shapes="circle", contact_shape_params={"radius": 6}),
        generate_displacement_vector_kwargs=dict(
            displacement_sampling_frequency=5.0, drift_start_um=[0, 15], drift_stop_um=[0, -15], drift_step_um=1,
            motion_list=[dict(drift_mode="zigzag", non_rigid_gradient=None, t_start_drift=0.0, t_end_drift=None,
                              period_s=30)]),
    )
    config = PreprocessConfig(motion=MotionConfig(enabled=True, preset=preset, n_jobs=2))
    recording = preprocessed_recording(drifting, config, motion_folder=tmp_path / "motion")
    assert recording.num_channels == 16 and recording.metadata["preprocess"][-1] == f"correct_motion {preset}"
    summary = json.loads((tmp_path / "motion" / "summary.json").read_text())
    assert recording.metadata["motion"]["displacement_um"] == summary["displacement_um"]
    assert summary["rigid"] == (preset == "rigid_fast")
    from spikeinterface.preprocessing.motion import load_motion_info

    motion = load_motion_info(tmp_path / "motion")["motion"]
    estimate, times = motion.displacement[0].mean(axis=1), motion.temporal_bins_s[0]  # over spatial windows
    truth = np.interp(times, np.arange(len(extra["displacement_vectors"])) / 5.0, extra["displacement_vectors"][:, 1, 0])
    assert np.corrcoef(estimate, truth)[0, 1] > 0.8, (estimate, truth)
    assert 10 < summary["displacement_um"]["range"] < 45  # the truth spans 30 µm
    assert (tmp_path / "motion" / "motion.png").stat().st_size > 20_000
    assert recording.read(0, 3200).shape == (3200, 16)  # the corrected traces read lazily


def test_auto_follows_a_labeller_that_corrected_motion(tmp_path):
    """E-Sort sorts traces like the ones its labels came from: when the labeller corrected motion
    (its parameters say so), 'auto' corrects a recording of any length (docs/claims.md §0)."""
    from spikeinterface.core import generate_recording

    from esort_jax.realdata.motion import labeller_motion_correction, labels_motion_correction

    assert labeller_motion_correction("tridesclous2", {}) is None  # off by default in SpikeInterface 0.105
    assert labeller_motion_correction("tridesclous2", {"apply_motion_correction": True}) == \
        "tridesclous2 apply_motion_correction=True"
    assert labeller_motion_correction("spykingcircus2") == "spykingcircus2 apply_motion_correction=True"
    assert labeller_motion_correction("kilosort4") == "kilosort4 nblocks=1"
    assert labeller_motion_correction("kilosort4", {"nblocks": 0}) is None
    assert labeller_motion_correction("kilosort4", {"do_correction": False}) is None
    assert labeller_motion_correction("a_sorter_nobody_knows", {"apply_motion_correction": True}) is not None
    assert labeller_motion_correction(None) is None

    run = tmp_path / "tdc2"
    (run / "sorter_output").mkdir(parents=True)
    (run / "spikeinterface_params.json").write_text(json.dumps(
        {"sorter_name": "tridesclous2", "sorter_params": {"apply_motion_correction": True}}))
    assert labels_motion_correction(run) == labels_motion_correction(run / "sorter_output") == \
        "tridesclous2 apply_motion_correction=True"
    (run / "spikeinterface_params.json").write_text("{not json")
    assert labels_motion_correction(run) is None and labels_motion_correction(tmp_path / "absent") is None

    short = generate_recording(num_channels=4, durations=[2.0], sampling_frequency=32000.0)
    auto = MotionConfig(enabled="auto", preset="nonrigid_fast_and_accurate")
    assert auto.applies_to(short, None)[0] is False
    assert auto.applies_to(short, "kilosort4 nblocks=1") == (True, "auto: on, the labeller corrected motion (kilosort4 nblocks=1)")
    assert MotionConfig(enabled=False).applies_to(short, "kilosort4 nblocks=1")[0] is False  # an explicit choice stands
    flat = generate_recording(num_channels=4, durations=[2.0], sampling_frequency=32000.0, set_probe=False)
    assert auto.applies_to(flat, "kilosort4 nblocks=1")[0] is False


def test_the_noise_levels_motion_correction_reads_are_seeded_and_the_callers_recording_left_alone():
    from spikeinterface.core import generate_recording, get_noise_levels

    from esort_jax.realdata.motion import seeded_noise_levels

    recording = generate_recording(num_channels=8, durations=[20.0], sampling_frequency=32000.0, seed=0)
    first, again, other = (get_noise_levels(seeded_noise_levels(recording, seed), return_in_uV=False)
                           for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert not any(key.startswith("noise_level") for key in recording.get_property_keys())  # a view got them
    assert list(seeded_noise_levels(recording, 0).channel_ids) == list(recording.channel_ids)


def test_correct_motion_hands_spikeinterface_a_recording_whose_noise_levels_are_seeded(monkeypatch):
    """SpikeInterface's correct_motion sets its detection threshold from get_noise_levels of the
    recording it is given (unseeded random chunks: on our 64-channel drifting recording two runs
    found 8886 and 8894 peaks and different motion). It must get the seeded, cached estimate."""
    import spikeinterface.preprocessing as spre
    from spikeinterface.core import generate_recording, get_noise_levels

    from esort_jax.realdata import motion as motion_module

    seen = []

    def fake_correct_motion(recording, **kwargs):
        seen.append(get_noise_levels(recording, return_in_uV=False))  # what the real one reads
        raise RuntimeError("stop here")

    monkeypatch.setattr(spre, "correct_motion", fake_correct_motion)
    recording = generate_recording(num_channels=8, durations=[20.0], sampling_frequency=32000.0, seed=0)
    for seed in (0, 0, 3):
        with pytest.raises(RuntimeError, match="stop here"):
            motion_module.correct_motion(recording, MotionConfig(enabled=True, preset="nonrigid_fast_and_accurate",
                                                                   seed=seed))  # a preset without torch
    assert np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[0], seen[2])
    expected = get_noise_levels(recording, return_in_uV=False, random_slices_kwargs={"seed": 0})
    assert np.array_equal(seen[0], expected)
