"""experiments/_plans.py: each entry point's own settings read from its composed config, and
every bad value named by its key before any work (no training here)."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from esort_jax import ArrayTraces, Recording
from esort_jax.config import ConfigError
from esort_jax.evaluate import EvaluationConfig
from esort_jax.pipeline import PipelineConfig
from esort_jax.realdata.baselines import BaselinesConfig
from esort_jax.windows import WindowConfig
from experiments._common import register_resolvers
from experiments._plans import (BaselinesPlan, LabelEfficiencyPlan, SortPlan, SortRealPlan, TransferPlan, check_ks,
                                read_plan)

CONF = Path(__file__).resolve().parent.parent / "conf"
register_resolvers()


def _compose(name, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(name, overrides=list(overrides))


def _plan(cls, **values):
    return read_plan(cls, OmegaConf.create(values))


def test_every_entry_points_plan_reads_its_config():
    """Plan fields are the YAML keys: the defaults of each conf/<entry point>.yaml read as typed."""
    assert read_plan(TransferPlan, _compose("transfer")).arms == ("transfer", "scratch")
    plan = read_plan(LabelEfficiencyPlan, _compose("label_efficiency"))
    assert plan.ks == (1, 2, 5, 10, 15, 20) and plan.seeds == (0, 1, 2) and plan.reference_accuracy is None
    baselines = read_plan(BaselinesPlan, _compose("baselines"))
    assert baselines.esort.ks == (1, 2, 5, 10, 15) and baselines.metric == "accuracy_pooled"
    assert read_plan(BaselinesConfig, _compose("baselines")).reference_sorter == "kilosort4"
    real = read_plan(SortRealPlan, _compose("sort_real", "labels.path=ks4/sorter_output"))
    assert real.init == "transfer" and real.train_seconds == 30.0 and real.labels.filter.min_spikes == 20
    assert real.truth.path is None and real.labels.path == "ks4/sorter_output"


def test_a_single_value_is_a_one_entry_list():
    plan = _plan(LabelEfficiencyPlan, ks=5, seeds=0)
    assert plan.ks == (5,) and plan.seeds == (0,)


@pytest.mark.parametrize("values, message", [
    ({"ks": [0, 2]}, "ks: every entry must be an integer >= 1; got [0, 2]"),
    ({"ks": [2, 2]}, "ks: entries must be distinct; got [2, 2]"),
    ({"ks": []}, "ks: must be a non-empty list of integers; got []"),
    ({"ks": [1.5]}, "ks[0]: expected an integer; got 1.5"),
    ({"seeds": [-1]}, "seeds: every entry must be an integer >= 0; got [-1]"),
    ({"arms": ["transfer", "foo"]}, "arms: must be a non-empty subset of ['transfer', 'scratch']; got ['transfer', 'foo']"),
    ({"arms": ["scratch", "scratch"]}, "arms: must be a non-empty subset"),
    ({"metric": "f1"}, "metric: must be one of ['accuracy_pooled',"),
    ({"reference_accuracy": 2}, "reference_accuracy: must lie in (0, 1] or be null; got 2"),
])
def test_label_efficiency_plan_errors_name_the_key(values, message):
    with pytest.raises(ConfigError) as error:
        _plan(LabelEfficiencyPlan, **values)
    assert str(error.value).startswith(message)


def test_transfer_and_baselines_plan_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^arms: must be a non-empty subset of \['transfer', 'scratch'\]; got \[\]"):
        _plan(TransferPlan, arms=[])
    with pytest.raises(ConfigError, match=r"^metric: must be one of \['accuracy_pooled', 'accuracy_mean', "
                                          r"'accuracy_median'\]; got 'precision_pooled'"):
        _plan(BaselinesPlan, metric="precision_pooled")
    with pytest.raises(ConfigError, match=r"^esort\.arms: must be a non-empty subset"):
        _plan(BaselinesPlan, esort={"arms": ["finetune"]})


def test_every_k_is_checked_against_the_finetuning_pipeline():
    check_ks(PipelineConfig(), [1, 5])
    with pytest.raises(ConfigError, match=r"^finetune\.windows\.spikes_per_unit: K must be >= 1"):
        check_ks(PipelineConfig(), [1, 0])
    k_only = PipelineConfig(windows=WindowConfig(label_mode="k_only", spikes_per_unit=5))
    check_ks(k_only, [2, 5])
    with pytest.raises(ConfigError, match=r"^finetune\.windows\.spikes_per_unit: label_mode 'k_only' chooses its "
                                          r"threshold by 2-fold cross-validation .* K >= 2; got K = 1"):
        check_ks(k_only, [1, 5])  # refused before any work, not after the K = 1 arm's training
    check_ks(k_only.replace(evaluation=EvaluationConfig(threshold=1.5)), [1])  # a fixed threshold needs no folds


def _checkpoint(tmp_path):
    """A folder that reads as a checkpoint (its metadata and an empty state/, no arrays)."""
    import json

    from esort_jax.checkpoint import CheckpointMetadata
    from esort_jax.model import ModelConfig

    meta = CheckpointMetadata(ModelConfig(window=20, anchor=9), num_channels=4, num_units=2,
                              unit_ids=np.arange(2), sampling_frequency=32000.0)
    (tmp_path / "ckpt" / "state").mkdir(parents=True)
    (tmp_path / "ckpt" / "metadata.json").write_text(json.dumps(meta.to_json()))
    return str(tmp_path / "ckpt")


@pytest.mark.parametrize("values, message", [
    ({"init": "finetune"}, "init: must be 'transfer' or 'scratch'; got 'finetune'"),
    ({"init": "scratch", "checkpoint": "runs/pre"}, "checkpoint: given with init=scratch"),
    ({"checkpoint": "/nowhere"}, "checkpoint: /nowhere is not a checkpoint folder (it does not exist or is a file)"),
    ({"train_seconds": 0}, "train_seconds: must be a number > 0; got 0"),
    ({"train_seconds": "abc"}, "train_seconds: expected a number; got 'abc'"),
    ({"labels": {"path": None}}, "labels.path: required (a Phy/Kilosort folder"),
    ({"labels": {"path": "???"}}, "labels.path: required"),  # left unset on the command line
    ({"labels": {"path": "ks", "filter": {"min_spikes": 0}}}, "labels.filter.min_spikes: must be >= 1"),
    ({"truth": {"paths": "x"}}, "truth.paths: unknown key for TruthSpec"),
])
def test_sort_real_plan_errors_name_the_key(values, message):
    values = {"labels": {"path": "ks"}, **values}
    with pytest.raises(ConfigError) as error:
        _plan(SortRealPlan, **values)
    assert str(error.value).startswith(message)


def test_sort_plan_checks_the_checkpoint_preprocessing_and_span(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    plan = _plan(SortPlan, checkpoint=checkpoint, span=[0.001, 0.002])
    recording = Recording(ArrayTraces(np.zeros((320, 4), np.float32)), 32000.0, np.zeros((4, 2)))
    assert plan.samples(recording) == (32, 64) and plan.folder == Path(checkpoint)
    assert _plan(SortPlan, checkpoint=checkpoint).samples(recording) == (0, 320)
    with pytest.raises(ConfigError, match=r"^span: \[0, 1\] s is outside the recording's 0.01 s$"):
        _plan(SortPlan, checkpoint=checkpoint, span=[0, 1]).samples(recording)
    with pytest.raises(ConfigError, match=r"^checkpoint: required"):
        _plan(SortPlan, checkpoint="???")
    with pytest.raises(ConfigError, match=r"^checkpoint: .*nowhere is not a checkpoint folder \(it does not exist or is a file\)"):
        _plan(SortPlan, checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"^preprocess: must be 'checkpoint' or 'none'; got 'raw'"):
        _plan(SortPlan, checkpoint=checkpoint, preprocess="raw")
    with pytest.raises(ConfigError, match=r"^span: expected 2 values; got 3"):
        _plan(SortPlan, checkpoint=checkpoint, span=[0, 1, 2])
