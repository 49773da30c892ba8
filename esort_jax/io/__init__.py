"""File formats: esort_jax's recording folder, MEArec .h5, SpikeInterface objects."""

from esort_jax.io.folder import (
    RecordingFormatError,
    is_recording_folder,
    read_recording_folder,
    read_sorting_npz,
    write_recording_folder,
    write_sorting_npz,
)
from esort_jax.io.loader import is_spikeinterface_folder, load_recording
from esort_jax.io.mearec import is_mearec_file, read_mearec, write_mearec
from esort_jax.io.spikeinterface import (
    from_spikeinterface_recording,
    from_spikeinterface_sorting,
    to_spikeinterface_recording,
    to_spikeinterface_sorting,
)

__all__ = [
    "RecordingFormatError",
    "is_recording_folder",
    "read_recording_folder",
    "read_sorting_npz",
    "write_recording_folder",
    "write_sorting_npz",
    "load_recording",
    "is_spikeinterface_folder",
    "is_mearec_file",
    "read_mearec",
    "write_mearec",
    "to_spikeinterface_recording",
    "from_spikeinterface_recording",
    "to_spikeinterface_sorting",
    "from_spikeinterface_sorting",
]
