"""esort_jax.io.probes: probeinterface JSON and .prb files as probeinterface ProbeGroups; a .prb
file is parsed (the same probes probeinterface's read_prb builds by running it), never run;
errors start with the config key and name the file and what is missing."""

import json

import numpy as np
import probeinterface
import pytest

from esort_jax.io import RecordingFormatError, load_recording
from esort_jax.io.extractors import BinaryOptions
from esort_jax.io.probes import read_probe_file
from esort_jax.io.untrusted import UnsafeFileError
from tests._files import FS, recording_folder, unchanged

pytestmark = pytest.mark.filterwarnings("ignore:BinaryRecordingExtractor. the recording has no probe")

# Two tetrodes, written as users write .prb files: range(), tuples and lists, upper-case name.
TETRODES = """# two tetrodes
CHANNEL_GROUPS = {
    0: {'channels': range(4), 'geometry': {0: (0, 0), 1: (0, 20), 2: (20, 0), 3: (20, 20)}},
    1: {'channels': [7, 6, 5, 4], 'geometry': {4: [100, 0], 5: [100, 20], 6: [120, 0], 7: [120, 20.5]}},
}
"""


def _probe_dict(probe) -> str:
    return json.dumps(probe.to_dict(array_as_list=True), sort_keys=True)


def test_a_probeinterface_json_file_reads_as_written(tmp_path):
    probe = probeinterface.generate_linear_probe(num_elec=6, ypitch=25)
    probe.set_device_channel_indices([5, 4, 3, 2, 1, 0])
    probeinterface.write_probeinterface(tmp_path / "probe.json", probe)
    group = read_probe_file(tmp_path / "probe.json", key="recording.probe")
    assert isinstance(group, probeinterface.ProbeGroup) and len(group.probes) == 1
    np.testing.assert_array_equal(group.probes[0].contact_positions, probe.contact_positions)
    assert group.probes[0].device_channel_indices.tolist() == [5, 4, 3, 2, 1, 0]
    assert _probe_dict(group.probes[0]) == _probe_dict(probe)


def test_a_prb_file_gives_the_probes_probeinterface_builds(tmp_path):
    (tmp_path / "tetrodes.PRB").write_text(TETRODES)  # the suffix in any case
    ours = read_probe_file(tmp_path / "tetrodes.PRB")
    theirs = probeinterface.read_prb(tmp_path / "tetrodes.PRB")  # runs the file: fine for this one
    assert len(ours.probes) == len(theirs.probes) == 2
    for mine, reference in zip(ours.probes, theirs.probes):
        assert _probe_dict(mine) == _probe_dict(reference)
    assert ours.probes[1].device_channel_indices.tolist() == [7, 6, 5, 4]
    np.testing.assert_array_equal(ours.probes[1].contact_positions[:, 1], [20.5, 0, 20, 0])


