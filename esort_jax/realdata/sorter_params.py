"""The parameters of E-Sort as a SpikeInterface sorter, their descriptions, and their typed form.

    params = default_params()                      # what get_default_sorter_params("esort") shows
    job = SorterJob.from_params({**params, "labels": "ks4/sorter_output", "train_seconds": 300})

SpikeInterface keeps a sorter's parameters as one JSON-able dict (spikeinterface_params.json).
Top-level values are plain choices (where labels come from, how long to train, which device);
each pipeline stage's settings are a nested dict whose keys are the fields of that stage's
config dataclass (the same keys as the YAML files under conf/): a partial dict overrides only
the keys it names, the rest keep the sorter's defaults below.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from esort_jax.config import ConfigError, from_dict, require, to_dict
from esort_jax.evaluate import EvaluationConfig
from esort_jax.infer import InferenceConfig
from esort_jax.model import ModelConfig
from esort_jax.postprocess import PostprocessConfig
from esort_jax.realdata.motion import MotionConfig
from esort_jax.realdata.preprocess import PreprocessConfig
from esort_jax.realdata.quality import QualityFilter
from esort_jax.realdata.workflow import CPU_TRAIN, LABELLED_EVALUATION
from esort_jax.train import TrainConfig
from esort_jax.windows import WindowConfig

__all__ = ["STAGE_CONFIGS", "DEVICES", "default_params", "params_description", "merge_params", "SorterJob"]

# Stage settings: parameter name -> (config class, the sorter's default).
STAGE_CONFIGS: dict[str, tuple[type, Any]] = {
    "quality": (QualityFilter, QualityFilter()),
    # motion correction on for long recordings (docs/motion_correction.md: it wins on drifting data
    # and costs nothing measurable on static data)
    "preprocess": (PreprocessConfig, PreprocessConfig(motion=MotionConfig(enabled="auto"))),
    "model": (ModelConfig, ModelConfig()),
    "windows": (WindowConfig, WindowConfig()),
    "train": (TrainConfig, CPU_TRAIN),
    "evaluation": (EvaluationConfig, LABELLED_EVALUATION),
    "infer": (InferenceConfig, InferenceConfig()),
    "postprocess": (PostprocessConfig, PostprocessConfig()),
}
DEVICES = ("auto", "cpu", "gpu", "tpu")
INITS = ("auto", "transfer", "scratch")
FREEZES = ("none", "temporal", "backbone")
LABELLER_INPUTS = ("preprocessed", "raw")
# Longest training span when train_seconds is None (half the recording when shorter).
DEFAULT_MAX_TRAIN_SECONDS = 300.0

_PLAIN_DEFAULTS = {
    "labels": None,
    "labeller": None,
    "labeller_params": {},
    "labeller_input": "preprocessed",
    "labels_group_property": "group",
    "allow_pickle": False,
    "train_seconds": None,
    "init": "auto",
    "checkpoint": "auto",
    "freeze": "none",
    "device": "auto",
    "seed": 0,
    "analyzer": True,
    "export_phy": False,
    "export_nwb": False,
    "n_jobs": 1,
}

_DESCRIPTIONS = {
    "labels": "Where the training labels come from, when no labeller runs: a Phy/Kilosort folder, a SpikeInterface "
              "sorting folder or sorting object, or a .npz sorting (spike times in samples of this recording). "
              "Exactly one of labels and labeller. (str | BaseSorting | None, None)",
    "labeller": "Name of an installed SpikeInterface sorter that E-Sort runs itself on the first train_seconds to "
                "make its labels (e.g. 'tridesclous2', 'kilosort4'). (str | None, None)",
    "labeller_params": "Parameters of the labeller (as for run_sorter). (dict, {})",
    "labeller_input": "What the labeller sorts: 'preprocessed' (the traces E-Sort trains on, after preprocess and "
                      "motion correction) or 'raw' (the recording as given). (str, 'preprocessed')",
    "labels_group_property": "When the recording's channels all share one value of this property (a shank under "
                             "run_sorter_by_property) and the labels sorting carries the property, only its units "
                             "with that value are used; None: every unit. (str | None, 'group')",
    "allow_pickle": "Trust a SpikeInterface labels folder: load its pickles, which run code (off: JSON only). "
                    "(bool, False)",
    "train_seconds": "Train on the labels of [0, train_seconds) and sort the whole recording; None: half the "
                     f"recording, at most {DEFAULT_MAX_TRAIN_SECONDS:g} s. (float | None, None)",
    "init": "'transfer' (start from the backbone of `checkpoint`), 'scratch' (random initialisation) or 'auto' "
            "(transfer when a checkpoint is given or found, else scratch). (str, 'auto')",
    "checkpoint": "Pretrained backbone: a checkpoint folder, 'auto' (the built backbone matching the probe "
                  "geometry, see esort_jax.backbones; scratch when none fits) or None (scratch). (str | None, 'auto')",
    "freeze": "Layers kept fixed while fine-tuning a transferred backbone: 'none', 'temporal' or 'backbone'. "
              "(str, 'none')",
    "quality": "Which labelled units E-Sort trains on (esort_jax.realdata.quality.QualityFilter: labels, "
               "min_spikes, min_rate_hz, max_isi_violation_ratio, isi_threshold_ms, min_isi_ms). (dict)",
    "preprocess": "Preprocessing before training and sorting (esort_jax.realdata.preprocess.PreprocessConfig: "
                  "enabled, phase_shift, bandpass, freq_min_hz, freq_max_hz, common_reference, reference_operator, "
                  "local_radius_um, motion {enabled (true | false | 'auto': on for recordings of at least "
                  "min_duration_s, 120 s, or when the labeller corrected motion itself), preset ('dredge_fast'), min_duration_s, keep_all_channels, n_jobs, "
                  "chunk_duration_s}, whiten). Motion correction is SpikeInterface's correct_motion; its estimate "
                  "and plot are saved in sorter_output/motion/. (dict)",
    "model": "Network sizes (esort_jax.model.ModelConfig: window, anchor, temporal_features, spatial_features, "
             "...). (dict)",
    "windows": "Training windows (esort_jax.windows.WindowConfig: jitter, spikes_per_unit (None: every labelled "
               "spike), negatives_per_positive, validation_fraction (the tail of the training span the threshold "
               "is chosen on), ...). (dict)",
    "train": "Optimisation (esort_jax.train.TrainConfig: epochs, batch_size, learning_rate, "
             "early_stopping_patience_steps, ...; default at most 10 epochs, stopped once the validation loss "
             "has not improved for 300 steps). (dict)",
    "evaluation": "Threshold policy (esort_jax.evaluate.EvaluationConfig: threshold (fixed; None sweeps "
                  "`thresholds` on the validation tail of the training span against the labels), thresholds, "
                  "threshold_metric, threshold_tolerance, tolerance_ms). (dict)",
    "infer": "Streamed inference (esort_jax.infer.InferenceConfig: chunk_steps, kernel, ...). (dict)",
    "postprocess": "Peak picking (esort_jax.postprocess.PostprocessConfig: kernel_taps, normalisation, ...). (dict)",
    "device": "JAX device: 'auto' (JAX's default: a GPU/TPU when present), 'cpu', 'gpu' or 'tpu'. (str, 'auto')",
    "seed": "Seed of windows sampling and initialisation. (int, 0)",
    "analyzer": "After sorting, build a sparse SortingAnalyzer (sorter_output/analyzer) with the usual extensions "
                "and quality metrics, and write quality_metrics.csv and report.png. (bool, True)",
    "export_phy": "Also write a Phy folder (sorter_output/phy). (bool, False)",
    "export_nwb": "Also write the sorting as NWB (sorter_output/sorting.nwb, units table with spike times, "
                  "electrodes and mean waveforms). (bool, False)",
    "n_jobs": "Worker threads of SpikeInterface's chunked steps (labeller, analyzer; -1: every core). (int, 1)",
}


def default_params() -> dict:
    """Every parameter with the sorter's default (stage settings as complete dicts)."""
    params = dict(_PLAIN_DEFAULTS)
    for name, (_, default) in STAGE_CONFIGS.items():
        params[name] = to_dict(default)
    return params


