"""An Open Ephys binary-format recording written from int16 traces: `<session>/Record Node 101/
experiment1/recording1/structure.oebin` + `continuous/<stream>/continuous.dat`, with a settings.xml
that describes no probe (as for headstages Open Ephys knows no geometry of)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BIT_VOLTS = 0.195  # µV per bit (Intan headstages, Neuropixels AP in Open Ephys)


def write_openephys_binary(folder, traces_int16: np.ndarray, fs: float = 30000.0,
                           stream: str = "Acquisition_Board-100.Rhythm Data") -> Path:
    """Write `traces_int16` [T, C] as one continuous stream; returns the session folder."""
    traces_int16 = np.asarray(traces_int16, np.int16)
    num_samples, num_channels = traces_int16.shape
    session = Path(folder)
    recording = session / "Record Node 101" / "experiment1" / "recording1"
    data = recording / "continuous" / stream
    data.mkdir(parents=True, exist_ok=True)
    traces_int16.tofile(data / "continuous.dat")
    np.save(data / "sample_numbers.npy", np.arange(num_samples, dtype=np.int64))
    np.save(data / "timestamps.npy", np.arange(num_samples) / fs)
    processor = stream.split(".")[0]
    structure = {
        "GUI version": "0.6.4",
        "continuous": [{
            "folder_name": stream + "/", "sample_rate": fs, "source_processor_name": processor,
            "source_processor_id": 100, "stream_name": stream.split(".", 1)[1], "recorded_processor": processor,
            "recorded_processor_id": 100, "num_channels": num_channels,
            "channels": [{"channel_name": f"CH{i + 1}", "description": "", "identifier": "", "history": "",
                          "bit_volts": BIT_VOLTS, "units": "uV"} for i in range(num_channels)],
        }],
        "events": [], "spikes": [],
    }
    (recording / "structure.oebin").write_text(json.dumps(structure))
    (session / "Record Node 101" / "settings.xml").write_text("<SETTINGS><INFO><VERSION>0.6.4</VERSION></INFO></SETTINGS>")
    return session
