"""A SpikeGLX Neuropixels 1.0 AP stream written from int16 traces, as SpikeGLX lays it out
(`<run>_g0/<run>_g0_imec0/<run>_g0_t0.imec0.ap.{bin,meta}`, 384 channels + the sync channel),
with the .meta keys that neo's SpikeGLX reader and probeinterface's `read_spikeglx` use.
The geometry comes from the imro table (bank 0: the first 384 sites of the NP1 checkerboard)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NP1_UV_PER_BIT = 0.6 / 512 / 500 * 1e6  # imAiRangeMax / 512 / AP gain 500, in µV: 2.34375


def write_spikeglx_np1(folder, traces_int16: np.ndarray, fs: float = 30000.0, run: str = "sim_g0") -> Path:
    """Write `traces_int16` [T, 384] as run `run` in `folder`; returns the probe folder."""
    traces_int16 = np.asarray(traces_int16, np.int16)
    num_samples, num_channels = traces_int16.shape
    if num_channels != 384:
        raise ValueError(f"a Neuropixels 1.0 AP stream has 384 channels; got {num_channels}")
    probe_dir = Path(folder) / f"{run}_imec0"
    probe_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{run}_t0.imec0.ap"
    data = np.concatenate([traces_int16, np.zeros((num_samples, 1), np.int16)], axis=1)  # + sync
    (probe_dir / f"{stem}.bin").write_bytes(data.tobytes())
    meta = {
        "acqApLfSy": "384,384,1", "appVersion": "20230905", "fileCreateTime": "2026-01-01T00:00:00",
        "fileName": str(probe_dir / f"{stem}.bin"), "fileSizeBytes": str(data.nbytes),
        "fileTimeSecs": f"{num_samples / fs:.6f}", "firstSample": "0", "imAiRangeMax": "0.6",
        "imAiRangeMin": "-0.6", "imMaxInt": "512", "imDatPrb_pn": "PRB_1_4_0480_1", "imDatPrb_type": "0",
        "imDatPrb_slot": "2", "imDatPrb_port": "1", "imDatPrb_dock": "1", "imDatPrb_sn": "1234567890",
        "imSampRate": f"{fs}", "nSavedChans": "385", "snsApLfSy": "384,0,1", "snsSaveChanSubset": "0:383,768",
        "typeThis": "imec", "typeImEnabled": "1", "typeNiEnabled": "0", "typeObEnabled": "0",
        # (channel bank reference ap-gain lf-gain ap-highpass) per channel
        "~imroTbl": "(0,384)" + "".join(f"({c} 0 0 500 250 1)" for c in range(384)),
        "~snsChanMap": "(384,384,1)" + "".join(f"(AP{c};{c}:{c})" for c in range(384)) + "(SY0;384:384)",
        "~snsShankMap": "(1,2,480)" + "".join(f"(0:{c % 2}:{c // 2}:1)" for c in range(384)),
    }
    (probe_dir / f"{stem}.meta").write_text("".join(f"{key}={value}\n" for key, value in meta.items()))
    return probe_dir
