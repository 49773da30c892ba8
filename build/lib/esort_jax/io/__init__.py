"""File formats: esort_jax's recording folder, MEArec .h5, SpikeInterface objects and folders,
acquisition formats through SpikeInterface (SpikeGLX, Open Ephys, NWB, raw binary), probe files.
Files written by others are read without running them (`esort_jax.io.untrusted`); everything is
written atomically with the user's umask (`esort_jax.io.atomic`).

The Phy/Kilosort reader and writer live in `esort_jax.io.phy`, sorter labels in
`esort_jax.realdata.labeller` (both import SpikeInterface when used).
"""

from esort_jax.io.folder import (
    RecordingFormatError,
    is_recording_folder,
    read_recording_folder,
    read_sorting_npz,
    write_recording_folder,
    write_sorting_npz,
)
from esort_jax.io.extractors import BinaryOptions, detect_extractor_format, open_extractor
from esort_jax.io.loader import (
    RECORDING_FORMATS,
    RecordingSource,
    detect_format,
    is_spikeinterface_folder,
    load_ground_truth,
    load_recording,
    open_spikeinterface_recording,
)
from esort_jax.io.mearec import is_mearec_file, read_mearec, write_mearec
from esort_jax.io.probes import read_probe_file
from esort_jax.io.spikeinterface import (
    from_spikeinterface_recording,
    from_spikeinterface_sorting,
    to_spikeinterface_recording,
    to_spikeinterface_sorting,
)
from esort_jax.io.untrusted import UnsafeFileError, load_spikeinterface_folder, read_python_literals

__all__ = [
    "RecordingFormatError",
    "is_recording_folder",
    "read_recording_folder",
    "read_sorting_npz",
    "write_recording_folder",
    "write_sorting_npz",
    "load_recording",
    "load_ground_truth",
    "RECORDING_FORMATS",
    "RecordingSource",
    "detect_format",
    "open_spikeinterface_recording",
    "BinaryOptions",
    "detect_extractor_format",
    "open_extractor",
    "is_spikeinterface_folder",
    "is_mearec_file",
    "read_mearec",
    "write_mearec",
    "to_spikeinterface_recording",
    "from_spikeinterface_recording",
    "to_spikeinterface_sorting",
    "from_spikeinterface_sorting",
    "read_probe_file",
    "UnsafeFileError",
    "load_spikeinterface_folder",
    "read_python_literals",
]
