"""Reading results back (esort_jax.report.results): flattening, job order, lookup, columns,
pivots, on fabricated sweep folders (no training)."""

import json
import math

import pytest

from esort_jax.report.results import Pivot, columns_of, find_results, flatten, load_rows, lookup, pivot
from esort_jax.report.tables import format_pivot
from tests._sweep import MODES, fake_sweep


def test_flatten_keeps_short_scalar_lists_only():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "rows": [{"x": 1}], "long": list(range(100)), "s": "t"})
    assert flat == {"a.b": 1, "a.c": "[1, 2]", "s": "t"}


def test_load_rows_in_job_order_with_overrides(tmp_path):
    fake_sweep(tmp_path, seeds=(0, 1))  # 18 jobs: "10" must come after "9", not after "1"
    (tmp_path / "3").rename(tmp_path / "x")  # non-numeric folder names come last
    rows = load_rows(tmp_path)
    assert [r["job"] for r in rows] == [str(i) for i in range(18) if i != 3] + ["x"]
    assert rows[0]["overrides"] == "source.data.drift.mode=none target.data.drift.mode=none seed=0"
    assert rows[7]["transfer.accuracy_pooled"] == pytest.approx(0.9 - 0.1 - 0.2)  # job 8: slow, slow, seed 0
    assert "transfer.per_unit.accuracy" not in rows[0]  # 40-entry list dropped
    assert rows[0]["config.thresholds"] == "[0.5, 1.0]"
    assert lookup(rows[6], "source.data.drift.mode") == "slow"  # found under config.
    assert lookup(rows[6], "nope") is None


def test_pivot_means_over_seeds_and_marks_missing(tmp_path):
    expected = fake_sweep(tmp_path, seeds=(0, 1, 2), fail=("fast", "fast"))
    rows = load_rows(tmp_path)
    table = pivot(rows, "source.data.drift.mode", "target.data.drift.mode", "transfer.accuracy_pooled")
    assert table.row_values == MODES and table.col_values == MODES
    for i, source in enumerate(MODES):
        for j, target in enumerate(MODES):
            if (source, target) == ("fast", "fast"):
                assert math.isnan(table.values[i][j]) and table.counts[i][j] == 0
            else:
                assert table.values[i][j] == pytest.approx(sum(expected[source, target]) / 3)
                assert table.counts[i][j] == 3
    text = format_pivot(table)
    assert "n=3" in text and "source.data.drift.mode \\ target.data.drift.mode" in text
    assert text.splitlines()[-1].split()[-1] == "-"
    single = pivot(rows, "target.data.drift.mode", None, "scratch.accuracy_pooled")
    assert single.col_values == ["scratch.accuracy_pooled"] and len(single.values) == 3


def test_find_results_orders_jobs_numerically_and_accepts_a_file(tmp_path):
    for job in ("10", "2", "b", "a"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "results.json").write_text("{}")
    (tmp_path / "2" / "other.json").write_text("{}")
    assert [p.parent.name for p in find_results(tmp_path)] == ["2", "10", "a", "b"]
    single = tmp_path / "a" / "results.json"
    assert find_results(single) == [single]


def test_an_unreadable_results_file_is_a_row_with_its_status(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text("{not json")
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "ok", "a": {"b": 2}}))
    rows = load_rows(tmp_path)
    assert rows[0]["job"] == "0" and rows[0]["status"].startswith("unreadable: ")
    assert rows[1] == {"job": "1", "overrides": "", "status": "ok", "a.b": 2}


def test_columns_of_puts_identity_first_and_config_last():
    rows = [{"config.seed": 0, "transfer.accuracy_pooled": 0.5, "job": "0"},
            {"overrides": "seed=1", "status": "ok", "scratch.accuracy_pooled": 0.4, "config.k": 5}]
    assert columns_of(rows) == ["job", "status", "overrides", "transfer.accuracy_pooled",
                                "scratch.accuracy_pooled", "config.seed", "config.k"]


def test_pivot_sorts_numeric_axes_and_skips_non_numbers():
    rows = [{"config.k": 10, "m": 0.5}, {"config.k": 2, "m": "n/a"}, {"config.k": 2, "m": 0.25},
            {"config.k": 2, "m": True}, {"config.k": 10, "m": 0.7}]
    table = pivot(rows, "k", None, "m")
    assert table.row_values == [2, 10] and table.col_values == ["m"]
    assert table.values[0] == [0.25] and table.values[1][0] == pytest.approx(0.6)
    assert table.counts == [[1], [2]]
    empty = Pivot("k", None, "m", [1], ["m"], [[math.nan]], [[0]])
    assert empty.to_dict()["values"] == [[None]]
    assert pivot(rows, "k", None, "m").to_dict() == {
        "rows": "k", "cols": None, "metric": "m", "row_values": [2, 10], "col_values": ["m"],
        "values": [[0.25], [pytest.approx(0.6)]], "counts": [[1], [2]],
    }


def test_older_metric_names_are_read_as_todays(tmp_path):
    import json

    from esort_jax.report.results import current_metric_names, load_rows

    old = {"experiment": "transfer", "status": "ok",
           "transfer": {"accuracy_pooled": 0.9, "precision": 0.95, "recall": 0.94, "window_precision": 0.5},
           "other": {"precision": 1.0}}  # not a spike-level metrics dict: left alone
    new = current_metric_names(old)
    assert new["transfer"] == {"accuracy_pooled": 0.9, "precision_pooled": 0.95, "recall_pooled": 0.94,
                               "window_precision": 0.5}
    assert new["other"] == {"precision": 1.0}
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps(old))
    row = load_rows(tmp_path)[0]
    assert row["transfer.precision_pooled"] == 0.95 and "transfer.precision" not in row
