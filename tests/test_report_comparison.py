"""esort_jax.report.comparison: E-Sort beside conventional sorters on fabricated rows: the K each
arm needs to reach a sorter's accuracy (and the ratio), speed per second of data, the table, the
CSV, and the results.json entries and text a comparison run writes."""

import pytest

from esort_jax.report import comparison
from tests._comparison import esort_row, fake_rows


def test_method_row_keeps_identity_and_every_metric_key():
    row = comparison.method_row("tridesclous2", "sorter", {"accuracy_pooled": 0.9, "unknown_metric": 1})
    assert list(row) == list(comparison.ROW_COLUMNS)
    assert row["status"] == "ok" and row["arm"] is None and row["k"] is None
    assert row["accuracy_pooled"] == 0.9 and row["sort_seconds"] is None and "unknown_metric" not in row
    failed = comparison.method_row("kilosort4", "sorter", {"status": "failed", "error": "no GPU"})
    assert failed["status"] == "failed" and failed["error"] == "no GPU"
    assert esort_row("scratch", 5, 0.5)["arm"] == "scratch" and esort_row("scratch", 5, 0.5)["k"] == 5
    with pytest.raises(ValueError, match="kind must be 'sorter' or 'esort'; got 'baseline'"):
        comparison.method_row("x", "baseline", {})


def test_k_to_reach_interpolates_in_log_k_and_gives_the_ratio():
    rows = fake_rows()
    reach = comparison.k_to_reach_level(rows, 0.8)
    k_transfer = 5 * 2 ** (2 / 3)          # 0.8 lies 2/3 of the way from 0.70 (K=5) to 0.85 (K=10)
    k_scratch = 10 * 1.5 ** (2 / 3)        # and 2/3 of the way from 0.70 (K=10) to 0.85 (K=15)
    assert reach["transfer"] == {"k": pytest.approx(k_transfer), "status": "interpolated"}
    assert reach["scratch"] == {"k": pytest.approx(k_scratch), "status": "interpolated"}
    assert reach["ratio"] == pytest.approx(k_scratch / k_transfer) and reach["bound"] == "exact"
    assert "scratch / transfer = 1.65x" in reach["text"]

    never = comparison.k_to_reach_level(rows, 0.88)  # scratch tops out at 0.85
    assert never["scratch"]["status"] == "never" and never["ratio"] is None
    assert never["ratio_lower_bound"] == pytest.approx(15 / never["transfer"]["k"])
    assert "scratch needs K > 15 (never" in never["text"]
    first = comparison.k_to_reach_level(rows, 0.6)   # transfer is there at K=5 already
    assert first["transfer"]["status"] == "first" and first["bound"] == "lower"
    assert "transfer needs K <= 5 (already at the smallest K)" in first["text"] and "scratch / transfer >= " in first["text"]
    only_transfer = comparison.k_to_reach_level([r for r in rows if r["arm"] != "scratch"], 0.8)
    assert only_transfer["scratch"] == {"k": None, "status": "missing"} and only_transfer["ratio"] is None
    with pytest.raises(ValueError, match="metric must be one of"):
        comparison.k_to_reach_level(rows, 0.8, metric="precision")


