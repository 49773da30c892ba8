"""Every notebook executes end to end (nbclient) on tiny results made here, so none can rot.

One tiny transfer run and one tiny label-efficiency run (sharing the data and the pretrained
checkpoint through one cache), plus a fabricated 2-job sweep; each notebook is pointed at its
input through its environment variable.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TINY = [
    "data@target.data=tiny", "data@source.data=tiny", "model=small",
    "train@pretrain.train=tiny", "train@finetune.train=tiny", "logger=disabled",
]


def _run(script, *overrides):
    # Tiny shapes: XLA compile time dominates, so compile without most optimisations.
    env = {**os.environ, "WANDB_MODE": "disabled", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *overrides],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _fake_sweep(root: Path) -> Path:
    for job, (source, accuracy) in enumerate([("none", 0.8), ("slow", 0.7)]):
        folder = root / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=drift_ablation\n- source.data.drift.mode={source}\n- target.data.drift.mode=slow\n"
        )
        results = {
            "experiment": "transfer", "status": "ok", "k": 10,
            "transfer": {"accuracy_pooled": accuracy}, "scratch": {"accuracy_pooled": accuracy - 0.2},
            "config": {"source": {"data": {"drift": {"mode": source}}}, "target": {"data": {"drift": {"mode": "slow"}}}},
        }
        (folder / "results.json").write_text(json.dumps(results))
    return root


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook_inputs")
    cache = f"cache_dir={root / 'cache'}"
    _run("transfer.py", *TINY, "k=3", cache, f"hydra.run.dir={root / 'transfer'}")
    # seed 0 again: the same target, source and pretrained checkpoint, from the cache
    _run("label_efficiency.py", *TINY, "ks=[1,3]", "seeds=[0]", cache, f"hydra.run.dir={root / 'label_efficiency'}")
    return {
        "ESORT_TRANSFER_RUN": str(root / "transfer"),
        "ESORT_LABEL_EFFICIENCY_RUN": str(root / "label_efficiency"),
        "ESORT_SWEEP": str(_fake_sweep(root / "sweep")),
    }


def test_every_notebook_is_tested():
    assert {p.name for p in NOTEBOOKS} == {"label_efficiency.ipynb", "drift_ablation.ipynb", "inspect_sorting.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tiny_results, monkeypatch):
    for key, value in tiny_results.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    assert "parameters" in nb.cells[1].metadata.get("tags", []), "first code cell holds the parameters"
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{path.name} drew {len(images)} figures"
