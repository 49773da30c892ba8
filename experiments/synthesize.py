"""Synthesise a Neuropixels-like recording with ground truth into the run folder.

    python experiments/synthesize.py data=np1_slow seed=1
    python experiments/synthesize.py --multirun data=small64 data.drift.mode=none,slow seed=0,1

Writes <run folder>/recording/ (esort_jax recording folder: traces.npy, probe.json,
channels.npz, ground_truth.npz, metadata.json; esort_jax.io.read_recording_folder reads it) and
<run folder>/results.json (a summary: units, spikes, amplitudes, drift; the folder; the real-time factor).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from data_gen import SynthesisConfig, synthesize
from esort_jax.io import write_recording_folder
from esort_jax.report.summary import recording_summary, unit_table_text
from experiments._common import Run, prepare_process


@hydra.main(version_base=None, config_path="../conf", config_name="synthesize")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "synthesize") as run:
        data = run.typed(SynthesisConfig, "data")
        with run.stage("build"):
            recording, truth = synthesize(data)
        with run.stage("write"):
            recording.traces.read_ahead = True
            folder = write_recording_folder(
                run.dir / "recording",
                recording,
                truth,
                metadata={"seed": data.seed, "synthesis_config": recording.metadata["config"]},
                chunk_samples=int(cfg.chunk_samples),
                dtype=str(cfg.dtype),
                gain_to_uv=float(cfg.gain_to_uv),
                progress=True,
                # Run checked the folder: a failed run of this entry point, or overwrite=true
                overwrite=True,
            )
        summary = recording_summary(recording, truth)
        run.results.update(summary=summary, recording_path=str(folder))
        run.results["realtime_factor"] = recording.duration_s / (
            run.seconds["build"] + run.seconds["write"]
        )
        print(unit_table_text(truth))
        print(
            f"{summary['num_units']} units, {summary['num_spikes']} spikes, {summary['num_channels']} channels, "
            f"{summary['duration_s']:.1f} s, drift {summary['drift_min_um']:.1f}..{summary['drift_max_um']:.1f} µm "
            f"-> {folder}"
        )
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