def test_the_reach_can_be_read_against_the_labels_each_k_actually_used():
    used = {5: 300, 10: 1000, 15: 1500}  # complete-span prefixes hold more labels than K x units
    rows = [dict(r, labels_used_spikes=used[r["k"]]) if r["kind"] == "esort" else r for r in fake_rows()]
    reach = comparison.k_to_reach_level(rows, 0.8, axis="labels_used_spikes")
    x_transfer = 300 * (1000 / 300) ** (2 / 3)  # 2/3 of the way from 0.70 to 0.85, in log labels
    x_scratch = 1000 * 1.5 ** (2 / 3)
    assert reach["axis"] == "labels_used_spikes" and reach["bound"] == "exact"
    assert reach["transfer"]["k"] == pytest.approx(x_transfer) and reach["scratch"]["k"] == pytest.approx(x_scratch)
    assert reach["ratio"] == pytest.approx(x_scratch / x_transfer)
    assert reach["ratio"] != pytest.approx(comparison.k_to_reach_level(rows, 0.8)["ratio"])  # not the K ratio
    assert "transfer needs labelled spikes used 669.4" in reach["text"]
    summary = comparison.comparison_summary(rows, {"kilosort4": {"status": "ok", "accuracy_pooled": 0.8}},
                                            "accuracy_pooled", "kilosort4")
    assert summary["label_reduction_vs_reference_by"]["labels_used_spikes"] == pytest.approx(reach["ratio"])
    assert summary["label_reduction_vs_reference_by"]["labelled_seconds"] is None  # not recorded
    assert "labelled_seconds is not recorded for K = 5" in summary["labels_to_reach"]["labelled_seconds"]["kilosort4"]["text"]
    assert "against labels_used_spikes at kilosort4's" in comparison.comparison_text(summary)
    flat = [dict(r, labels_used_spikes=100) if r["kind"] == "esort" else r for r in fake_rows()]
    assert "not positive and increasing" in comparison.k_to_reach_level(flat, 0.8, axis="labels_used_spikes")["text"]
    with pytest.raises(ValueError, match="axis must be"):
        comparison.k_to_reach_level(rows, 0.8, axis="seconds")


def test_label_reach_for_each_sorter_that_scored():
    rows = fake_rows()
    sorters = {"kilosort4": {"status": "ok", "accuracy_pooled": 0.8}, "spykingcircus2": {"status": "failed"},
               "tridesclous2": {"status": "ok", "accuracy_pooled": float("nan")}}
    reach = comparison.label_reach(rows, sorters, "accuracy_pooled")
    assert list(reach) == ["kilosort4"] and reach["kilosort4"] == comparison.k_to_reach_level(rows, 0.8)
    assert comparison.label_reach(rows, sorters, "accuracy_mean") == {}


def test_speed_ratios_compare_seconds_per_second_of_data():
    rows = fake_rows()
    assert comparison.esort_seconds_per_data_second(rows) == pytest.approx(2.0 / 15.0)  # median of 1.5, 2, 2.5, ...
    ratios = comparison.speed_ratios(rows)
    assert ratios["kilosort4"] == pytest.approx((300 / 15) / (2 / 15))     # 150x
    assert ratios["tridesclous2"] == pytest.approx((120 / 30) / (2 / 15))  # full span: per second of data
    assert ratios["spykingcircus2"] is None
    assert comparison.speed_ratios([r for r in rows if r["kind"] == "sorter"])["kilosort4"] is None


def test_comparison_table_lists_every_method_with_its_numbers():
    rows = comparison.ordered_rows(list(reversed(fake_rows())))
    assert [r["method"] for r in rows][:3] == ["spykingcircus2", "tridesclous2", "kilosort4"]
    assert [r["method"] for r in rows][3:] == [f"transfer K={k}" for k in (5, 10, 15)] + [f"scratch K={k}" for k in (5, 10, 15)]
    table = comparison.comparison_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["method", "acc_pool", "acc_mean", "acc_med", "prec", "recall", "well", "found",
                                "units", "sort_s", "train_s", "x_esort"]
    ks4 = next(line for line in lines if line.startswith("kilosort4"))
    assert ks4.split() == ["kilosort4", "0.800", "0.750", "-", "-", "-", "38", "60", "51", "300.00", "-", "150.0"]
    assert any(line.startswith("spykingcircus2") and "failed: boom" in line for line in lines)
    transfer10 = next(line for line in lines if line.startswith("transfer K=10"))
    assert transfer10.split()[2:5] == ["0.850", "0.800", "-"] and transfer10.split()[-1] == "-"


