"""Transfer learning: fresh network for the target, restored arrays merged in by name.

    model, report = finetune_model(C, N, model_config, TransferConfig(checkpoint=...), seed=0)
    train(model, recording, windows, train_config, freeze=transfer_config.freeze, ...)

`finetune_model` always starts from a fresh initialisation for the target (its channel count C
and unit count N, seed's 'init' stream). With init='transfer' it then copies the checkpoint's
arrays layer by layer, except:
- layers matching `exclude` (default: the head -- the target has other units);
- layers whose arrays have another shape in the target: with another channel count these are
  the per-channel normalisations backbone.temporal1.norm / backbone.temporal2.norm ([C]) and
  backbone.spatial.dense ([S, F2·C]);
- a block's `norm` when its `dense` was re-initialised (backbone.spatial.norm after a new
  spatial.dense: its scale, shift and running statistics describe the old layer's outputs).
The shared temporal Dense layers (backbone.temporal1.dense, backbone.temporal2.dense) do not
depend on C and transfer across channel counts. The returned `TransferReport` lists what was
transferred and what was re-initialised and why; it is also logged. init='scratch' is the same
fine-tuning from the fresh initialisation (the baseline; same seed, so the same head).

Freezing ('none' / 'temporal' / 'backbone') is an optax mask built by `train` (see
`esort_jax.train.freeze_labels`), not a separate model.

Window length, anchor, feature sizes and the input layout must match the checkpoint; otherwise a
CheckpointError says which (e.g. "checkpoint window 60 != model window 40").
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
from flax import nnx

from esort_jax import checkpoint as ckpt
from esort_jax.config import require
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.train import FREEZE_OPTIONS, freeze_labels, init_model

__all__ = [
    "TransferConfig",
    "TransferReport",
    "check_compatible",
    "transfer_arrays",
    "finetune_model",
    "freeze_labels",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """How the fine-tuned network starts.

    Attributes:
      init: 'transfer' (restore from `checkpoint`) or 'scratch' (random init; the baseline).
      checkpoint: source checkpoint folder (required for 'transfer').
      freeze: 'none', 'temporal' or 'backbone': parameters that get no updates.
      exclude: layers never restored (dotted prefixes of parameter paths; default the head).
    """

    init: Literal["transfer", "scratch"] = "transfer"
    checkpoint: str | None = None
    freeze: Literal["none", "temporal", "backbone"] = "none"
    exclude: tuple[str, ...] = ("head",)

    def validate(self, where: str = "transfer") -> None:
        require(
            self.init in ("transfer", "scratch"), f"{where}.init",
            f"must be 'transfer' or 'scratch'; got {self.init!r}",
        )
        require(
            self.init != "transfer" or bool(self.checkpoint), f"{where}.checkpoint",
            "init='transfer' needs the source checkpoint folder",
        )
        require(
            self.freeze in FREEZE_OPTIONS, f"{where}.freeze",
            f"must be one of {list(FREEZE_OPTIONS)}; got {self.freeze!r}",
        )


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """Which layers came from the checkpoint and which were (re-)initialised, with reasons."""

    init: str
    source: str | None
    transferred: tuple[str, ...]
    reinitialised: dict[str, str]
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_compatible(metadata: ckpt.CheckpointMetadata, model_config: ModelConfig, where: str = "checkpoint") -> None:
    """CheckpointError unless the checkpoint's input contract and sizes fit `model_config`."""
    if metadata.input_layout != ckpt.INPUT_LAYOUT:
        raise ckpt.CheckpointError(
            f"{where}: checkpoint input layout {metadata.input_layout!r} != model input layout {ckpt.INPUT_LAYOUT!r}"
        )
    source = metadata.model_config
    for name in ("window", "anchor", "temporal_features", "spatial_features"):
        a, b = getattr(source, name), getattr(model_config, name)
        if tuple(np.atleast_1d(a)) != tuple(np.atleast_1d(b)):
            raise ckpt.CheckpointError(f"{where}: checkpoint {name} {a} != model {name} {b}")


_ORDER = ("backbone.temporal1.", "backbone.temporal2.", "backbone.spatial.", "head.")


def _network_order(name: str) -> tuple[int, str]:
    """Sort key: input to output (pure dicts are alphabetical: spatial before temporal)."""
    rank = next((i for i, prefix in enumerate(_ORDER) if name.startswith(prefix)), len(_ORDER))
    return rank, name


