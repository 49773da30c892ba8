"""After sorting: SpikeInterface's SortingAnalyzer, quality metrics and a one-page report.

    analyzer = build_analyzer(si_sorting, si_recording, "out/analyzer")
    write_quality_metrics(analyzer, "out/quality_metrics.csv")
    plot_report(analyzer, "out/report.png", title="E-Sort, 12 units")

The analyzer is what SpikeInterface users compute after any sorter: a sparse analyzer in a
binary folder with the extensions of ANALYZER_EXTENSIONS (random spikes, waveforms, templates,
noise levels, spike amplitudes, unit locations, correlograms, template similarity) and the
quality metrics of QUALITY_METRICS. `spikeinterface.load_sorting_analyzer(folder)` opens it
again (e.g. for `export_to_phy` or the curation GUIs).

The report is one PNG page: the unit table (spikes, rate, SNR, ISI violations, presence ratio,
amplitude cutoff), the units' estimated locations on the probe, spike amplitudes over time, and
the templates of the largest units on their best channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from esort_jax.report.csv_writer import write_csv

__all__ = ["ANALYZER_EXTENSIONS", "QUALITY_METRICS", "build_analyzer", "write_quality_metrics", "quality_rows",
           "plot_report", "after_sorting"]

ANALYZER_EXTENSIONS = {
    "random_spikes": {"method": "uniform", "max_spikes_per_unit": 500, "seed": 0},
    "waveforms": {"ms_before": 1.0, "ms_after": 2.0},
    "templates": {"operators": ["average", "std"]},
    "noise_levels": {},
    "spike_amplitudes": {},
    "unit_locations": {"method": "monopolar_triangulation"},
    "correlograms": {"window_ms": 50.0, "bin_ms": 1.0},
    "template_similarity": {"method": "cosine"},
}
QUALITY_METRICS = ("snr", "isi_violation", "presence_ratio", "amplitude_cutoff", "firing_rate", "num_spikes")
TEMPLATES_SHOWN = 6


def build_analyzer(si_sorting: Any, si_recording: Any, folder: str | Path, *, n_jobs: int = 1,
                   progress_bar: bool = False) -> Any:
    """A sparse SortingAnalyzer in the binary folder `folder` (replaced), with the extensions
    of ANALYZER_EXTENSIONS and the quality metrics of QUALITY_METRICS computed."""
    import spikeinterface as si

    from esort_jax.runtime.spikeinterface_jobs import spikeinterface_jobs

    with spikeinterface_jobs(n_jobs=n_jobs, pool_engine="thread", progress_bar=progress_bar):
        analyzer = si.create_sorting_analyzer(si_sorting, si_recording, format="binary_folder", folder=folder,
                                              sparse=True, overwrite=True)
        extensions = {**ANALYZER_EXTENSIONS, "quality_metrics": {"metric_names": list(QUALITY_METRICS)}}
        analyzer.compute(extensions)
    return analyzer


def quality_rows(analyzer: Any, properties: tuple[str, ...] = ("labeller_unit_id", "labeller_label")) -> list[dict]:
    """One row per unit: unit_id, the sorting's `properties` that exist, then every quality metric."""
    metrics = analyzer.get_extension("quality_metrics").get_data()
    sorting = analyzer.sorting
    extra = {key: sorting.get_property(key) for key in properties if key in sorting.get_property_keys()}
    rows = []
    for i, unit in enumerate(sorting.unit_ids):
        row = {"unit_id": unit.item() if isinstance(unit, np.generic) else unit}
        row.update({key: _plain(values[i]) for key, values in extra.items()})
        row.update({column: _plain(metrics.loc[unit, column]) for column in metrics.columns})
        rows.append(row)
    return rows


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly scalar (NaN as None)."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def write_quality_metrics(analyzer: Any, path: str | Path) -> Path:
    """quality_rows(analyzer) as a CSV file (esort_jax.report.csv_writer)."""
    write_csv(path, quality_rows(analyzer))
    return Path(path)