def params_description() -> dict:
    """One description per parameter (what it is, its type and default)."""
    return {name: _DESCRIPTIONS[name] for name in default_params()}


def merge_params(params: dict) -> dict:
    """`params` with each stage dict completed by the sorter's defaults (a user's partial dict
    overrides only the keys it names)."""
    merged = dict(params)
    for name, (_, default) in STAGE_CONFIGS.items():
        given = merged.get(name)
        if given is None:
            merged[name] = to_dict(default)
        elif isinstance(given, dict):
            merged[name] = _merge(to_dict(default), given)
        elif dataclasses.is_dataclass(given):
            merged[name] = to_dict(given)
        else:
            raise ConfigError(f"{name}: must be a dict of {STAGE_CONFIGS[name][0].__name__} fields; got {given!r}")
    return merged


def _merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for key, value in given.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@dataclasses.dataclass(frozen=True)
class SorterJob:
    """The sorter's parameters, typed and validated (see _DESCRIPTIONS for each)."""

    labels: str | None
    labeller: str | None
    labeller_params: dict
    labeller_input: str
    labels_group_property: str | None
    allow_pickle: bool
    train_seconds: float | None
    init: str
    checkpoint: str | None
    freeze: str
    device: str
    seed: int
    analyzer: bool
    export_phy: bool
    export_nwb: bool
    n_jobs: int
    stages: dict  # name -> config dataclass (STAGE_CONFIGS)

    @classmethod
    def from_params(cls, params: dict) -> "SorterJob":
        """Typed and validated; ConfigError naming the parameter otherwise."""
        merged = merge_params(params)
        unknown = sorted(set(merged) - set(default_params()))
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a parameter of esort (known: {', '.join(default_params())})")
        stages = {name: from_dict(config_class, merged[name], where=name)
                  for name, (config_class, _) in STAGE_CONFIGS.items()}
        plain = {name: merged[name] for name in _PLAIN_DEFAULTS}
        plain["labeller_params"] = dict(plain["labeller_params"] or {})
        job = cls(**plain, stages=stages)
        job.validate()
        return job

    def validate(self) -> None:
        require((self.labels is None) != (self.labeller is None), "labels",
                "give exactly one of labels (a sorting or its folder) and labeller (a sorter's name); got "
                + ("both" if self.labels is not None else "neither"))
        require(self.labels is None or isinstance(self.labels, str), "labels",
                f"must be a path (a sorting object is saved to the output folder first); got {self.labels!r}")
        require(self.labels is None or Path(self.labels).expanduser().exists(), "labels",
                f"{self.labels} does not exist")
        if self.labeller is not None:
            from esort_jax.realdata.baselines import check_spikeinterface_sorter, require_installed

            check_spikeinterface_sorter(self.labeller, "labeller")
            require_installed(self.labeller)
        require(self.labeller_input in LABELLER_INPUTS, "labeller_input",
                f"must be one of {list(LABELLER_INPUTS)}; got {self.labeller_input!r}")
        require(self.train_seconds is None or float(self.train_seconds) > 0, "train_seconds",
                f"must be > 0 or None; got {self.train_seconds!r}")
        require(self.init in INITS, "init", f"must be one of {list(INITS)}; got {self.init!r}")
        require(not (self.init == "transfer" and self.checkpoint is None), "checkpoint",
                "init='transfer' needs a checkpoint folder or 'auto'")
        require(self.freeze in FREEZES, "freeze", f"must be one of {list(FREEZES)}; got {self.freeze!r}")
        require(self.device in DEVICES, "device", f"must be one of {list(DEVICES)}; got {self.device!r}")
        require(self.n_jobs == -1 or self.n_jobs >= 1, "n_jobs", f"must be -1 or >= 1; got {self.n_jobs}")

    def train_seconds_for(self, duration_s: float) -> float:
        """The training span's length for a recording of `duration_s` seconds."""
        if self.train_seconds is not None:
            return float(self.train_seconds)
        return min(DEFAULT_MAX_TRAIN_SECONDS, duration_s / 2)
