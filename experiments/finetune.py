"""Fine-tune on a target with K labelled spikes per unit (transfer or scratch), sort its
held-out part and score it against the target's ground truth.

    python experiments/finetune.py checkpoint=<pretrain run>/checkpoint k=5
    python experiments/finetune.py init=scratch k=5 seed=2
    python experiments/finetune.py checkpoint=<pretrain run>/checkpoint transfer.freeze=temporal
    python experiments/finetune.py target.path=rec.h5 labels=labels.npz checkpoint=...
    python experiments/finetune.py checkpoint=... 'causal_preprocess={}'   # for online.py on raw streams

With `causal_preprocess` set, the target is first preprocessed by the online sorter's causal
filter (esort_jax.online.causal; settings recorded in the checkpoint), so that online.py and
sort.py apply the same filter to raw traces. The network trains on the target's ground truth, or on `labels` (an .npz written by
esort_jax.io.write_sorting_npz, or a SpikeInterface sorting folder); it is scored against the
ground truth either way (to sort a recording without one, use sort.py).

Writes into the run folder: checkpoint/ (the fine-tuned network, with the threshold chosen on
the training region in sorting_defaults.json: sort.py's input), <init>/train/ (training
checkpoints), <init>/sorting.npz (the spikes found in the held-out part) and results.json
(target; under <init>, the arm's spike and window metrics, threshold and training summary).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig

from esort_jax.config import ConfigError, to_dict
from esort_jax.realdata.labeller import load_labels
from esort_jax.io.atomic import atomic_folder, write_json
from esort_jax.runtime.distributed import barrier, is_primary
from esort_jax.sort import SORTING_DEFAULTS
from esort_jax.report.tables import evaluation_table
from experiments._common import Run, objective, prepare_process
from experiments._data import obtain_recording
from experiments._stages import run_arm


def _labels(path: str):
    """Spike labels from a .npz sorting, a SpikeInterface sorting folder (read from its JSON
    description: no pickles), a Phy folder or a recording folder's ground truth."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"labels: {path} does not exist")
    return load_labels(path).sorting


def _write_network(final: Path, checkpoint: str, outcome, config) -> None:
    """The fine-tuned network at `final`, with the threshold chosen on the training region
    (sorting_defaults.json: it travels with the network to sort.py)."""
    with atomic_folder(final, overwrite=True) as tmp:
        shutil.copytree(checkpoint, tmp, dirs_exist_ok=True)
        write_json(tmp / SORTING_DEFAULTS, {
            "threshold": outcome.threshold,
            "postprocess": to_dict(config.postprocess),
            "threshold_curve": outcome.threshold_curve,
        })


def _causal_config(settings):
    """The CausalPreprocessConfig of the `causal_preprocess` key (null: none), checked up front."""
    if settings is None:
        return None
    from omegaconf import OmegaConf

    from esort_jax.config import from_dict
    from esort_jax.online.causal import CausalPreprocessConfig

    mapping = OmegaConf.to_container(settings, resolve=True) if OmegaConf.is_config(settings) else settings
    config = from_dict(CausalPreprocessConfig, mapping, where="causal_preprocess")
    config.validate()
    return config


def _causal(target, config):
    """The target through the online sorter's causal preprocessing (config None: as it is), and
    what the checkpoint records of it."""
    if config is None:
        return target, {}
    from esort_jax.online.causal import causal_preprocess, checkpoint_extra

    target = causal_preprocess(target, config)
    return target, checkpoint_extra(target)


@hydra.main(version_base=None, config_path="../conf", config_name="finetune")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "finetune") as run:
        config = run.pipeline_config(init=str(cfg.init), checkpoint=str(cfg.checkpoint) if cfg.checkpoint else None)
        transfer = config.transfer
        if transfer.init == "transfer" and not Path(transfer.checkpoint).expanduser().is_dir():
            raise ConfigError(f"checkpoint: {transfer.checkpoint} is not a checkpoint folder")
        causal = _causal_config(cfg.get("causal_preprocess"))
        target, truth, info = obtain_recording(run, "target")
        target, extra = _causal(target, causal)
        labels = _labels(str(cfg.labels)) if cfg.get("labels") else truth
        if labels is None:
            raise ConfigError(f"labels: {info.get('path')} has no ground truth; give labels=<file>")
        if truth is None:
            raise ConfigError(
                f"target.path: {info.get('path')} has no ground truth to score against "
                "(to sort a recording without ground truth use experiments/sort.py)"
            )
        metrics, outcome = run_arm(run, transfer.init, target, truth, config, seed=int(cfg.seed), labels=labels,
                                   metadata_extra=extra)
        final = run.dir / "checkpoint"
        if is_primary():  # of several processes (distributed.mode), process 0 writes
            _write_network(final, metrics["checkpoint"], outcome, config)
        barrier("final checkpoint")
        metrics["checkpoint"] = str(final)
        run.results.update(target=info, **{transfer.init: metrics})
        print(evaluation_table(outcome.evaluation))
    return objective(cfg, run.results)


if __name__ == "__main__":
    prepare_process()
    main()