def plot_report(analyzer: Any, path: str | Path, *, title: str = "") -> Path:
    """The one-page report (module doc) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure = plt.figure(figsize=(16, 10))
    grid = figure.add_gridspec(2, 3, height_ratios=(1, 1))
    try:
        _unit_table(figure.add_subplot(grid[0, :2]), quality_rows(analyzer))
        _unit_locations(figure.add_subplot(grid[0, 2]), analyzer)
        _amplitudes(figure.add_subplot(grid[1, :2]), analyzer)
        _templates(figure.add_subplot(grid[1, 2]), analyzer)
        figure.suptitle(title or f"{analyzer.sorting.get_num_units()} units")
        figure.tight_layout()
        figure.savefig(path, dpi=80)
    finally:
        plt.close(figure)
    return Path(path)


_TABLE_COLUMNS = (("unit_id", "unit"), ("labeller_unit_id", "labeller unit"), ("num_spikes", "spikes"),
                  ("firing_rate", "rate Hz"), ("snr", "SNR"), ("isi_violations_ratio", "ISI viol."),
                  ("presence_ratio", "presence"), ("amplitude_cutoff", "amp. cutoff"))


def _unit_table(ax, rows: list[dict], max_rows: int = 24) -> None:
    columns = [(key, name) for key, name in _TABLE_COLUMNS if rows and key in rows[0]]
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows[:max_rows]]
    ax.axis("off")
    if cells:
        table = ax.table(cellText=cells, colLabels=[name for _, name in columns], loc="upper center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    more = f" (first {max_rows} of {len(rows)})" if len(rows) > max_rows else ""
    ax.set_title(f"Units and quality metrics{more}")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _unit_locations(ax, analyzer: Any) -> None:
    positions = analyzer.get_channel_locations()
    locations = analyzer.get_extension("unit_locations").get_data()
    ax.scatter(positions[:, 0], positions[:, 1], marker="s", s=12, color="0.8", label="sites")
    ax.scatter(locations[:, 0], locations[:, 1], s=30, c=np.arange(len(locations)), cmap="tab20", label="units")
    for unit, (x, y) in zip(analyzer.unit_ids, locations[:, :2]):
        ax.annotate(str(unit), (x, y), fontsize=7)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("depth (µm)")
    ax.set_title("Unit locations on the probe")


def _amplitudes(ax, analyzer: Any) -> None:
    amplitudes = analyzer.get_extension("spike_amplitudes").get_data()
    vector = analyzer.sorting.to_spike_vector()
    times = vector["sample_index"] / analyzer.sampling_frequency
    step = max(1, len(vector) // 50000)
    ax.scatter(times[::step], amplitudes[::step], c=vector["unit_index"][::step], cmap="tab20", s=2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude (µV)")
    ax.set_title("Spike amplitudes over time")


def _templates(ax, analyzer: Any) -> None:
    templates = analyzer.get_extension("templates").get_data(operator="average")  # [U, S, C]
    peak_to_peak = np.ptp(templates, axis=1)  # [U, C]
    largest = np.argsort(peak_to_peak.max(axis=1))[::-1][:TEMPLATES_SHOWN]
    offset = float(peak_to_peak.max()) if peak_to_peak.size else 1.0
    for row, u in enumerate(largest):
        channel = int(np.argmax(peak_to_peak[u]))
        ax.plot(templates[u, :, channel] - row * offset, label=f"unit {analyzer.unit_ids[u]} (ch {channel})")
    ax.set_yticks([])
    ax.set_xlabel("sample")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"Templates of the {len(largest)} largest units (best channel)")


def after_sorting(folder: str | Path, si_recording: Any, *, analyzer: bool = True, nwb: bool = False,
                  n_jobs: int = 1, verbose: bool = False) -> dict:
    """On a sorter folder's sorting/ (sorter_output of run_sorter('esort')): the analyzer with
    quality_metrics.csv and report.png (`analyzer`), and sorting.nwb (`nwb`). Returns {name: path}."""
    from esort_jax.io.untrusted import load_spikeinterface_folder

    folder = Path(folder)
    si_sorting = load_spikeinterface_folder(folder / "sorting")
    written = {}
    result = None
    if analyzer or nwb:
        result = build_analyzer(si_sorting, si_recording, folder / "analyzer", n_jobs=n_jobs, progress_bar=verbose)
        written["analyzer"] = str(folder / "analyzer")
    if analyzer:
        written["quality_metrics"] = str(write_quality_metrics(result, folder / "quality_metrics.csv"))
        title = f"E-Sort: {si_sorting.get_num_units()} units, {si_recording.get_total_duration():.1f} s"
        written["report"] = str(plot_report(result, folder / "report.png", title=title))
    if nwb:
        from esort_jax.io.nwb import write_nwb_sorting

        written["nwb"] = str(write_nwb_sorting(result, folder / "sorting.nwb"))
    return written
