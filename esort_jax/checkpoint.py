"""Checkpoints: orbax arrays plus a metadata JSON, written atomically as one folder.

    <checkpoint>/
      state/          orbax PyTree checkpoint (arrays as numpy, device-agnostic):
                        model      nnx.to_pure_dict(nnx.state(model)): parameters + BatchNorm stats
                        opt_state  optimiser state leaves {"0000": ..., "0001": ...} (training only)
      metadata.json   format tag, model config, window/anchor, input layout, channel count and
                      positions, unit count and ids, data fingerprint, training and window configs,
                      epoch/step, rng info, package versions, and `checksums`: the sha256 of every
                      saved array and the size and sha256 of every file under state/

The folder is assembled under a hidden temporary name (orbax finalises `state/` there, then the
metadata is written) and renamed into place, so a folder found at its final path is complete. A
folder without metadata.json is not a checkpoint: every reader refuses it (`checkpoint_problem`
says precisely why a folder is not one).

Integrity: arrays with a NaN or inf are never saved (`save_checkpoint` refuses them) and never
used. Every read of the arrays (`restore_arrays`, so `load_model`, transfer and resume) first
checks that the data files are all there with their saved sizes, then compares each array read
back with its saved checksum, then refuses non-finite values: "checkpoint <path> is corrupt:
<array> checksum mismatch" / "missing data file state/...". Checkpoints of format version 2
(before checksums) are read with a warning that they cannot be verified.

Training runs keep their checkpoints in `<run_dir>/checkpoints/epoch_<NNNN>/` (the number of
completed epochs; `save_epoch_checkpoint` writes one and prunes the oldest);
`latest_checkpoint(run_dir)` finds the newest valid one. Each holds the run's resume signature
(`resume_signature`: the settings that change the numbers, model, channels, units, training
windows, freeze setting), and `restore_training` continues a run from its newest checkpoint only
when the signature matches: the model's arrays and the optimiser state are restored, and the
run goes on with the next epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from esort_jax.config import from_dict, to_dict
from esort_jax.io.atomic import atomic_folder, to_jsonable, write_json
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.runtime.distributed import primary_checkpointer
from esort_jax.runtime.provenance import provenance
from esort_jax.recording import Recording

if TYPE_CHECKING:
    from esort_jax.windows import WindowSets

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INPUT_LAYOUT",
    "CheckpointError",
    "CheckpointMetadata",
    "make_metadata",
    "data_fingerprint",
    "save_checkpoint",
    "read_metadata",
    "checkpoint_problem",
    "is_checkpoint",
    "array_checksum",
    "restore_arrays",
    "load_model",
    "apply_model_arrays",
    "flatten_tree",
    "epoch_checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "resume_signature",
    "save_epoch_checkpoint",
    "ResumePoint",
    "restore_training",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "esort_jax.checkpoint"
FORMAT_VERSION = 3
# What each format version changed (a checkpoint of an older, unreadable version is refused with this).
_FORMAT_CHANGES = {
    2: "backbone.spatial.dense.kernel is stored [S, F2*C] with feature-major columns "
       "(version 1: [C*F2, S], channel-major rows)",
    3: "metadata.json records checksums of every array and data file",
}
# Older versions still read: the same arrays, without checksums (read with a warning).
_UNVERIFIED_VERSIONS = (2,)
# What the network consumes: windows [batch, time (W), channel (C)] of float32 microvolts.
INPUT_LAYOUT = "BxWxC:float32:uV"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not fit what it is being loaded into."""


