"""esort_jax.runtime.sort_benchmark: the results.json keys keep their best-run meaning, the
_median/_range keys describe every run (the end-to-end run is tests/test_experiments.py's
test_benchmark_writes_flat_keys)."""

import pytest

from esort_jax.runtime.sort_benchmark import SortBenchmarkConfig, _speed_figures, _with_rates, _xla_figures
from esort_jax.config import from_dict


def _runs(seconds, peaks):
    runs = [{"seconds": s, "peak_gflops": p, "load": 1.0} for s, p in zip(seconds, peaks)]
    return _with_rates(runs, flops=100e9, duration_s=10.0)


def test_best_keys_and_median_range_keys():
    infer = _runs([5.0, 4.0, 8.0], [100.0, 50.0, 200.0])
    sort = _runs([6.0, 10.0, 5.0], [100.0, 100.0, 80.0])
    naive = {"naive_realtime_factor": 0.5, "naive_batched_realtime_factor": 1.0}
    figures = _speed_figures(10.0, infer, [0.1, 0.2, 0.4], sort, naive)
    # best run: inference 4 s (its own peak 50), sort 5 s (peak 80)
    assert figures["inference_realtime_factor"] == 2.5 and figures["matmul_peak_gflops"] == 50.0
    assert figures["fraction_of_peak"] == pytest.approx(25.0 / 50.0)
    assert figures["realtime_factor"] == 2.0 and figures["sort_fraction_of_peak"] == pytest.approx(20.0 / 80.0)
    assert figures["postprocess_realtime_factor"] == pytest.approx(100.0)
    assert figures["conv_over_naive"] == pytest.approx(5.0) and figures["conv_over_naive_batched"] == 2.5
    # every run: medians and [min, max]
    assert figures["inference_realtime_factor_median"] == 2.0
    assert figures["inference_realtime_factor_range"] == [1.25, 2.5]
    assert figures["fraction_of_peak_median"] == pytest.approx(0.2)  # runs: 0.2, 0.5, 0.0625
    assert figures["fraction_of_peak_range"] == pytest.approx([0.0625, 0.5])
    assert figures["matmul_peak_gflops_median"] == 100.0
    assert figures["realtime_factor_range"] == [1.0, 2.0] and figures["realtime_factor_median"] == pytest.approx(10 / 6)
    assert figures["postprocess_realtime_factor_median"] == pytest.approx(50.0)
    assert figures["postprocess_fraction_of_total_median"] == pytest.approx(0.2 / 5.2)
    assert figures["conv_over_naive_median"] == pytest.approx(4.0)


def test_xla_reference_figures():
    native = _runs([4.0, 5.0, 6.0], [100.0] * 3)
    xla = _runs([6.0, 5.0, 9.0], [100.0] * 3)
    figures = _xla_figures(xla, native)
    assert figures["native_over_xla_kernel"] == pytest.approx(5.0 / 4.0)  # best over best, as before
    assert figures["native_over_xla_kernel_median"] == pytest.approx(6.0 / 5.0)
    assert figures["native_over_xla_kernel_range"] == pytest.approx([1.0, 1.5])
    assert figures["xla_kernel_inference_realtime_factor"] == 2.0


def test_config_from_the_yaml_keys():
    config = from_dict(SortBenchmarkConfig, {"repeats": 2, "max_wait_s": 0, "rss_durations": [0.5, 1]})
    assert config.rss_durations == (0.5, 1.0) and config.max_wait_s == 0.0 and config.checkpoint is None