def _matches(layer: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if layer == prefix or layer.startswith(prefix + "."):
            return prefix
    return None


def transfer_arrays(
    model: ESortNet,
    source_arrays: dict,
    *,
    exclude: tuple[str, ...] = ("head",),
    source: str | None = None,
    source_metadata: ckpt.CheckpointMetadata | None = None,
) -> TransferReport:
    """Copy `source_arrays` (a saved 'model' pure dict) into `model` layer by layer (see the
    module doc for what is skipped). The model keeps its fresh values elsewhere."""
    target = ckpt.flatten_tree(nnx.to_pure_dict(nnx.state(model)))
    given = ckpt.flatten_tree(source_arrays)
    layers: dict[str, list[str]] = {}
    for name in sorted(target, key=_network_order):
        layers.setdefault(name.rsplit(".", 1)[0], []).append(name)
    src_c = source_metadata.num_channels if source_metadata is not None else None
    reasons: dict[str, str] = {}
    for layer, names in layers.items():
        excluded = _matches(layer, tuple(exclude))
        if excluded:
            reasons[layer] = f"excluded ({excluded!r} in transfer.exclude)"
            continue
        absent = [n for n in names if n not in given]
        if absent:
            reasons[layer] = f"not in the checkpoint ({absent[0]})"
            continue
        for n in names:
            if tuple(np.shape(given[n])) != tuple(target[n].shape):
                why = f"shape {tuple(target[n].shape)} != checkpoint {tuple(np.shape(given[n]))}"
                if src_c is not None and src_c != model.num_channels:
                    why += f"; channel count {src_c} -> {model.num_channels}"
                reasons[layer] = why
                break
    for layer in layers:  # a BatchNorm after a re-initialised Dense describes outputs that changed
        block, _, leaf = layer.rpartition(".")
        dense = f"{block}.dense" if block else "dense"
        if leaf == "norm" and layer not in reasons and dense in reasons:
            reasons[layer] = f"follows re-initialised {dense}"

    transferred = tuple(layer for layer in layers if layer not in reasons)
    update = {}
    for layer in transferred:
        for n in layers[layer]:
            update[n] = np.asarray(given[n])
    if update:
        state = nnx.state(model)
        pure = nnx.to_pure_dict(state)
        for dotted, value in update.items():
            node = pure
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(model, state)

    header = f"transfer from {source}" if source else "transfer"
    if source_metadata is not None:
        header += (
            f" (epoch {source_metadata.epoch}; C={source_metadata.num_channels} -> {model.num_channels}, "
            f"N={source_metadata.num_units} -> {model.num_units})"
        )
    message = (
        f"{header}: transferred {', '.join(transferred) or 'nothing'}; re-initialised "
        + (", ".join(f"{layer} ({why})" for layer, why in reasons.items()) or "nothing")
    )
    log.info(message)
    return TransferReport("transfer", source, transferred, reasons, message)


def finetune_model(
    num_channels: int,
    num_units: int,
    model_config: ModelConfig,
    config: TransferConfig,
    *,
    seed: int,
    channel_positions: np.ndarray | None = None,
) -> tuple[ESortNet, TransferReport]:
    """The network to fine-tune on a target with C channels and N units (see module doc).

    `channel_positions` (the target's, [C, 2] µm) only serve a warning: with the same channel
    count but another geometry, the spatial filter is transferred although its channels may
    mean other sites.
    """
    config.validate()
    model = init_model(num_channels, num_units, model_config, seed)
    if config.init == "scratch":
        names = sorted(ckpt.flatten_tree(nnx.to_pure_dict(nnx.state(model))), key=_network_order)
        layers = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
        message = f"scratch: every layer randomly initialised (seed {seed}); nothing transferred"
        log.info(message)
        return model, TransferReport("scratch", None, (), {layer: "scratch" for layer in layers}, message)

    metadata = ckpt.read_metadata(config.checkpoint)
    check_compatible(metadata, model_config, str(config.checkpoint))
    arrays = ckpt.restore_arrays(config.checkpoint, ("model",))["model"]
    report = transfer_arrays(
        model, arrays, exclude=config.exclude, source=str(config.checkpoint), source_metadata=metadata
    )
    if (
        channel_positions is not None
        and metadata.channel_positions is not None
        and metadata.num_channels == num_channels
        and not np.allclose(np.asarray(channel_positions, float), metadata.channel_positions)
    ):
        note = (
            " NOTE: same channel count but different channel positions than the source recording; "
            "the spatial filter was transferred anyway"
        )
        log.warning(note.strip())
        report = dataclasses.replace(report, message=report.message + ";" + note)
    return model, report
