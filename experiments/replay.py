"""Stream a recording to the online service at real-time pace (or as fast as possible).

    python experiments/replay.py recording.path=/data/rec.h5 replay.block_ms=2
    python experiments/replay.py replay.realtime=false           # a synthesised recording, flat out

Reads conf/online.yaml (the service's endpoints); waits for the service to be up first.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from esort_jax.online.replay import ReplayConfig, replay, wait_for_service
from esort_jax.online.service import ServiceConfig
from experiments._common import Run, prepare_process
from experiments._data import obtain_recording


@hydra.main(version_base=None, config_path="../conf", config_name="online")
def main(cfg: DictConfig) -> dict:
    with Run(cfg, "replay") as run:
        config = run.typed(ReplayConfig, "replay")
        service = run.typed(ServiceConfig, "service")
        recording, _, info = obtain_recording(run, "recording")
        if float(cfg.wait_for_service_s) > 0:
            with run.stage("wait for service"):
                wait_for_service(service.output_endpoint, float(cfg.wait_for_service_s))
        with run.stage("replay"):
            summary = replay(recording, service.input_endpoint, config, confirm_endpoint=service.output_endpoint)
        run.results.update(recording=info, **summary)
        print(f"[replay] {summary['blocks']} blocks, {summary['samples']} samples (confirmed: {summary['confirmed']}); "
              f"sends late by {summary['send_late_ms_p50']:.2f} ms (p50), {summary['send_late_ms_max']:.2f} ms (max)")
    return run.results


if __name__ == "__main__":
    prepare_process()
    main()
