"""NWB: a sorting written with pynwb (units, spike times, electrodes, waveforms) and an NWB
recording (an ElectricalSeries a test writes with pynwb) read through the loader."""

import datetime

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

FS = 32000.0


def _write_nwb_recording(path, traces_TxC, positions_Cx2, conversion=1e-6):
    """An NWB file with one acquisition ElectricalSeries 'ElectricalSeries' (int16 counts;
    `conversion` volts per count), electrodes at `positions` (rel_x, rel_y)."""
    from pynwb.ecephys import ElectricalSeries

    nwbfile = pynwb.NWBFile(session_description="test", identifier="test-recording",
                            session_start_time=datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc))
    device = nwbfile.create_device(name="probe")
    group = nwbfile.create_electrode_group(name="shank0", description="test", location="cortex", device=device)
    for x, y in positions_Cx2:
        nwbfile.add_electrode(group=group, location="cortex", rel_x=float(x), rel_y=float(y))
    region = nwbfile.create_electrode_table_region(list(range(len(positions_Cx2))), "all electrodes")
    series = ElectricalSeries(name="ElectricalSeries", data=traces_TxC, electrodes=region, rate=FS,
                              conversion=conversion, starting_time=0.0)
    nwbfile.add_acquisition(series)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)


def test_nwb_recording_reads_through_the_loader(tmp_path):
    from esort_jax.io.loader import detect_format, load_recording

    rng = np.random.default_rng(0)
    counts = rng.integers(-200, 200, size=(6400, 6)).astype(np.int16)
    positions = np.stack([np.tile([0.0, 32.0], 3), 20.0 * np.arange(6)], axis=1)
    path = tmp_path / "session.nwb"
    _write_nwb_recording(path, counts, positions)
    assert detect_format(path) == "nwb"
    for format in ("auto", "nwb"):
        recording, truth = load_recording(path, format)
        assert truth is None and recording.num_channels == 6 and recording.sampling_frequency == FS
        np.testing.assert_allclose(recording.channel_positions, positions)
        # counts × 1e-6 V = µV: the loader reads microvolts
        np.testing.assert_allclose(recording.read(100, 300), counts[100:300].astype(np.float32), rtol=1e-5)


def test_sorting_as_nwb_units_table(tmp_path):
    import spikeinterface as si
    from spikeinterface.core import generate_ground_truth_recording

    from esort_jax.io.nwb import write_nwb_sorting

    recording, truth = generate_ground_truth_recording(durations=[4.0], sampling_frequency=FS, num_channels=6,
                                                       num_units=3, seed=0)
    truth.set_property("labeller_unit_id", np.asarray([7, 8, 9]))
    analyzer = si.create_sorting_analyzer(truth, recording, sparse=True, format="memory")
    analyzer.compute({"random_spikes": {}, "templates": {"operators": ["average", "std"]}})
    path = write_nwb_sorting(analyzer, tmp_path / "sorting.nwb")
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        units = nwbfile.units.to_dataframe()
        assert len(nwbfile.electrodes) == 6
        np.testing.assert_allclose(nwbfile.electrodes["rel_y"][:], recording.get_channel_locations()[:, 1])
        assert units["unit_name"].tolist() == [str(u) for u in truth.unit_ids]
        assert units["labeller_unit_id"].tolist() == [7, 8, 9]
        for i, unit in enumerate(truth.unit_ids):
            np.testing.assert_allclose(units["spike_times"].iloc[i], truth.get_unit_spike_train(unit) / FS)
            assert np.asarray(units["waveform_mean"].iloc[i]).shape == analyzer.get_extension("templates").get_data()[i].shape
            mask = analyzer.sparsity.mask[i]
            assert sorted(units["electrodes"].iloc[i].index.tolist()) == np.flatnonzero(mask).tolist()
