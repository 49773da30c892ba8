"""Standard preprocessing before sorting, done by SpikeInterface's own preprocessing, lazily.

    si_recording = preprocess(si_recording, PreprocessConfig())          # still lazy
    recording = preprocessed_recording(si_recording, PreprocessConfig())  # our Recording

The chain, in SpikeInterface's recommended order (each step optional):

    phase_shift        Neuropixels ADC multiplexing: align channels sampled at different
                       instants ('auto': when the recording carries `inter_sample_shift`,
                       as SpikeGLX / Open Ephys Neuropixels streams do)
    bandpass_filter    freq_min_hz .. freq_max_hz (default 300 .. 6000 Hz), float32 output
    common_reference   'global' (default) or 'local' median/average reference, or 'none'
    motion             SpikeInterface's correct_motion (off by default; presets rigid_fast,
                       dredge_fast, dredge, nonrigid_accurate, ...): see esort_jax.realdata.motion
    whiten             off by default; the traces are then no longer in µV

Nothing is computed until traces are read (whitening estimates its matrix from random chunks
when it is applied), except the motion estimate, which reads the recording once when the chain
is built; the interpolation itself is lazy.

Online sorting sees the traces block by block: `PreprocessConfig.online_problems()` lists the
steps that need samples from later in the recording than a bounded look-ahead (motion
correction, whitening), `causal` says whether any step looks ahead at all (the zero-phase
band-pass and the phase shift look ahead by their filter margin), and `require_online()`
refuses a config an online sorter cannot apply, naming the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from esort_jax.config import ConfigError, require, to_dict
from esort_jax.realdata.motion import MotionConfig, correct_motion
from esort_jax.recording import Recording

__all__ = ["PreprocessConfig", "MotionConfig", "preprocess", "preprocessed_recording", "as_preprocessed", "as_recording",
           "AS_TRAINED_MODES", "check_as_trained_mode", "preprocess_as_trained", "describe"]

# A recording sorted by a saved network: preprocessed as its training data was, or used as given.
AS_TRAINED_MODES = ("checkpoint", "none")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Which preprocessing steps run, with their settings.

    Attributes:
      enabled: false passes the recording through untouched (e.g. already preprocessed data).
      phase_shift: 'auto' (when the recording has the `inter_sample_shift` channel property),
        'on' (required: an error if the property is missing) or 'off'.
      bandpass: apply the band-pass filter.
      freq_min_hz, freq_max_hz: its pass band (freq_max_hz below the Nyquist frequency).
      common_reference: 'global', 'local' (an annulus of neighbouring channels) or 'none'.
      reference_operator: 'median' or 'average'.
      local_radius_um: inner and outer radius of the annulus for 'local'.
      motion: motion correction (esort_jax.realdata.motion.MotionConfig; off by default), after
        the common reference and before whitening, as SpikeInterface recommends.
      whiten: whiten the channels (SpikeInterface's `whiten`, mode 'global'); off by default.
    """

    enabled: bool = True
    phase_shift: Literal["auto", "on", "off"] = "auto"
    bandpass: bool = True
    freq_min_hz: float = 300.0
    freq_max_hz: float = 6000.0
    common_reference: Literal["global", "local", "none"] = "global"
    reference_operator: Literal["median", "average"] = "median"
    local_radius_um: tuple[float, float] = (30.0, 55.0)
    motion: MotionConfig = MotionConfig()
    whiten: bool = False

    def validate(self, where: str = "preprocess") -> None:
        require(
            self.phase_shift in ("auto", "on", "off"), f"{where}.phase_shift",
            f"must be 'auto', 'on' or 'off'; got {self.phase_shift!r}",
        )
        require(self.freq_min_hz > 0, f"{where}.freq_min_hz", f"must be > 0; got {self.freq_min_hz}")
        require(
            self.freq_max_hz > self.freq_min_hz, f"{where}.freq_max_hz",
            f"must be above freq_min_hz={self.freq_min_hz}; got {self.freq_max_hz}",
        )
        require(
            self.common_reference in ("global", "local", "none"), f"{where}.common_reference",
            f"must be 'global', 'local' or 'none'; got {self.common_reference!r}",
        )
        require(
            self.reference_operator in ("median", "average"), f"{where}.reference_operator",
            f"must be 'median' or 'average'; got {self.reference_operator!r}",
        )
        inner, outer = self.local_radius_um
        require(
            0 <= inner < outer, f"{where}.local_radius_um",
            f"must be [inner, outer] with 0 <= inner < outer; got {list(self.local_radius_um)}",
        )
        self.motion.validate(f"{where}.motion")

    @property
    def causal(self) -> bool:
        """True when no step needs samples after the one it outputs (the band-pass is zero-phase,
        forward-backward, and the phase shift interpolates in the frequency domain: both look
        ahead by their margin)."""
        if not self.enabled:
            return True
        return not (self.bandpass or self.phase_shift != "off" or self.online_problems())

    def online_problems(self) -> list[str]:
        """Why these settings cannot run block by block on a stream with a bounded look-ahead
        (empty when they can)."""
        if not self.enabled:
            return []
        problems = list(self.motion.online_problems())
        if self.whiten:
            problems.append("whiten estimates its matrix from random chunks of the whole recording")
        return problems

    def require_online(self, where: str = "preprocess") -> None:
        """ConfigError naming the key of each step an online sorter cannot apply."""
        if self.online_problems():
            keys = [f"{where}.motion.enabled"] if self.motion.online_problems() else []
            keys += [f"{where}.whiten"] if self.whiten else []
            raise ConfigError(f"{', '.join(keys)}: cannot run online: " + "; ".join(self.online_problems())
                              + " (disable it for online sorting)")