@dataclasses.dataclass(frozen=True, eq=False)
class CheckpointMetadata:
    """Everything needed to rebuild the network and to judge what it can be applied to.

    Attributes:
      model_config: the network sizes (window, anchor, features).
      num_channels, num_units: C and N of the saved network.
      unit_ids: [N] ids of the head's outputs, in order.
      channel_positions: [C, 2] µm of the training recording (None if unknown).
      channel_ids: [C] ids of the training recording's channels (None if unknown).
      sampling_frequency: Hz of the training recording (None if unknown).
      data_fingerprint: `data_fingerprint(recording)` of the training recording.
      input_layout: INPUT_LAYOUT at save time.
      epoch, step: completed epochs and optimiser steps.
      train_config, window_config, transfer: the configs of the run (plain dicts).
      windows_fingerprint: sha256 of the training windows and labels.
      rng: seed and key data of the run's streams.
      extra: free-form (e.g. the experiment's resolved config).
      provenance: package versions, git commit, time.
      format_version: the version the checkpoint was written with (FORMAT_VERSION for new ones).
      checksums: {"arrays": {dotted name: sha256}, "files": {path under state/: {"bytes", "sha256"}}}
        as written by `save_checkpoint` (empty for format version 2).
    """

    model_config: ModelConfig
    num_channels: int
    num_units: int
    unit_ids: np.ndarray
    channel_positions: np.ndarray | None = None
    channel_ids: np.ndarray | None = None
    sampling_frequency: float | None = None
    data_fingerprint: str | None = None
    input_layout: str = INPUT_LAYOUT
    epoch: int = 0
    step: int = 0
    train_config: dict = dataclasses.field(default_factory=dict)
    window_config: dict = dataclasses.field(default_factory=dict)
    transfer: dict = dataclasses.field(default_factory=dict)
    windows_fingerprint: str | None = None
    rng: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    checksums: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unit_ids = np.asarray(self.unit_ids)
        if unit_ids.shape != (self.num_units,):
            raise CheckpointError(f"unit_ids has shape {unit_ids.shape}; expected ({self.num_units},)")
        object.__setattr__(self, "unit_ids", unit_ids)
        if self.channel_positions is not None:
            positions = np.asarray(self.channel_positions, dtype=np.float64)
            if positions.shape != (self.num_channels, 2):
                raise CheckpointError(
                    f"channel_positions has shape {positions.shape}; expected ({self.num_channels}, 2)"
                )
            object.__setattr__(self, "channel_positions", positions)
        if self.channel_ids is not None:
            object.__setattr__(self, "channel_ids", np.asarray(self.channel_ids))

    @property
    def window(self) -> int:
        return self.model_config.window

    @property
    def anchor(self) -> int:
        return self.model_config.anchor

    def replace(self, **changes) -> "CheckpointMetadata":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["model_config"] = to_dict(self.model_config)
        fields["format_version"] = FORMAT_VERSION  # what this esort_jax writes
        return to_jsonable(
            {
                "format": FORMAT_NAME,
                # Repeated at the top for readers and for the compatibility checks.
                "window": self.window,
                "anchor": self.anchor,
                **fields,
            }
        )

    @classmethod
    def from_json(cls, data: dict, where: str = "metadata.json") -> "CheckpointMetadata":
        if data.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{where}: field 'format' is {data.get('format')!r}; expected {FORMAT_NAME!r}")
        version = int(data.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: format_version {version} is newer than this esort_jax "
                f"reads ({FORMAT_VERSION}); update esort_jax"
            )
        if version < FORMAT_VERSION and version not in _UNVERIFIED_VERSIONS:
            raise CheckpointError(
                f"{where}: format_version {version} is older than this esort_jax reads "
                f"({FORMAT_VERSION}): {_FORMAT_CHANGES.get(version + 1, 'the parameter layout changed')}; "
                "train the network again"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        missing = [k for k in ("model_config", "num_channels", "num_units", "unit_ids") if k not in values]
        if missing:
            raise CheckpointError(f"{where}: missing field(s) {missing}")
        values["model_config"] = from_dict(ModelConfig, values["model_config"], "model_config")
        values["format_version"] = version
        metadata = cls(**values)
        if "window" in data and int(data["window"]) != metadata.window:
            raise CheckpointError(f"{where}: window {data['window']} disagrees with model_config.window")
        return metadata


def data_fingerprint(recording: Recording, probe_samples: int = 4096) -> str:
    """sha256 identifying a recording: shape, sampling rate, geometry, metadata (without paths,
    provenance and timestamps, so the same data opened from another folder matches) and the
    traces of three short spans (first, middle, last `probe_samples` samples)."""
    digest = hashlib.sha256()
    header = {
        "num_samples": recording.num_samples,
        "num_channels": recording.num_channels,
        "sampling_frequency": recording.sampling_frequency,
        "channel_positions": np.round(recording.channel_positions, 3),
        "metadata": _stable(recording.metadata),
    }
    digest.update(json.dumps(to_jsonable(header), sort_keys=True, default=str).encode())
    num_samples = recording.num_samples
    n = min(probe_samples, num_samples)
    for start in sorted({0, max((num_samples - n) // 2, 0), num_samples - n}):
        digest.update(np.ascontiguousarray(recording.read(start, start + n), dtype=np.float32).tobytes())
    return digest.hexdigest()


_VOLATILE_KEYS = {"source", "provenance", "created_utc", "git_commit", "packages"}


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def make_metadata(
    model: ESortNet,
    *,
    unit_ids,
    recording: Recording | None = None,
    fingerprint: str | None = None,
    **fields,
) -> CheckpointMetadata:
    """Metadata for `model` trained on `recording` (geometry and fingerprint taken from it)."""
    if recording is not None:
        if recording.num_channels != model.num_channels:
            raise CheckpointError(
                f"model has {model.num_channels} channels but the recording has {recording.num_channels}"
            )
        fields.setdefault("channel_positions", recording.channel_positions)
        fields.setdefault("channel_ids", recording.channel_ids)
        fields.setdefault("sampling_frequency", recording.sampling_frequency)
        fields.setdefault("data_fingerprint", fingerprint or data_fingerprint(recording))
    return CheckpointMetadata(
        model_config=model.config,
        num_channels=model.num_channels,
        num_units=model.num_units,
        unit_ids=np.asarray(unit_ids),
        **fields,
    )


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': x}} → {'a.b': x} (dotted parameter paths, as used in messages)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten_tree(value, name))
        else:
            flat[name] = value
    return flat


def save_checkpoint(
    path: str | os.PathLike,
    model: ESortNet,
    metadata: CheckpointMetadata,
    *,
    opt_state: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save the model's parameters and BatchNorm statistics (and optionally the optimiser
    state) with `metadata` and the checksums of every array and data file, atomically. Returns
    the checkpoint folder. CheckpointError, before anything is written, when an array holds a
    NaN or inf."""
    if (metadata.num_channels, metadata.num_units) != (model.num_channels, model.num_units):
        raise CheckpointError(
            f"metadata describes C={metadata.num_channels}, N={metadata.num_units} but the model has "
            f"C={model.num_channels}, N={model.num_units}"
        )
    tree: dict[str, Any] = {"model": _to_numpy(nnx.to_pure_dict(nnx.state(model)))}
    if opt_state is not None:
        tree["opt_state"] = {f"{i:04d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(opt_state))}
    path = Path(path)
    arrays = flatten_tree(tree)
    bad = _nonfinite(arrays)
    if bad:
        raise CheckpointError(f"refusing to save checkpoint {path}: {bad}; a network with NaN or inf is never saved")
    checksums: dict[str, Any] = {"arrays": {name: array_checksum(a) for name, a in arrays.items()}}
    with atomic_folder(path, overwrite=overwrite) as tmp:
        # orbax wants absolute paths; with several processes only process 0 saves (train.py)
        primary_checkpointer().save((tmp / "state").resolve(), tree)
        checksums["files"] = _file_checksums(tmp / "state")
        write_json(tmp / "metadata.json", {
            **metadata.to_json(), "checksums": checksums, "provenance": metadata.provenance or provenance(),
        })
    return path


def array_checksum(array: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (C order): what checkpoints record per array."""
    a = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_checksums(state_dir: Path) -> dict[str, dict]:
    """{path under state/: {"bytes", "sha256"}} of every file orbax wrote."""
    return {
        f.relative_to(state_dir).as_posix(): {"bytes": f.stat().st_size, "sha256": _file_sha256(f)}
        for f in sorted(state_dir.rglob("*")) if f.is_file()
    }


def _nonfinite(arrays: dict[str, Any]) -> str | None:
    """'<name> holds k non-finite value(s) of n' for the first floating array with a NaN or inf."""
    for name, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind in "fc" or a.dtype == jnp.bfloat16:
            finite = np.isfinite(a.astype(np.float32) if a.dtype == jnp.bfloat16 else a)
            if not finite.all():
                return f"{name} holds {int(a.size - finite.sum())} non-finite value(s) of {a.size}"
    return None


def _to_numpy(tree):
    return jax.tree.map(lambda leaf: np.array(jax.device_get(leaf)), tree)


def read_metadata(path: str | os.PathLike) -> CheckpointMetadata:
    """The metadata of a complete checkpoint; CheckpointError for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (it does not exist or is a file)")
    meta_path = path / "metadata.json"
    if not meta_path.is_file():
        raise CheckpointError(
            f"{path} is not a valid checkpoint: metadata.json is missing (an incomplete write, or "
            "not an esort_jax checkpoint)"
        )
    if not (path / "state").is_dir():
        raise CheckpointError(f"{path} is not a valid checkpoint: the state/ folder is missing")
    try:
        data = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{meta_path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object; got {type(data).__name__}")
    return CheckpointMetadata.from_json(data, str(meta_path))


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why `path` is not a readable checkpoint (not a folder, metadata.json or state/ missing,
    invalid metadata, unreadable format version), or None when its structure is complete. The
    arrays themselves are verified when they are read (`restore_arrays`)."""
    try:
        read_metadata(path)
    except CheckpointError as error:
        return str(error)
    return None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete checkpoint folder (`checkpoint_problem` says why not)."""
    return checkpoint_problem(path) is None


def restore_arrays(path: str | os.PathLike, items: tuple[str, ...] = ("model",)) -> dict:
    """The saved array trees named in `items` ('model', 'opt_state'), as numpy, verified: every
    data file present with its saved size, every array equal to its saved checksum and finite
    (CheckpointError naming the checkpoint and the file or array otherwise)."""
    path = Path(path)
    metadata = read_metadata(path)  # refuse incomplete checkpoints
    _check_data_files(path, metadata)
    try:
        restored = _read_arrays(path, items)
    except CheckpointError:
        raise
    except Exception as error:  # orbax / tensorstore: a damaged index or data file
        raise CheckpointError(_unreadable(path, metadata, error)) from error
    arrays = flatten_tree(restored)
    _check_checksums(path, metadata, arrays)
    bad = _nonfinite(arrays)
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: {bad}; a network with NaN or inf cannot be used for sorting or "
            "fine-tuning (its training diverged)"
        )
    return restored


def _read_arrays(path: Path, items: tuple[str, ...]) -> dict:
    """The trees `items` of the orbax checkpoint in path/state, as numpy."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    state_dir = (path / "state").resolve()  # orbax wants absolute paths
    tree = checkpointer.metadata(state_dir).item_metadata.tree
    absent = [item for item in items if item not in tree]
    if absent:
        raise CheckpointError(f"{path}: checkpoint has no {absent} (it holds {sorted(tree)})")
    wanted = {item: tree[item] for item in items}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    return checkpointer.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )


def _check_data_files(path: Path, metadata: CheckpointMetadata) -> None:
    """Every file recorded at save time is under state/ with its size (version 2: a warning)."""
    files = metadata.checksums.get("files")
    if files is None:
        _warn_unverified(path, metadata.format_version)
        return
    for name, saved in files.items():
        file = path / "state" / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: missing data file state/{name}")
        size = file.stat().st_size
        if size != saved["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: data file state/{name} has {size} bytes; "
                f"{saved['bytes']} were saved (truncated or overwritten)"
            )


def _check_checksums(path: Path, metadata: CheckpointMetadata, arrays: dict[str, Any]) -> None:
    saved = metadata.checksums.get("arrays")
    if saved is None:
        return  # version 2: warned in _check_data_files
    for name, value in arrays.items():
        if name not in saved:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} has no saved checksum")
        if array_checksum(value) != saved[name]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {name} checksum mismatch (its data changed after "
                "it was saved); train it again, or use another copy"
            )


def _unreadable(path: Path, metadata: CheckpointMetadata, error: Exception) -> str:
    """The message for arrays orbax could not read: the first damaged data file if the
    checksums tell, else the reader's own error."""
    for name, saved in metadata.checksums.get("files", {}).items():
        if _file_sha256(path / "state" / name) != saved["sha256"]:
            return f"checkpoint {path} is corrupt: data file state/{name} checksum mismatch"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"checkpoint {path} is corrupt or unreadable: {type(error).__name__}: {first_line[:300]}"


@functools.lru_cache(maxsize=None)
def _warn_unverified(path: Path, version: int) -> None:
    log.warning(
        "checkpoint %s has format version %d, which records no checksums: its arrays cannot be "
        "verified (a copy saved by this esort_jax can)", path, version,
    )


def apply_model_arrays(model: ESortNet, arrays: dict, where: str = "checkpoint") -> None:
    """Write a pure-dict state (as saved under 'model') into `model`; every array must exist
    with the model's shape (CheckpointError naming the first mismatch otherwise)."""
    state = nnx.state(model)
    expected = flatten_tree(nnx.to_pure_dict(state))
    given = flatten_tree(arrays)
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: arrays do not match the model (missing {missing}, unexpected {unexpected})")
    for name, value in expected.items():
        if tuple(np.shape(given[name])) != tuple(value.shape):
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(np.shape(given[name]))}; the model expects {tuple(value.shape)}"
            )
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jax.numpy.asarray(a), arrays))
    nnx.update(model, state)


