"""E-Sort as a SpikeInterface sorter: registration, run_sorter on a SpikeInterface-generated
ground-truth recording (scored by SpikeInterface's own comparison), the folder layout,
read_sorter_folder, run_sorter_by_property over shank groups, and a labeller run by the sorter."""

import json

import numpy as np
import pytest
import spikeinterface.sorters as ss
from spikeinterface.comparison import compare_sorter_to_ground_truth
from spikeinterface.core import NumpySorting, generate_ground_truth_recording
from spikeinterface.sorters import BaseSorter

import esort_jax.spikeinterface  # noqa: F401  registers "esort"
from esort_jax.config import ConfigError
from esort_jax.io.spikeinterface import SAVE_JOB_KWARGS
from tests._tiny import TINY_MODEL, fast_compile  # noqa: F401  (fixture)

SMALL = dict(model={"window": TINY_MODEL.window, "anchor": TINY_MODEL.anchor,
                    "temporal_features": list(TINY_MODEL.temporal_features),
                    "spatial_features": TINY_MODEL.spatial_features},
             train={"epochs": 6, "batch_size": 64}, analyzer=False)


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """(saved 8-channel 8 s recording at 32 kHz, its ground-truth sorting with a 'group'
    property: the shank, channels 0-3 or 4-7, of each unit's main channel; two units on each)."""
    recording, truth = generate_ground_truth_recording(
        durations=[8.0], sampling_frequency=32000.0, num_channels=8, num_units=4, seed=2,
        generate_probe_kwargs=dict(num_columns=1, ypitch=20, contact_shapes="circle", contact_shape_params={"radius": 6}),
    )
    recording.set_property("group", np.repeat([0, 1], 4))
    recording = recording.save(folder=tmp_path_factory.mktemp("gt") / "recording", **SAVE_JOB_KWARGS)
    main = np.asarray([list(recording.channel_ids).index(c) for c in truth.get_property("main_channel_id")])
    truth = NumpySorting.from_sorting(truth)
    truth.set_property("group", (main >= 4).astype(int))
    return recording, truth


def test_registered_with_every_parameter_described():
    assert "esort" in ss.installed_sorters() and "esort" in ss.available_sorters()
    defaults = ss.get_default_sorter_params("esort")
    described = ss.get_sorter_params_description("esort")
    assert list(defaults) == list(described)
    assert all(isinstance(text, str) and len(text) > 20 for text in described.values())
    assert defaults["labels"] is None and defaults["labeller"] is None
    assert defaults["train"]["epochs"] == 10 and defaults["preprocess"]["motion"]["enabled"] == "auto"
    assert "E-Sort" in ss.get_sorter_description("esort")


def test_parameter_errors_name_the_parameter(ground_truth, tmp_path):
    recording, truth = ground_truth
    with pytest.raises(ConfigError, match="^labels: give exactly one of labels .* got neither"):
        ss.run_sorter("esort", recording, folder=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"^train\.epoch: unknown key for TrainConfig"):
        ss.run_sorter("esort", recording, folder=tmp_path / "b", labels=truth, train={"epoch": 3})
    with pytest.raises(ConfigError, match=r"^preprocess\.motion\.preset: must be one of"):
        ss.run_sorter("esort", recording, folder=tmp_path / "c", labels=truth, preprocess={"motion": {"preset": "x"}})
    with pytest.raises(ValueError, match="Invalid parameters"):
        ss.run_sorter("esort", recording, folder=tmp_path / "d", labels=truth, epochs=3)


def _performance(truth, sorting):
    return compare_sorter_to_ground_truth(truth, sorting, exhaustive_gt=True).get_performance()


def test_run_sorter_with_given_labels(ground_truth, tmp_path):
    recording, truth = ground_truth
    folder = tmp_path / "esort"
    sorting = ss.run_sorter("esort", recording, folder=folder, labels=truth, train_seconds=4.0,
                            **{**SMALL, "analyzer": True})
    performance = _performance(truth, sorting)
    assert performance["accuracy"].mean() > 0.8, performance
    assert sorting.get_property("labeller_unit_id").tolist() == truth.unit_ids.tolist()
    assert set(sorting.get_property("labeller")) == {"labels"}
    log = json.loads((folder / "spikeinterface_log.json").read_text())
    assert log["sorter_name"] == "esort" and not log["error"] and log["run_time"] > 0
    seconds = log["esort"]["esort"]["seconds"]
    assert log["esort"]["labeller"] is None and seconds["fit"] > 0 and seconds["sort_rest"] > 0
    assert log["run_time"] >= seconds["total_whole_recording"]
    params = json.loads((folder / "spikeinterface_params.json").read_text())["sorter_params"]
    assert params["labels"] == str(folder / "labels_input") and params["train"]["batch_size"] == 64
    again = ss.read_sorter_folder(folder)
    for unit in truth.unit_ids:
        np.testing.assert_array_equal(again.get_unit_spike_train(unit), sorting.get_unit_spike_train(unit))
    _check_analyzer_outputs(folder / "sorter_output", sorting)