def test_prb_files_are_parsed_not_run(tmp_path):
    good = tmp_path / "good.prb"
    good.write_text("channel_groups = {0: {'channels': list(range(3)), 'geometry': {0: (0, 0), 1: (0, 20), 2: (0, 40)}}}\n")
    group = read_probe_file(good, key="recording.probe")
    assert group.probes[0].get_contact_count() == 3
    np.testing.assert_array_equal(group.probes[0].contact_positions[:, 1], [0, 20, 40])
    marker = tmp_path / "RAN"
    bad = tmp_path / "bad.prb"
    bad.write_text(f"import os\nos.system('touch {marker}')\nchannel_groups = {{}}\n")
    with pytest.raises(UnsafeFileError, match=r"bad\.prb, line 1: an Import statement"):
        read_probe_file(bad, key="recording.probe")
    computed = tmp_path / "computed.prb"
    computed.write_text("channel_groups = {0: {'channels': [0, 1], 'geometry': {i: (0, 20 * i) for i in range(2)}}}\n")
    with pytest.raises(UnsafeFileError, match=r"computed\.prb, line 1: a computed value"):
        read_probe_file(computed)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("geometry = {0: (0, 0)}\n", r"has no 'channel_groups' dict \(a \.prb file defines one\)"),
        ("channel_groups = {}\n", r"has no 'channel_groups' dict"),
        ("channel_groups = [1, 2]\n", r"has no 'channel_groups' dict"),
        ("channel_groups = {'a': {'channels': [0, 1], 'geometry': {0: (0, 0)}}}\n",
         r"channel group 'a' needs 'channels' and a 2-D 'geometry' position for each \(KeyError: 1\)"),
        ("channel_groups = {0: {'geometry': {0: (0, 0)}}}\n", r"channel group 0 needs .*\(KeyError: 'channels'\)"),
        ("channel_groups = {0: {'channels': [0], 'geometry': {0: (0, 0, 5)}}}\n", r"channel group 0 needs"),
    ],
)
def test_a_bad_prb_file_says_what_is_wrong(tmp_path, text, expected):
    (tmp_path / "p.prb").write_text(text)
    with pytest.raises(RecordingFormatError, match=rf"^probe: {tmp_path / 'p.prb'}:? {expected}"):
        read_probe_file(tmp_path / "p.prb")


def test_a_missing_path_a_folder_and_a_file_probeinterface_refuses(tmp_path):
    with pytest.raises(RecordingFormatError, match=rf"^data\.probe: {tmp_path / 'nope.json'} does not exist$"):
        read_probe_file(tmp_path / "nope.json", key="data.probe")
    with pytest.raises(RecordingFormatError, match=rf"^probe: {tmp_path} is a folder$"):
        read_probe_file(tmp_path)
    probe = probeinterface.generate_linear_probe(num_elec=3).to_dict(array_as_list=True)
    probe["contact_positions"] = [[0.0, 0.0], [0.0, 20.0]]  # 2 positions for 3 contacts
    (tmp_path / "odd.json").write_text(json.dumps({"specification": "probeinterface", "version": "0.2.0",
                                                   "probes": [probe]}))
    with pytest.raises(RecordingFormatError, match=rf"^probe: {tmp_path / 'odd.json'} is not a valid probeinterface "
                                                   r"file: \w+"):
        read_probe_file(tmp_path / "odd.json")
    (tmp_path / "latin1.json").write_bytes(b'{"probes": "\xe9"}')
    with pytest.raises(RecordingFormatError, match=r"latin1\.json is not JSON text"):
        read_probe_file(tmp_path / "latin1.json")


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"specification": "probeinterface", "version": "0.2"}',
         r"has no 'probes' key \(top-level keys: specification, version\); expected at least one probe"),
        ('{"probes": []}', r"has 'probes' is \[\]"),
        ("[1, 2]", r"holds a JSON list"),
        ('{"probes": [{"ndim": 2}]}', r"probes\[0\] lacks si_units, contact_positions"),
        ('{"probes": [\n  {"ndim": 2,}\n]}', r"is not valid JSON: .* at line 2, column 14"),
    ],
)
def test_a_bad_probe_file_says_what_is_missing(tmp_path, content, expected):
    folder = recording_folder(tmp_path)
    probe = tmp_path / "probe.json"
    probe.write_text(content)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 32)
    with unchanged(tmp_path):
        with pytest.raises(RecordingFormatError, match=rf"^recording\.probe: {probe}:? {expected}"):
            load_recording(folder, probe=probe)
        with pytest.raises(RecordingFormatError, match=rf"^recording\.binary\.probe: {probe}:? {expected}"):
            load_recording(raw, "binary", binary=BinaryOptions(sampling_frequency=FS, num_channels=4, probe=str(probe)))
    (folder / "probe.json").write_text(content)  # the folder's own probe.json
    with pytest.raises(RecordingFormatError, match=rf"{folder}: {folder / 'probe.json'}:? {expected}"):
        load_recording(folder)