def load_model(path: str | os.PathLike) -> tuple[ESortNet, CheckpointMetadata]:
    """Rebuild the saved network for inference (eval mode: BatchNorm uses running averages)."""
    metadata = read_metadata(path)
    if metadata.input_layout != INPUT_LAYOUT:
        raise CheckpointError(
            f"{path}: checkpoint input layout {metadata.input_layout!r} != this esort_jax's {INPUT_LAYOUT!r}"
        )
    model = ESortNet(metadata.num_channels, metadata.num_units, metadata.model_config, rngs=nnx.Rngs(0))
    apply_model_arrays(model, restore_arrays(path, ("model",))["model"], str(path))
    model.eval()
    return model, metadata


# ----------------------------------------------------------------------------------------------
# Checkpoints of a training run


def epoch_checkpoint_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Valid checkpoints of a run as (completed epochs, path), oldest first. Incomplete folders
    (never finished) are skipped with a warning saying what they lack."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _EPOCH_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        problem = checkpoint_problem(entry)
        if problem is not None:
            log.warning("ignoring %s: %s", entry, problem)
            continue
        found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints of a run (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def resume_signature(train_settings: dict, model: ESortNet, windows: WindowSets, freeze: str) -> dict:
    """What a run's checkpoints must agree on to be resumed: the training settings that change the
    numbers (`train_settings`), the model config and channel count, the unit ids, the training
    windows' fingerprint and the freeze setting."""
    return {
        "train_config": train_settings,
        "model_config": to_dict(model.config),
        "num_channels": model.num_channels,
        "unit_ids": [str(u) for u in windows.unit_ids.tolist()],
        "windows_fingerprint": windows.train.fingerprint(),
        "freeze": freeze,
    }


def save_epoch_checkpoint(
    run_dir: str | os.PathLike,
    model: ESortNet,
    opt_state: Any,
    *,
    epoch: int,
    step: int,
    signature: dict,
    keep: int,
    recording: Recording,
    fingerprint: str,
    windows: WindowSets,
    extra: dict,
    **fields,
) -> Path:
    """Write checkpoint `epoch_checkpoint_path(run_dir, epoch)` of a training run (after `epoch`
    completed epochs, `step` optimiser steps): the model, the optimiser state, and metadata with
    the run's `fields` (train_config, transfer, rng) and the resume signature in `extra`. Then
    all but the newest `keep` checkpoints are deleted. Returns the checkpoint folder."""
    metadata = make_metadata(
        model,
        unit_ids=windows.unit_ids,
        recording=recording,
        fingerprint=fingerprint,
        epoch=epoch,
        step=step,
        window_config=to_dict(windows.config),
        windows_fingerprint=signature["windows_fingerprint"],
        extra={**extra, "resume_signature": signature},
        **fields,
    )
    path = epoch_checkpoint_path(run_dir, epoch)
    save_checkpoint(path, model, metadata, opt_state=opt_state, overwrite=True)
    prune_checkpoints(run_dir, keep)
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class ResumePoint:
    """Where `restore_training` continues a run: the checkpoint, its completed epochs and
    optimiser steps, the restored optimiser state, and the per-epoch metrics of the epochs run
    so far (`history`, as `train` records them; empty for checkpoints that predate it)."""

    path: Path
    epoch: int
    step: int
    opt_state: Any
    history: list = dataclasses.field(default_factory=list)


def restore_training(
    run_dir: str | os.PathLike, model: ESortNet, opt_state_like: Any, signature: dict
) -> ResumePoint | None:
    """Continue a run from its newest checkpoint: None if `run_dir` has none; else the model's
    arrays are written into `model` and the optimiser state is restored with the structure of
    `opt_state_like`. CheckpointError if the checkpoint belongs to another run (its resume
    signature differs from `signature`; the message names the first difference)."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    metadata = read_metadata(latest)
    _check_resume(latest, metadata, signature)
    try:
        arrays = restore_arrays(latest, ("model", "opt_state"))
    except CheckpointError as error:
        raise CheckpointError(
            f"cannot resume {run_dir}: {error}. Delete {latest} to resume from the checkpoint "
            "before it, or start a new run folder"
        ) from error
    apply_model_arrays(model, arrays["model"], str(latest))
    saved_leaves = [arrays["opt_state"][k] for k in sorted(arrays["opt_state"])]
    treedef = jax.tree.structure(opt_state_like)
    if treedef.num_leaves != len(saved_leaves):
        raise CheckpointError(
            f"{latest}: optimiser state has {len(saved_leaves)} arrays; this optimiser has {treedef.num_leaves}"
        )
    opt_state = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved_leaves])
    log.info("resuming %s from %s (epoch %d, step %d)", run_dir, latest, metadata.epoch, metadata.step)
    history = list(metadata.extra.get("history", []))
    return ResumePoint(path=latest, epoch=metadata.epoch, step=metadata.step, opt_state=opt_state, history=history)


def _check_resume(path: Path, metadata: CheckpointMetadata, expected: dict) -> None:
    saved = metadata.extra.get("resume_signature")
    if saved is None:
        raise CheckpointError(f"{path}: not a training checkpoint of train() (no resume signature)")
    for key, value in expected.items():
        if key == "train_config":
            for name in sorted(set(value) | set(saved[key])):
                if value.get(name) != saved[key].get(name):
                    raise CheckpointError(
                        f"cannot resume from {path}: train.{name} was {saved[key].get(name)!r}, now "
                        f"{value.get(name)!r}; use a new run folder (or the old configuration)"
                    )
        elif saved.get(key) != value:
            raise CheckpointError(
                f"cannot resume from {path}: {key} differs from the checkpoint's; the run folder "
                "belongs to another run (different data, windows, model or freeze setting)"
            )
