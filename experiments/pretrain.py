"""Pretrain the E-Sort network on a source recording (all its labelled spikes).

    python experiments/pretrain.py [data@source.data=np1_pretrain] [train=paper] [seed=1]
    python experiments/pretrain.py distributed.mode=auto hydra.run.dir=runs/pre   # on every host

Under jax.distributed (`distributed.mode`, docs/clusters.md) every process runs this same
command with the same hydra.run.dir: the global batch is sharded over all their devices and
process 0 writes the checkpoints and results.json.

Writes <run folder>/checkpoint (the final network, loadable with esort_jax.checkpoint.load_model
and usable as `checkpoint=` of finetune.py / sort.py), per-epoch checkpoints under
<run folder>/train/checkpoints (an interrupted run resumes when started again with the same
hydra.run.dir), and results.json with the per-epoch window metrics.
"""

from __future__ import annotations

import shutil

import hydra
from omegaconf import DictConfig

from esort_jax.config import ConfigError
from esort_jax.io.atomic import atomic_folder
from esort_jax.pipeline import fit
from esort_jax.runtime.distributed import barrier, is_primary
from experiments._common import Run, prepare_process
from experiments._data import obtain_recording
from experiments._stages import epoch_logger


@hydra.main(version_base=None, config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "pretrain") as run:
        config = run.pipeline_config()  # transfer: none, init scratch
        source, labels, info = obtain_recording(run, "source")
        if labels is None:
            raise ConfigError(f"source.path: {info.get('path')} has no spike labels to pretrain on")
        with run.stage("pretrain"):
            fitted = fit(source, labels, config, seed=int(cfg.seed), run_dir=run.dir / "train",
                         callback=epoch_logger(run, "pretrain"), metadata_extra={"role": "pretrain", "data": info})
        final = run.dir / "checkpoint"
        if is_primary():  # of several processes (distributed.mode), process 0 writes
            with atomic_folder(final, overwrite=True) as tmp:
                shutil.copytree(fitted.train_result.checkpoint, tmp, dirs_exist_ok=True)
        barrier("final checkpoint")
        run.results.update(
            checkpoint=str(final),
            source=info,
            num_units=fitted.windows.num_units,
            num_channels=source.num_channels,
            train_windows=len(fitted.windows.train),
            validation_windows=len(fitted.windows.validation),
            epochs_completed=fitted.train_result.epochs_completed,
            resumed_from=str(fitted.train_result.resumed_from) if fitted.train_result.resumed_from else None,
            history=fitted.train_result.history,
            final={k: v for k, v in (fitted.train_result.history or [{}])[-1].items() if isinstance(v, (int, float))},
        )
        print(f"[pretrain] checkpoint: {final}")
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
