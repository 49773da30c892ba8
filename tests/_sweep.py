"""A fabricated Hydra multirun folder (results.json per job, no training) for the summariser's
tests (tests/test_summarize.py, tests/test_report_results.py)."""

import json
from pathlib import Path

MODES = ["none", "slow", "fast"]


def fake_sweep(root: Path, seeds=(0,), fail=None) -> dict:
    """A Hydra-like multirun folder: jobs 0..N with results.json and .hydra/overrides.yaml.
    transfer.accuracy_pooled = 0.9 - 0.1 * source index - 0.2 * target index + 0.01 * seed."""
    expected = {}
    job = 0
    for si, source in enumerate(MODES):
        for ti, target in enumerate(MODES):
            for seed in seeds:
                folder = root / str(job)
                (folder / ".hydra").mkdir(parents=True)
                overrides = [f"source.data.drift.mode={source}", f"target.data.drift.mode={target}", f"seed={seed}"]
                (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
                accuracy = 0.9 - 0.1 * si - 0.2 * ti + 0.01 * seed
                status = "failed" if fail == (source, target) else "ok"
                results = {
                    "experiment": "transfer", "status": status, "k": 10,
                    "transfer": {"accuracy_pooled": accuracy, "per_unit": {"accuracy": [0.5] * 40}},
                    "scratch": {"accuracy_pooled": accuracy - 0.15},
                    "seconds": {"total": 1.0},
                    "config": {"seed": seed, "k": 10, "thresholds": [0.5, 1.0],
                               "source": {"data": {"drift": {"mode": source}}},
                               "target": {"data": {"drift": {"mode": target}}}},
                }
                if status == "failed":
                    results = {k: v for k, v in results.items() if k not in ("transfer", "scratch")}
                    results["error"] = "ValueError: boom"
                (folder / "results.json").write_text(json.dumps(results))
                expected.setdefault((source, target), []).append(accuracy)
                job += 1
    # Hydra also writes multirun.yaml at the top; the summariser must ignore other files.
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return expected