def test_comparison_csv_has_every_method_and_the_speed_ratio(tmp_path):
    import csv

    rows = comparison.ordered_rows(fake_rows())
    comparison.write_comparison_csv(tmp_path / "c.csv", rows)
    with open(tmp_path / "c.csv") as handle:
        read = list(csv.DictReader(handle))
    assert [r["method"] for r in read] == [r["method"] for r in rows]
    assert float(read[0]["speed_ratio_vs_esort"]) == pytest.approx(150.0) and read[0]["sorter_version"] == "4.1.7"
    assert read[2]["status"] == "failed" and read[2]["accuracy_pooled"] == ""
    assert list(read[0]) == [*comparison.ROW_COLUMNS, "speed_ratio_vs_esort"]
    assert read[3]["method"] == "transfer K=5" and read[3]["speed_ratio_vs_esort"] == ""  # E-Sort rows: no ratio


def _sorters():
    return {"kilosort4": {"status": "ok", "accuracy_pooled": 0.8},
            "tridesclous2": {"status": "ok", "accuracy_pooled": 0.9},
            "spykingcircus2": {"status": "failed", "error": "boom"}}


def test_comparison_summary_gives_the_results_json_entries():
    rows = fake_rows()
    results = comparison.comparison_summary(list(reversed(rows)), _sorters(), "accuracy_pooled", "kilosort4")
    assert results["rows"] == comparison.ordered_rows(list(reversed(rows)))
    assert results["speed_ratio"] == comparison.speed_ratios(rows)
    assert results["esort_seconds_per_data_second"] == pytest.approx(2.0 / 15.0)
    assert results["failed_sorters"] == ["spykingcircus2"]
    assert list(results["k_to_reach"]) == ["kilosort4", "tridesclous2"]
    assert results["k_to_reach"]["kilosort4"] == comparison.k_to_reach_level(rows, 0.8)
    assert results["k_to_reach"]["tridesclous2"]["scratch"]["status"] == "never"  # scratch tops out at 0.85
    assert results["reference_sorter"] == "kilosort4"
    assert results["label_reduction_vs_reference"] == pytest.approx((10 * 1.5 ** (2 / 3)) / (5 * 2 ** (2 / 3)))
    sorters_only = [r for r in rows if r["kind"] == "sorter"]
    alone = comparison.comparison_summary(sorters_only, _sorters(), "accuracy_pooled", "kilosort4")
    assert alone["k_to_reach"] == {} and alone["label_reduction_vs_reference"] is None
    assert alone["esort_seconds_per_data_second"] is None
    no_reference = comparison.comparison_summary(rows, _sorters(), "accuracy_pooled", None)
    assert no_reference["label_reduction_vs_reference"] is None
    never = comparison.comparison_summary(rows, _sorters(), "accuracy_pooled", "tridesclous2")
    assert never["label_reduction_vs_reference"] is None  # scratch never reaches 0.9: no ratio, only a bound


def test_comparison_text_and_header():
    results = comparison.comparison_summary(fake_rows(), _sorters(), "accuracy_pooled", "kilosort4")
    lines = comparison.comparison_text(results).splitlines()
    table = comparison.comparison_table(results["rows"]).splitlines()
    assert lines[:len(table)] == table and lines[len(table)] == ""
    assert lines[len(table) + 1:] == [
        "kilosort4 is 150.0x slower than E-Sort's sorting per second of data",
        "tridesclous2 is 30.0x slower than E-Sort's sorting per second of data",
        "K to reach kilosort4's accuracy_pooled 0.800: transfer needs K 7.9; scratch needs K 13.1; "
        "scratch / transfer = 1.65x",
        "K to reach tridesclous2's accuracy_pooled 0.900: transfer needs K 15.0; scratch needs K > 15 (never within "
        "the measured K); scratch / transfer > 1.00x",
        f"label reduction at kilosort4's accuracy: 1.65x (paper: ~{comparison.PAPER_REDUCTION}x)",
    ]
    header = comparison.comparison_header(
        {"target": {"num_units": 51, "num_channels": 64},
         "spans": {"span": "eval", "sorted_span": [24000, 48000], "scored_span": [24009, 47990]}}, 0.4)
    assert header == ("Sorters and E-Sort on the target's held-out span: 51 units, 64 channels, sorters on span "
                      "'eval' [24000, 48000], scored on [24009, 47990], tolerance 0.4 ms")