def _check_analyzer_outputs(output, sorting):
    import csv

    import spikeinterface as si
    from PIL import Image

    rows = list(csv.DictReader((output / "quality_metrics.csv").open()))
    assert [row["unit_id"] for row in rows] == [str(u) for u in sorting.unit_ids]
    assert {"snr", "isi_violations_ratio", "presence_ratio", "amplitude_cutoff", "firing_rate"} <= set(rows[0])
    assert all(float(row["snr"]) > 3 for row in rows)
    analyzer = si.load_sorting_analyzer(output / "analyzer")
    assert analyzer.is_sparse() and analyzer.has_extension("template_similarity")
    image = np.asarray(Image.open(output / "report.png").convert("L"), dtype=float)
    assert image.shape[0] > 500 and image.shape[1] > 800
    height, width = image.shape  # every quadrant drawn on: table, probe, amplitudes, templates
    for rows_, cols in [(slice(0, height // 2), slice(0, width // 2)), (slice(0, height // 2), slice(width // 2, None)),
                        (slice(height // 2, None), slice(0, width // 2)), (slice(height // 2, None), slice(width // 2, None))]:
        assert (image[rows_, cols] < 128).mean() > 0.005


def test_run_sorter_by_property_sorts_each_shank(ground_truth, tmp_path):
    recording, truth = ground_truth
    sorting = ss.run_sorter_by_property("esort", recording, grouping_property="group", folder=tmp_path / "groups",
                                        labels=truth, train_seconds=4.0, **SMALL)
    groups = truth.get_property("group")
    assert sorting.get_num_units() == truth.get_num_units()
    for unit, group, source in zip(sorting.unit_ids, sorting.get_property("group"), sorting.get_property("labeller_unit_id")):
        assert groups[list(truth.unit_ids).index(source)] == group  # each shank trained on its own units
        matched = truth.get_unit_spike_train(source)
        found = sorting.get_unit_spike_train(unit)
        hits = np.abs(found[:, None] - matched[None, :]).min(axis=1) <= 13
        assert hits.mean() > 0.6, (unit, source, hits.mean())
    for group in (0, 1):
        log = json.loads((tmp_path / "groups" / str(group) / "spikeinterface_log.json").read_text())
        assert not log["error"]


class TruthLabeller(BaseSorter):
    """A stand-in labeller for the tests: returns the spikes of a saved sorting that fall in the
    span it is given (as any labeller, it sees only that span)."""

    sorter_name = "truth_labeller"
    _default_params = {"truth": None}
    _params_description = {"truth": "folder of the sorting to return"}

    @classmethod
    def get_sorter_version(cls):
        return "test"

    @classmethod
    def is_installed(cls):
        return True

    @classmethod
    def _setup_recording(cls, recording, sorter_output_folder, params, verbose):
        pass

    @classmethod
    def _run_from_folder(cls, sorter_output_folder, params, verbose):
        import spikeinterface as si

        recording = cls.load_recording_from_folder(sorter_output_folder.parent)
        truth = si.load(params["truth"]).frame_slice(0, recording.get_num_samples())
        NumpySorting.from_sorting(truth).save(folder=sorter_output_folder / "sorting")

    @classmethod
    def _get_result_from_folder(cls, sorter_output_folder):
        import spikeinterface as si

        return si.load(sorter_output_folder / "sorting")


def test_labeller_runs_on_the_training_span_and_is_timed_apart(ground_truth, tmp_path):
    from spikeinterface.sorters import sorterlist

    recording, truth = ground_truth
    truth.save(folder=tmp_path / "truth")
    sorterlist.sorter_full_list.append(TruthLabeller)
    sorterlist.sorter_dict["truth_labeller"] = TruthLabeller
    try:
        sorting = ss.run_sorter("esort", recording, folder=tmp_path / "esort", labeller="truth_labeller",
                                labeller_params={"truth": str(tmp_path / "truth")}, train_seconds=4.0, **SMALL)
    finally:
        sorterlist.sorter_full_list.remove(TruthLabeller)
        del sorterlist.sorter_dict["truth_labeller"]
    log = json.loads((tmp_path / "esort" / "spikeinterface_log.json").read_text())["esort"]
    labeller = log["labeller"]
    assert labeller["name"] == "truth_labeller" and labeller["span_samples"] == [0, 128000]
    assert labeller["run_time_s"] > 0 and labeller["num_spikes"] == truth.frame_slice(0, 128000).to_spike_vector().size
    assert log["esort"]["seconds"]["sort_rest"] > 0 and log["esort"]["recording_duration_s"] == 8.0
    assert set(sorting.get_property("labeller")) == {"truth_labeller"}
    performance = _performance(truth, sorting)
    assert performance["accuracy"].mean() > 0.8, performance
    assert (tmp_path / "esort" / "sorter_output" / "labeller" / "sorter" / "spikeinterface_log.json").is_file()


@pytest.mark.baselines  # tridesclous2 needs hdbscan and scikit-learn (requirements-baselines.txt)
def test_labeller_tridesclous2(tmp_path):
    recording, truth = generate_ground_truth_recording(
        durations=[30.0], sampling_frequency=32000.0, num_channels=16, num_units=6, seed=1,
        noise_kwargs=dict(noise_levels=5.0, strategy="tile_pregenerated"),
    )
    recording = recording.save(folder=tmp_path / "recording", **SAVE_JOB_KWARGS)
    sorting = ss.run_sorter("esort", recording, folder=tmp_path / "esort", labeller="tridesclous2", train_seconds=15.0,
                            train={"epochs": 10}, analyzer=False)
    log = json.loads((tmp_path / "esort" / "spikeinterface_log.json").read_text())["esort"]
    assert log["labeller"]["name"] == "tridesclous2" and log["labeller"]["run_time_s"] > 0
    comparison = compare_sorter_to_ground_truth(truth, sorting, exhaustive_gt=True)
    assert comparison.count_well_detected_units(well_detected_score=0.8) >= 3, comparison.get_performance()


def test_partial_stage_dicts_keep_the_other_defaults_and_devices_are_checked(tmp_path):
    from esort_jax.realdata.sorter_job import jax_device
    from esort_jax.realdata.sorter_params import SorterJob, default_params

    with pytest.raises(ConfigError, match="^labels: .*missing does not exist"):
        SorterJob.from_params({**default_params(), "labels": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="^labeller: unknown sorter 'ks5'"):
        SorterJob.from_params({**default_params(), "labeller": "ks5"})
    job = SorterJob.from_params({**default_params(), "labels": str(tmp_path), "train": {"epochs": 3},
                                 "preprocess": {"motion": {"enabled": True, "preset": "nonrigid_accurate"}}})
    preprocess = job.stages["preprocess"]  # (the default preset, dredge_fast, needs torch: not in the core stack)
    assert preprocess.motion.enabled is True and preprocess.motion.preset == "nonrigid_accurate" and preprocess.bandpass
    assert preprocess.motion.min_duration_s == 120.0  # the other motion defaults kept
    assert job.stages["train"].epochs == 3 and not job.stages["train"].progress  # the sorter's CPU default kept
    assert job.train_seconds_for(100.0) == 50.0 and job.train_seconds_for(3600.0) == 300.0
    with pytest.raises(ConfigError, match="^device: must be one of"):
        SorterJob.from_params({**default_params(), "labels": str(tmp_path), "device": "cuda"})
    with pytest.raises(ConfigError, match="^device: no 'tpu' device here"):
        with jax_device("tpu"):
            pass
    with jax_device("cpu"):
        import jax.numpy as jnp

        assert jnp.zeros(1).devices().pop().platform == "cpu"


def test_a_labels_object_is_saved_with_its_curation(ground_truth, tmp_path):
    from esort_jax.realdata.labeller import load_labels
    from esort_jax.spikeinterface import _labels_as_path

    _, truth = ground_truth
    labels = NumpySorting.from_sorting(truth)
    labels.set_property("KSLabel", np.asarray(["good", "mua", "good", "noise"], dtype=object))
    path = _labels_as_path(labels, tmp_path)
    loaded = load_labels(path)
    assert loaded.unit_table["label"].tolist() == ["good", "mua", "good", "noise"]
    assert loaded.sorting.num_spikes == truth.to_spike_vector().size