def preprocess(si_recording: Any, config: PreprocessConfig, where: str = "preprocess", *,
               motion_folder: str | Path | None = None, labeller_correction: str | None = None) -> Any:
    """The lazily preprocessed SpikeInterface recording (see the module doc for the chain).
    `labeller_correction`: the labeller corrected motion itself (motion.labeller_motion_correction;
    motion.enabled 'auto' then corrects whatever the recording's length).

    With motion correction, the estimate is saved to `motion_folder` (when given; see
    esort_jax.realdata.motion) and its summary is the recording's annotation 'esort_motion'.
    Errors (ConfigError, naming the key) for settings the recording cannot take: a pass band
    reaching the Nyquist frequency, phase_shift='on' without `inter_sample_shift`, motion
    correction without channel positions.
    """
    config.validate(where)
    if not config.enabled:
        return si_recording
    import spikeinterface.preprocessing as spre

    recording = si_recording
    has_shift = recording.get_property("inter_sample_shift") is not None
    if config.phase_shift == "on" and not has_shift:
        raise ConfigError(
            f"{where}.phase_shift: 'on' needs the channel property 'inter_sample_shift' (set by "
            "read_spikeglx / read_openephys for Neuropixels streams); this recording has none"
        )
    if config.phase_shift == "on" or (config.phase_shift == "auto" and has_shift):
        recording = spre.phase_shift(recording)
    if config.bandpass:
        nyquist = recording.get_sampling_frequency() / 2
        require(
            config.freq_max_hz < nyquist, f"{where}.freq_max_hz",
            f"must be below the Nyquist frequency {nyquist:g} Hz of this recording; got {config.freq_max_hz:g}",
        )
        recording = spre.bandpass_filter(
            recording, freq_min=config.freq_min_hz, freq_max=config.freq_max_hz, dtype="float32"
        )
    if config.common_reference != "none":
        recording = spre.common_reference(
            recording, reference=config.common_reference, operator=config.reference_operator,
            local_radius=tuple(config.local_radius_um),
        )
    correct, why = config.motion.applies_to(recording, labeller_correction)
    if correct:
        recording, motion = correct_motion(recording, config.motion, folder=motion_folder, where=f"{where}.motion")
        motion["why"] = why
    if config.whiten:
        recording = spre.whiten(recording, dtype="float32", mode="global")
    if config.motion.enabled is not False:
        recording.annotate(esort_motion=motion if correct else {"applied": False, "why": why})
    return recording


