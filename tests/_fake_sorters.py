"""Run an entry point with SpikeInterface's sorters faked, so experiments/baselines.py runs end to
end without the sorter stack (`make baselines-venv`):

    python tests/_fake_sorters.py experiments/baselines.py sorters=[tridesclous2,spykingcircus2] ...

'tridesclous2' "finds" one unit firing every 10 ms of the span it is given (its log says it ran
for 5 s); 'spykingcircus2' crashes. Everything around the sorter (spans, run_baseline, scoring,
the comparison) is the real code.
"""

import json
import runpy
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_sorter(name, si_recording, folder, **kwargs):
    from spikeinterface.core import NumpySorting

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if name == "spykingcircus2":
        raise RuntimeError("Spike sorting failed.\nfake crash")
    (folder / "spikeinterface_log.json").write_text(json.dumps({"run_time": 5.0}))
    fs = si_recording.sampling_frequency
    samples = np.arange(0, si_recording.get_num_samples(), int(fs / 100))
    return NumpySorting.from_samples_and_labels([samples], [np.zeros(samples.size, int)], fs, unit_ids=[7])


def install() -> None:
    """Replace the sorters' installation check, parameters, version and run."""
    import spikeinterface.sorters as ss

    from esort_jax.realdata import baselines

    baselines.require_installed = lambda name: None
    baselines.sorter_version = lambda name: "fake-1"
    ss.get_default_sorter_params = lambda name: {"torch_device": "auto"}
    ss.run_sorter = run_sorter


if __name__ == "__main__":
    install()
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
