"""`pip install <this repository>` into a fresh virtual environment gives a working E-Sort sorter
(`import esort_jax.spikeinterface`, `run_sorter("esort", ...)`), as a SpikeInterface user
would install it. Slow: pip fetches the whole stack (~1.3 GB, ~1.5 min here)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import esort_jax, esort_jax.spikeinterface
    import spikeinterface.sorters as ss
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    recording, truth = generate_ground_truth_recording(durations=[8.0], sampling_frequency=32000.0, num_channels=8,
                                                       num_units=4, seed=2)
    recording = recording.save(folder="recording", n_jobs=1, progress_bar=False)
    sorting = ss.run_sorter("esort", recording, folder="esort", labels=truth, train_seconds=4.0, analyzer=True,
                            export_nwb=True, model=dict(window=20, anchor=9, temporal_features=[4, 8], spatial_features=16),
                            train=dict(epochs=6, batch_size=64))
    performance = compare_sorter_to_ground_truth(truth, sorting, exhaustive_gt=True).get_performance()
    print(json.dumps({"module": esort_jax.__file__, "installed": ss.installed_sorters(),
                      "accuracy": performance["accuracy"].tolist()}))
""")


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_runs_the_sorter(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{REPO}[nwb]"],
                             capture_output=True, text=True, env=env, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, cwd=work,
                         env={**env, "WANDB_MODE": "disabled"}, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["module"].startswith(str(venv)), result["module"]  # the installed copy, not the repository
    assert "esort" in result["installed"]
    assert sum(result["accuracy"]) / len(result["accuracy"]) > 0.8, result
    output = work / "esort" / "sorter_output"
    assert (output / "quality_metrics.csv").is_file() and (output / "report.png").is_file()
    assert (output / "sorting.nwb").is_file()
    native = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / \
        "esort_jax" / "fast" / "native"
    assert (native / "temporal_layers.cc").is_file()  # the kernels' sources ship with the package
    scripts = subprocess.run([str(venv / "bin" / "esort-backbones"), "--help"], capture_output=True, text=True)
    assert scripts.returncode == 0 and "build" in scripts.stdout