def preprocessed_recording(si_recording: Any, config: PreprocessConfig, *, segment_index: int | None = None,
                           motion_folder: str | Path | None = None, labeller_correction: str | None = None):
    """Our lazy `Recording` over the preprocessed SpikeInterface recording (metadata:
    'preprocess' the steps, 'preprocess_config' the settings, 'motion' the motion estimate's
    summary when corrected)."""
    si_preprocessed = preprocess(si_recording, config, motion_folder=motion_folder,
                                 labeller_correction=labeller_correction)
    return as_preprocessed(si_preprocessed, config, si_recording, segment_index=segment_index)


def as_preprocessed(si_preprocessed: Any, config: PreprocessConfig, si_recording: Any | None = None, *,
                    segment_index: int | None = None) -> Recording:
    """Our lazy Recording over `si_preprocessed`, a recording `preprocess(si_recording, config)`
    returned, with the metadata `preprocessed_recording` records."""
    from esort_jax.io.spikeinterface import from_spikeinterface_recording

    recording = from_spikeinterface_recording(si_preprocessed, segment_index=segment_index)
    recording.metadata["preprocess"] = describe(config, si_recording)
    motion = si_preprocessed.get_annotation("esort_motion") if config.enabled else None
    if motion is not None:
        recording.metadata["motion"] = motion
    # the settings themselves, so a network trained on this recording can record them in its
    # checkpoint and experiments/sort.py can preprocess a new recording the same way
    recording.metadata["preprocess_config"] = to_dict(config)
    return recording


def describe(config: PreprocessConfig, si_recording: Any | None = None) -> list[str]:
    """The steps that run, as short strings (for results.json and logs)."""
    if not config.enabled:
        return []
    steps = []
    has_shift = si_recording is not None and si_recording.get_property("inter_sample_shift") is not None
    if config.phase_shift == "on" or (config.phase_shift == "auto" and has_shift):
        steps.append("phase_shift")
    if config.bandpass:
        steps.append(f"bandpass_filter {config.freq_min_hz:g}-{config.freq_max_hz:g} Hz")
    if config.common_reference != "none":
        steps.append(f"common_reference {config.common_reference} {config.reference_operator}")
    correct = config.motion.enabled is True or (
        config.motion.enabled == "auto" and si_recording is not None and config.motion.applies_to(si_recording)[0])
    if correct:
        steps.append(f"correct_motion {config.motion.preset}")
    if config.whiten:
        steps.append("whiten global")
    return steps


def as_recording(recording: Any, preprocess: PreprocessConfig | None = None) -> Recording:
    """Our lazy Recording from a SpikeInterface recording or ours, preprocessed when asked."""
    if isinstance(recording, Recording):
        if preprocess is None or not preprocess.enabled:
            return recording
        from esort_jax.io.spikeinterface import to_spikeinterface_recording

        return preprocessed_recording(to_spikeinterface_recording(recording), preprocess)
    from spikeinterface.core import BaseRecording

    if not isinstance(recording, BaseRecording):
        raise TypeError(
            f"recording: expected a SpikeInterface recording or a Recording; got {type(recording).__name__}"
        )
    return preprocessed_recording(recording, preprocess or PreprocessConfig(enabled=False))


def check_as_trained_mode(mode: str, where: str = "preprocess") -> None:
    """ConfigError naming `where` unless `mode` is one of AS_TRAINED_MODES."""
    if mode not in AS_TRAINED_MODES:
        raise ConfigError(f"{where}: must be {' or '.join(map(repr, AS_TRAINED_MODES))}; got {mode!r}")


def preprocess_as_trained(recording: Any, recorded: dict | None, mode: str = "checkpoint",
                          where: str = "checkpoint metadata extra.preprocess") -> Any:
    """`recording` preprocessed as a network's training data was: mode 'checkpoint' applies the
    settings `recorded` with the checkpoint (by esort_from_labels / sort_real; nothing when none
    were recorded, e.g. networks trained on synthesised traces); 'none' returns it as given."""
    from esort_jax.config import from_dict

    check_as_trained_mode(mode)
    if mode == "none" or not recorded:
        return recording
    return as_recording(recording, from_dict(PreprocessConfig, recorded, where=where))
