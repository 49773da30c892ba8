"""benchmarks/bench_online.py's helpers (the benchmark itself runs for minutes: `make bench-online`)."""

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_online", REPO / "benchmarks" / "bench_online.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_breakdown_uses_the_service_settings_with_the_benchmarks_overrides():
    bench = _bench()
    assert bench.service_cpu_settings([]) == {"single_thread_kernels": True, "inline_dispatch": True}
    assert bench.service_cpu_settings(["streaming_cpu.single_thread_kernels=false", "online.min_steps=16",
                                       "streaming_cpu.cores=[1]"]) == {"single_thread_kernels": False,
                                                                        "inline_dispatch": True}


def test_pinning_splits_the_cores_or_refuses_one_core(monkeypatch):
    bench = _bench()
    assert bench._pinned_cores(False) == (None, None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert bench._pinned_cores(True) == ([2], [0, 1])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    with pytest.raises(SystemExit, match="at least 2 cores"):
        bench._pinned_cores(True)
