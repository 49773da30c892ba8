"""The online sorting service: blocks of samples in over ZeroMQ, spikes out within milliseconds.

    python experiments/online.py checkpoint=<finetune run>/checkpoint
    python experiments/replay.py recording.path=rec.h5        # feed it (another shell)

Runs until SIGINT / SIGTERM (or max_seconds), then writes every spike published to
<run folder>/sorting/ (atomically) and results.json. Wire format and faults: esort_jax.online.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from esort_jax import checkpoint as ckpt
from esort_jax.config import ConfigError
from esort_jax.infer import InferenceConfig
from esort_jax.online import OnlineConfig, OnlineSorter
from esort_jax.online.cpu import configure_streaming_cpu
from esort_jax.online.service import ServiceConfig, SortingService, stop_on_signals
from esort_jax.postprocess import PostprocessConfig
from esort_jax.sort import check_fine_tuned
from experiments._common import Run, prepare_process


@hydra.main(version_base=None, config_path="../conf", config_name="online")
def main(cfg: DictConfig) -> dict:
    cpu = configure_streaming_cpu(**OmegaConf.to_container(cfg.streaming_cpu))  # before JAX computes anything
    with Run(cfg, "online") as run:
        run.results["streaming_cpu"] = cpu
        service_config = run.typed(ServiceConfig, "service")
        checkpoint = Path(str(cfg.checkpoint)).expanduser()
        if not ckpt.is_checkpoint(checkpoint):
            raise ConfigError(f"checkpoint: {checkpoint} is not a checkpoint folder (no metadata.json)")
        check_fine_tuned(ckpt.read_metadata(checkpoint), f"checkpoint: {checkpoint}")  # not a pretrained network
        with run.stage("load model"):
            sorter = OnlineSorter.from_checkpoint(
                checkpoint, threshold=cfg.get("threshold"), preprocess=str(cfg.preprocess),
                infer=run.typed(InferenceConfig, "infer"), postprocess=run.typed(PostprocessConfig, "postprocess"),
                config=run.typed(OnlineConfig, "online"), gain_to_uv=float(cfg.gain_to_uv),
            )
        with run.stage("warm up"):
            run.results["warm_up"] = sorter.warm_up()
        service = SortingService(sorter, service_config, run.dir)
        with stop_on_signals() as stop, run.stage("serve"):
            print(f"[online] serving {service_config.input_endpoint} -> {service_config.output_endpoint}", flush=True)
            summary = service.run(stop, max_seconds=cfg.get("max_seconds"))
        run.results.update(checkpoint=str(checkpoint), threshold=sorter.threshold, final_after=sorter.final_after,
                           preprocess=str(sorter.preprocess), **summary)
        print(f"[online] {summary['spikes']} spikes from {summary['blocks']} blocks -> {summary['sorting']}")
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
