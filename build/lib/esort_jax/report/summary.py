"""Human- and JSON-readable summaries of a recording and its ground truth."""

from __future__ import annotations

import numpy as np

from esort_jax.recording import GroundTruth, Recording, Sorting
from esort_jax.report.tables import Column, table_lines

__all__ = ["recording_summary", "unit_table_text"]


def recording_summary(recording: Recording, truth: Sorting | None = None) -> dict:
    """Sizes, spike counts, amplitude/SNR distribution and drift range (flat JSON)."""
    summary = {
        "num_channels": recording.num_channels,
        "num_samples": recording.num_samples,
        "duration_s": recording.duration_s,
        "sampling_frequency": recording.sampling_frequency,
        "probe_span_um": float(np.ptp(recording.channel_positions[:, 1])),
    }
    if truth is None:
        return summary
    counts = truth.spike_counts()
    summary.update(
        num_units=truth.num_units,
        num_spikes=truth.num_spikes,
        spikes_per_unit_min=int(counts.min()) if counts.size else 0,
        spikes_per_unit_median=float(np.median(counts)) if counts.size else 0.0,
        spikes_per_unit_max=int(counts.max()) if counts.size else 0,
    )
    if isinstance(truth, GroundTruth):
        table = truth.unit_table
        for column in ("peak_amplitude_uv", "snr"):
            if column in table and len(table[column]):
                values = np.asarray(table[column], dtype=float)
                summary[f"{column}_min"] = float(values.min())
                summary[f"{column}_median"] = float(np.median(values))
                summary[f"{column}_max"] = float(values.max())
        if "cell_type" in table:
            types = np.asarray(table["cell_type"]).astype(str)
            summary["num_excitatory"] = int(np.sum(types == "exc"))
            summary["num_inhibitory"] = int(np.sum(types == "inh"))
        if truth.drift is not None:
            displacement = truth.drift.displacement_um
            summary["drift_min_um"] = float(displacement.min())
            summary["drift_max_um"] = float(displacement.max())
            summary["drift_max_step_um"] = (
                float(np.abs(np.diff(displacement, axis=0)).max()) if displacement.shape[0] > 1 else 0.0
            )
        else:
            summary["drift_min_um"] = summary["drift_max_um"] = summary["drift_max_step_um"] = 0.0
    return summary


UNIT_COLUMNS = (
    Column("unit", "unit", 5),
    Column("cell_type", "type", 4),
    Column("position_um", "depth_um", 8, ".1f"),
    Column("peak_channel", "peak_ch", 7, "d"),
    Column("peak_amplitude_uv", "amp_uV", 7, ".1f"),
    Column("snr", "snr", 6, ".1f"),
    Column("firing_rate_hz", "rate_Hz", 7, ".2f"),
    Column("spikes", "spikes", 7, "d"),
)


def unit_table_text(truth: Sorting, max_rows: int = 40) -> str:
    """One line per unit (highest SNR first): id, type, depth, peak channel, amplitude, SNR,
    rate, spikes; '-' where the ground truth has no such column."""
    counts = truth.spike_counts()
    table = truth.unit_table if isinstance(truth, GroundTruth) else {}
    order = np.argsort(-np.asarray(table["snr"])) if "snr" in table else np.arange(truth.num_units)
    rows = []
    for unit in order[:max_rows]:
        row = {c.key: table[c.key][unit] for c in UNIT_COLUMNS if c.key in table}
        if "position_um" in row:
            row["position_um"] = row["position_um"][1]  # depth
        rows.append({**row, "unit": str(truth.unit_ids[unit]), "spikes": counts[unit]})
    lines = table_lines(UNIT_COLUMNS, rows)
    if truth.num_units > max_rows:
        lines.append(f"... {truth.num_units - max_rows} more units")
    return "\n".join(lines)
