"""A Kilosort-like Phy folder and a blank recording for the Phy / labeller tests."""

from pathlib import Path

import numpy as np

from esort_jax import ArrayTraces, Recording
from tests._tiny import FS


C_RECORDING = 8


def write_phy(folder: Path, *, sample_rate=FS, channel_map=None, num_samples=48000):
    """A Kilosort-like folder: 4 templates on 6 template channels mapped to recording channels,
    clusters 0-3 (= templates) and 7 (a Phy merge of templates 1 and 2, mostly 2), and cluster
    9 which no cluster table lists. Returns the expected {cluster: samples}."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    trains = {c: np.sort(rng.choice(np.arange(100, num_samples - 100), size=n, replace=False))
              for c, n in [(0, 50), (1, 40), (2, 30), (3, 25), (7, 20), (9, 5)]}
    times, clusters, templates_of = [], [], []
    for c, train in trains.items():
        times.append(train)
        clusters.append(np.full(train.size, c))
        t = np.full(train.size, c if c < 4 else 2)
        if c == 7:
            t[:5] = 1  # merged: 15 spikes from template 2, 5 from template 1
        if c == 9:
            t[:] = 0
        templates_of.append(t)
    times = np.concatenate(times)
    order = np.argsort(times, kind="stable")
    np.save(folder / "spike_times.npy", times[order].astype(np.uint64)[:, None])
    np.save(folder / "spike_clusters.npy", np.concatenate(clusters)[order].astype(np.int32))
    np.save(folder / "spike_templates.npy", np.concatenate(templates_of)[order].astype(np.uint32)[:, None])
    templates = np.zeros((4, 20, 6), np.float32)
    for t in range(4):
        templates[t, 8, t + 1] = -(t + 2.0)  # template t peaks on template channel t + 1 ...
        templates[t, 12, t + 1] = 1.0  # ... with peak-to-peak t + 3
    np.save(folder / "templates.npy", templates)
    np.save(folder / "channel_map.npy", np.asarray(channel_map if channel_map is not None else [7, 6, 5, 4, 3, 2],
                                                   np.int32))
    (folder / "params.py").write_text(
        f"dat_path = 'recording.dat'\nn_channels_dat = {C_RECORDING}\ndtype = 'int16'\noffset = 0\n"
        f"sample_rate = {sample_rate}\nhp_filtered = False\n"
    )
    (folder / "cluster_group.tsv").write_text("cluster_id\tgroup\n0\tgood\n1\tmua\n2\tnoise\n3\tunsorted\n7\tgood\n")
    (folder / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n0\tmua\n1\tgood\n2\tgood\n3\tgood\n7\tmua\n")
    return trains


def blank_recording(num_samples=48000, channels=C_RECORDING, fs=FS):
    positions = np.stack([np.zeros(channels), 20.0 * np.arange(channels)], 1)
    return Recording(ArrayTraces(np.zeros((num_samples, channels), np.float32)), fs, positions)
