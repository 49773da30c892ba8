"""The CSV writer (esort_jax.report.csv_writer): columns, empty cells, atomic replacement."""

import csv

import pytest

from esort_jax.report.csv_writer import csv_columns, write_csv


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_csv_columns_lead_then_first_seen_order():
    rows = [{"b": 1, "seed": 0}, {"c": 2, "b": 3, "k": 5}]
    assert csv_columns(rows) == ["b", "seed", "c", "k"]
    assert csv_columns(rows, leading=("seed", "k", "arm")) == ["seed", "k", "arm", "b", "c"]


def test_write_csv_header_rows_and_empty_cells(tmp_path):
    path = tmp_path / "out" / "table.csv"  # the folder is created
    rows = [{"seed": 0, "k": 5, "acc": 0.25, "note": "a, b"}, {"seed": 1, "acc": None, "extra": True}]
    columns = write_csv(path, rows)
    assert columns == ["seed", "k", "acc", "note", "extra"]
    assert _read(path) == [columns, ["0", "5", "0.25", "a, b", ""], ["1", "", "", "", "True"]]
    assert path.read_bytes().count(b"\r") == 0 and path.read_bytes().endswith(b"True\n")


def test_given_columns_are_kept_in_order_and_other_keys_left_out(tmp_path):
    path = tmp_path / "c.csv"
    assert write_csv(path, [{"a": 1, "b": 2, "c": 3}], ["c", "a", "missing"]) == ["c", "a", "missing"]
    assert _read(path) == [["c", "a", "missing"], ["3", "1", ""]]


class _Unprintable:
    def __str__(self):
        raise RuntimeError("cannot write this cell")


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "rows.csv"
    write_csv(path, [{"a": 1}])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot write this cell"):
        write_csv(path, [{"a": 2}, {"a": _Unprintable()}])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rows.csv"]
