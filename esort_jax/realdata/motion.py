"""Motion (drift) correction with SpikeInterface's `correct_motion`, as a preprocessing step.

    config = MotionConfig(enabled=True, preset="dredge_fast")
    corrected, summary = correct_motion(si_recording, config, folder="run/motion")   # lazy traces

The probe moves in the brain over a long recording, so a neuron's waveform slides along the
probe's depth axis. `correct_motion` estimates that displacement over time from the spikes it
detects and localises (peaks), then interpolates the traces back to a fixed depth (kriging),
lazily, chunk by chunk. Presets (SpikeInterface's `motion_options_preset`):

    rigid_fast                   one displacement per 5 s bin for the whole probe (centre of mass)
    dredge_fast                  non-rigid DREDge on grid-convolution locations (SpikeInterface's
                                 and our default: see docs/motion_correction.md)
    dredge                       non-rigid DREDge on monopolar-triangulation locations (official)
    nonrigid_accurate            decentralised registration, monopolar triangulation
    nonrigid_fast_and_accurate   decentralised registration, grid convolution
    kilosort_like                Kilosort 2.5's iterative template
    medicine                     MEDiCINe (needs the `medicine` package)

Estimating the motion reads the whole recording once (peak detection and localisation); only
the interpolation is lazy. With `folder`, the estimate is saved there (SpikeInterface's
`save_motion_info` layout: motion/, peaks.npy, peak_locations.npy, parameters.json,
run_times.json) with `motion.png` (SpikeInterface's drift raster before and after, and the
displacement) and `summary.json`.

Online use: the displacement at time t is estimated from spikes after t too (whole-recording
registration, also DREDge's 'online' batching works on chunks of tens of seconds), so no preset
is causal; `MotionConfig.online_problems()` says so and `esort_jax.realdata.preprocess`
refuses it for online sorting.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from esort_jax.config import ConfigError, require
from esort_jax.runtime.spikeinterface_jobs import spikeinterface_jobs

__all__ = ["MOTION_PRESETS", "MotionConfig", "correct_motion", "seeded_noise_levels", "labeller_motion_correction",
           "labels_motion_correction", "motion_summary", "plot_motion", "spikeinterface_jobs"]

MOTION_PRESETS = ("dredge_fast", "rigid_fast", "dredge", "nonrigid_accurate", "nonrigid_fast_and_accurate",
                  "kilosort_like", "medicine")
# What a preset needs beyond the core stack (SpikeInterface 0.105.3: the dredge_ap estimator of
# dredge, dredge_fast and rigid_fast imports torch, which only the optional baselines stack has).
_PRESET_MODULES = {"medicine": ("medicine",), "dredge": ("torch",), "dredge_fast": ("torch",),
                   "rigid_fast": ("torch",)}
# SpikeInterface 0.105.3's 'dredge' preset sets estimate_motion_kwargs batching_mode='offline',
# which dredge_ap refuses (it knows 'full' and 'online'); 'full' is what the preset means.
_PRESET_FIXES = {"dredge": {"estimate_motion_kwargs": {"batching_mode": "full"}}}


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """Motion correction settings (module doc).

    Attributes:
      enabled: true: estimate the probe's motion and interpolate the traces back; false (the
        library default): no correction; 'auto' (the entry points' default, see
        docs/motion_correction.md): on for recordings of at least `min_duration_s`, or of any
        length when the labeller whose spikes E-Sort learns corrected motion itself (E-Sort
        then sorts traces like the ones its labels came from: docs/claims.md, section 0), whose
        channels lie at two or more depths; off otherwise (said in the summary).
      preset: one of MOTION_PRESETS.
      min_duration_s: the shortest recording 'auto' corrects (drift builds up over minutes;
        the estimate needs a few time bins of spikes).
      keep_all_channels: interpolate every channel, extrapolating at the probe's ends
        ('force_extrapolate'); false: the preset's border mode (rigid_fast and the
        nonrigid_* presets then drop the channels the drift can move out of the probe, so the
        recording has fewer channels).
      n_jobs: worker threads for peak detection and localisation (-1: every core).
      chunk_duration_s: chunk length of that pass.
      seed: seed of the random chunks SpikeInterface's noise-level estimate reads (it sets the
        peak detection threshold; unseeded, two runs on the same recording estimated different
        motion and E-Sort's scores moved by up to 0.006: docs/claims.md, section 0).
    """

    enabled: bool | Literal["auto"] = False
    preset: str = "dredge_fast"  # the most accurate and among the cheapest measured (docs/motion_correction.md)
    min_duration_s: float = 120.0
    keep_all_channels: bool = True
    n_jobs: int = 1
    chunk_duration_s: float = 1.0
    seed: int = 0

    def validate(self, where: str = "preprocess.motion") -> None:
        require(self.preset in MOTION_PRESETS, f"{where}.preset",
                f"must be one of {list(MOTION_PRESETS)}; got {self.preset!r}")
        require(self.n_jobs == -1 or self.n_jobs >= 1, f"{where}.n_jobs", f"must be -1 or >= 1; got {self.n_jobs}")
        require(self.chunk_duration_s > 0, f"{where}.chunk_duration_s", f"must be > 0; got {self.chunk_duration_s}")
        require(self.enabled in (True, False, "auto"), f"{where}.enabled",
                f"must be true, false or 'auto'; got {self.enabled!r}")
        require(self.min_duration_s >= 0, f"{where}.min_duration_s", f"must be >= 0; got {self.min_duration_s}")
        missing = self.missing_modules()
        require(not (self.enabled is True and missing), f"{where}.preset",
                f"{self.preset!r} needs the Python module(s) {', '.join(missing)}, not installed here "
                "(pip install them, or choose a preset without them: nonrigid_fast_and_accurate, "
                "nonrigid_accurate or kilosort_like need none)")

    def missing_modules(self) -> list[str]:
        """The modules `preset` needs that are not installed here."""
        return [m for m in _PRESET_MODULES.get(self.preset, ()) if importlib.util.find_spec(m) is None]

    def online_problems(self) -> list[str]:
        """Why this step cannot run on a stream (empty when it can)."""
        if self.enabled is False:
            return []
        return [f"motion correction (enabled={self.enabled!r}, preset {self.preset!r}) estimates the displacement "
                "at each time from the spikes of the whole recording (later ones included): no preset is causal"]

    def applies_to(self, si_recording: Any, labeller_correction: str | None = None) -> tuple[bool, str]:
        """(correct this recording?, why): `enabled`, or for 'auto' its duration and depths and
        whether the labeller corrected motion (`labeller_correction`: the parameter that says
        so, from `labeller_motion_correction`; None: it did not, or it is not known)."""
        if self.enabled != "auto":
            return bool(self.enabled), f"enabled={self.enabled}"
        duration = si_recording.get_total_duration()
        if duration < self.min_duration_s and not labeller_correction:
            return False, f"auto: off, the recording lasts {duration:.4g} s < min_duration_s {self.min_duration_s:g}"
        if not si_recording.has_probe() or np.unique(si_recording.get_channel_locations()[:, 1]).size < 2:
            return False, "auto: off, the channels lie at fewer than two depths (or have no positions)"
        missing = self.missing_modules()
        if missing:
            return False, (f"auto: off, preset {self.preset!r} needs {', '.join(missing)}, not installed here "
                           "(install it, or set preset to nonrigid_fast_and_accurate, which needs nothing more)")
        if duration < self.min_duration_s:
            return True, f"auto: on, the labeller corrected motion ({labeller_correction})"
        return True, f"auto: on ({duration:.4g} s >= min_duration_s {self.min_duration_s:g})"


# The motion-correction defaults of sorters whose SpikeInterface defaults need the sorter installed
# (a run_sorter folder records the full parameters, so these matter only for a labeller named here).
_KNOWN_MOTION_DEFAULTS = {
    "kilosort4": {"nblocks": 1, "do_correction": True},
    "kilosort3": {"nblocks": 5},
    "kilosort2_5": {"nblocks": 5},
}


def labeller_motion_correction(sorter_name: str | None, params: dict | None = None) -> str | None:
    """Whether a SpikeInterface sorter corrects motion itself with these parameters (merged over
    its defaults): the parameter that says so, e.g. 'tridesclous2 apply_motion_correction=True',
    'kilosort4 nblocks=1', or None (it does not, or its parameters do not say)."""
    if not sorter_name:
        return None
    defaults = dict(_KNOWN_MOTION_DEFAULTS.get(sorter_name.lower(), {}))
    try:
        import warnings

        from spikeinterface.sorters import get_default_sorter_params

        with warnings.catch_warnings():  # "Kilosort4 is not installed": its defaults come from its package
            warnings.simplefilter("ignore")
            defaults.update(get_default_sorter_params(sorter_name))
    except Exception:  # an unknown sorter: only the parameters given
        pass
    merged = {**defaults, **(params or {})}
    if merged.get("apply_motion_correction") is True:  # tridesclous2, spykingcircus2
        return f"{sorter_name} apply_motion_correction=True"
    blocks = merged.get("nblocks")
    if sorter_name.lower().startswith("kilosort") and isinstance(blocks, int) and blocks > 0 \
            and merged.get("do_correction", True):  # Kilosort 2.5 / 3 / 4 drift correction
        return f"{sorter_name} nblocks={blocks}"
    return None


def labels_motion_correction(path: str | Path | None) -> str | None:
    """`labeller_motion_correction` of the sorter whose output folder `path` is (a SpikeInterface
    run_sorter folder, or its sorter_output/), read from its spikeinterface_params.json; None
    when there is no such file (a Phy folder, an .npz, a saved sorting) or it says nothing."""
    if path is None:
        return None
    from esort_jax.io.phy import sorter_log

    info = sorter_log(Path(path).expanduser(), "spikeinterface_params.json")
    return labeller_motion_correction(info.get("sorter_name"), info.get("sorter_params"))


def correct_motion(si_recording: Any, config: MotionConfig, *, folder: str | Path | None = None,
                   where: str = "preprocess.motion") -> tuple[Any, dict]:
    """(lazily motion-corrected recording, summary) with SpikeInterface's correct_motion (module
    doc). Needs channel positions; the motion estimate and its plot go to `folder` when given."""
    config.validate(where)
    import spikeinterface.preprocessing as spre

    if not si_recording.has_probe():
        raise ConfigError(f"{where}.enabled: motion correction needs channel positions; this recording has no "
                          "probe attached (attach one, or disable motion correction)")
    options = dict(_PRESET_FIXES.get(config.preset, {}))
    if config.keep_all_channels:
        options["interpolate_motion_kwargs"] = {"border_mode": "force_extrapolate"}
    # threads, not forked processes: JAX may already run in this process
    jobs = dict(n_jobs=config.n_jobs, pool_engine="thread", progress_bar=False,
                chunk_duration=f"{config.chunk_duration_s}s")
    with spikeinterface_jobs(**jobs):  # the noise-level pass inside reads the global settings
        seeded = seeded_noise_levels(si_recording, config.seed)
        corrected, motion, info = spre.correct_motion(
            seeded, preset=config.preset, folder=None, output_motion=True, output_motion_info=True,
            **options, **jobs,
        )
    summary = motion_summary(motion, info, config)
    if folder is not None:
        _save(info, summary, si_recording, Path(folder))
        summary["folder"] = str(Path(folder))
    return corrected, summary


def seeded_noise_levels(si_recording: Any, seed: int) -> Any:
    """A view of `si_recording` (all its channels; the caller's object is left alone) whose
    noise levels -- the ones SpikeInterface's correct_motion reads for its detection threshold,
    `get_noise_levels(recording, return_in_uV=False)` -- are estimated from random chunks drawn
    with `seed`. SpikeInterface caches them as a recording property and correct_motion reuses
    that cache; unseeded, it draws other chunks on every run."""
    from spikeinterface.core import get_noise_levels

    view = si_recording.select_channels(si_recording.channel_ids)
    get_noise_levels(view, return_in_uV=False, force_recompute=True, random_slices_kwargs={"seed": int(seed)})
    return view


def motion_summary(motion: Any, info: dict, config: MotionConfig) -> dict:
    """JSON-able summary of an estimate: preset, peaks used, seconds per step, displacement
    range (µm) and, per spatial window, its centre depth and displacement range."""
    displacement = np.concatenate([np.asarray(d, dtype=np.float64).reshape(-1) for d in motion.displacement])
    return {
        "applied": True,
        "preset": config.preset,
        "rigid": bool(motion.displacement[0].shape[1] == 1),
        "num_peaks": int(len(info["peaks"])),
        "run_times_s": {k: float(v) for k, v in info["run_times"].items()},
        "displacement_um": {"min": float(displacement.min()), "max": float(displacement.max()),
                            "range": float(np.ptp(displacement))},
        "window_centers_um": np.asarray(motion.spatial_bins_um, dtype=float).tolist(),
    }


def _save(info: dict, summary: dict, si_recording: Any, folder: Path) -> None:
    from spikeinterface.preprocessing.motion import save_motion_info

    save_motion_info(info, folder, overwrite=True)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_motion(info, si_recording, folder / "motion.png")


def plot_motion(info: dict, si_recording: Any, path: str | Path) -> Path:
    """SpikeInterface's motion plot (peak depth over time before and after correction, and the
    estimated displacement) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import spikeinterface.widgets as sw

    figure = plt.figure(figsize=(12, 6))
    try:
        sw.plot_motion_info(info, si_recording, figure=figure, backend="matplotlib",
                            scatter_decimate=max(1, len(info["peaks"]) // 20000))
        figure.savefig(path, dpi=90)
    finally:
        plt.close(figure)
    return Path(path)
