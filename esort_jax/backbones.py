"""Pretrained backbones for the probes people use, built once with a fixed seed, picked by geometry.

    esort-backbones build np1 np2 temporal            # once; ~20 min per 384-site probe on 2 cores
    esort-backbones list                               # what is built, where, and its checksum
    pick = pick_backbone(positions_um, ModelConfig(), sampling_frequency=30000.0)
    pick.checkpoint, pick.message                      # a checkpoint folder for transfer, what was done

A backbone is the network's layers 1-3 (two shared temporal filters, the spatial filter)
pretrained from scratch (esort_jax.pipeline.fit) on a source synthesised by data_gen on the
probe's sites at the paper's pretraining density (15 000 neurons/mm³), 30 s at 30 kHz, seed
fixed (BackboneSpec). Kinds (BACKBONE_SPECS):
  np1        Neuropixels 1.0, bank 0 (384 sites)
  np2        Neuropixels 2.0, single shank (384 sites)
  temporal   the channel-count-independent temporal layers (pretrained on a 64-site NP1.0
             block; their per-channel normalisations averaged over channels), for any probe
Stored as <dir>/<name>/backbone.npz (Dense kernels float16; biases and BatchNorm statistics
float32) and manifest.json: format, version, the configs that made it (data, model, windows,
training, seed), the source's sites, the sha256 and size of backbone.npz, the build time.
`load_backbone` verifies the checksum; a mismatch is an error, never a silent use.

Picking (`pick_backbone`): among the backbones found (ESORT_BACKBONES_DIR, the user cache
~/.cache/esort_jax/backbones, then those shipped in esort_jax/backbones_data) whose network
sizes fit, one whose sites contain every channel of
the recording (positions equal up to a translation: any bank or block of a known probe) gives
its temporal layers and the spatial weights of exactly those sites; otherwise the temporal
layers alone. The result is materialised as a checkpoint folder holding only what transfers
(the rest is initialised fresh by esort_jax.transfer, which reports it), next to the backbone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from esort_jax.config import ConfigError, from_dict, to_dict
from esort_jax.model import ModelConfig

__all__ = ["BACKBONE_FORMAT", "BACKBONE_SPECS", "BackboneSpec", "Backbone", "BackbonePick", "backbone_dirs",
           "build_backbone", "save_backbone", "load_backbone", "find_backbones", "match_sites", "pick_backbone",
           "main"]

BACKBONE_FORMAT = 1
_TEMPORAL = ("backbone.temporal1.", "backbone.temporal2.")
_SIZES = ("window", "anchor", "temporal_features", "spatial_features")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How a backbone is made: the source's probe block, rate, length, density; training; seed."""

    name: str
    description: str
    probe: str = "np1"
    n_channels: int | None = None
    first_channel: int = 0
    sampling_frequency: float = 30000.0
    duration_s: float = 30.0
    density_per_mm3: float = 15000.0
    epochs: int = 8
    seed: int = 0
    temporal_only: bool = False
    version: str = "1"


BACKBONE_SPECS = {
    "np1": BackboneSpec("np1", "Neuropixels 1.0, bank 0 (384 sites)", probe="np1"),
    "np2": BackboneSpec("np2", "Neuropixels 2.0, single shank, 384 sites", probe="np2"),
    "temporal": BackboneSpec("temporal", "temporal layers for any probe (64-site NP1.0 source)", probe="np1",
                             n_channels=64, first_channel=160, temporal_only=True),
}


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A loaded backbone: float32 arrays by dotted name, its manifest, its folder."""

    arrays: dict
    manifest: dict
    folder: Path

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.manifest["model_config"], "manifest.model_config")

    @property
    def positions(self) -> np.ndarray | None:
        sites = self.manifest.get("channel_positions")
        return None if sites is None else np.asarray(sites, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class BackbonePick:
    """What `pick_backbone` chose: the checkpoint to transfer from and what it holds."""

    checkpoint: Path
    backbone: str
    version: str
    spatial: bool
    matched_channels: int
    offset_um: tuple[float, float]
    message: str
    sites: tuple[int, ...] = ()  # the backbone site of each channel (when spatial)

    def to_dict(self) -> dict:
        """JSON-able, for logs (the site list left out: `matched_channels` counts it)."""
        return {"choice": "backbone", **{k: (str(v) if isinstance(v, Path) else v)
                                         for k, v in dataclasses.asdict(self).items() if k != "sites"}}


SHIPPED = Path(__file__).resolve().parent / "backbones_data"


def backbone_dirs() -> list[Path]:
    """Where backbones are looked for, in order: $ESORT_BACKBONES_DIR, the user cache (where
    `esort-backbones build` writes), then those shipped with the package."""
    dirs = [Path(os.environ["ESORT_BACKBONES_DIR"]).expanduser()] if os.environ.get("ESORT_BACKBONES_DIR") else []
    return dirs + [user_cache(), SHIPPED]


def user_cache() -> Path:
    """~/.cache/esort_jax/backbones (honours XDG_CACHE_HOME)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "esort_jax" / "backbones"


# ----------------------------------------------------------------------------------------------
# Building and storing


def build_backbone(spec: BackboneSpec, out_dir: str | Path, *, cache_dir: str | Path,
                   model: ModelConfig | None = None, progress: bool = True) -> Path:
    """Pretrain `spec`'s network from scratch on its synthesised source (cached and resumable
    in `cache_dir`, esort_jax.runtime.artifacts) and store its backbone in out_dir/<name>/."""
    from data_gen import SynthesisConfig
    from data_gen.config import ProbeConfig, UnitsConfig
    from esort_jax import checkpoint as ckpt
    from esort_jax.io.folder import read_recording_folder
    from esort_jax.pipeline import PipelineConfig
    from esort_jax.runtime.artifacts import pretrained_checkpoint, synthesis_key, synthesised_recording
    from esort_jax.train import TrainConfig
    from esort_jax.windows import WindowConfig

    started = time.perf_counter()
    data = SynthesisConfig(
        duration_s=spec.duration_s, sampling_frequency=spec.sampling_frequency, seed=spec.seed + 1000,
        probe=ProbeConfig(name=spec.probe, n_channels=spec.n_channels, first_channel=spec.first_channel),
        units=UnitsConfig(density_per_mm3=spec.density_per_mm3),
    )
    config = PipelineConfig(model=model or ModelConfig(), windows=WindowConfig(train_fraction=1.0),
                            train=TrainConfig(epochs=spec.epochs, progress=progress))
    folder, _ = synthesised_recording(data, cache_dir)  # written once, memory-mapped for training
    source, truth = read_recording_folder(folder)
    path, _, summary = pretrained_checkpoint(source, truth, config, seed=spec.seed, cache_dir=cache_dir,
                                             data_key=synthesis_key(data))
    arrays = ckpt.flatten_tree(ckpt.restore_arrays(path)["model"])
    arrays = {k: np.asarray(v) for k, v in arrays.items() if k.startswith("backbone.")}
    if spec.temporal_only:
        arrays = channel_independent(arrays)
    manifest = {
        "name": spec.name, "version": spec.version, "description": spec.description, "spec": to_dict(spec),
        "model_config": to_dict(config.model), "data": to_dict(data), "windows": to_dict(config.windows),
        "train": to_dict(config.train), "seed": spec.seed, "sampling_frequency": spec.sampling_frequency,
        "num_channels": None if spec.temporal_only else source.num_channels,
        "channel_positions": None if spec.temporal_only else np.round(source.channel_positions, 3).tolist(),
        "source_units": truth.num_units, "training": summary, "build_seconds": time.perf_counter() - started,
    }
    return save_backbone(arrays, manifest, Path(out_dir) / spec.name)


def channel_independent(arrays: dict) -> dict:
    """The temporal layers only, their per-channel normalisations averaged over channels (so
    they apply to any channel count)."""
    out = {}
    for name, value in arrays.items():
        if name.startswith(_TEMPORAL):
            out[name] = value.mean(axis=0, keepdims=True) if ".norm." in name else value
    return out


def save_backbone(arrays: dict, manifest: dict, folder: Path) -> Path:
    """backbone.npz (kernels float16, the rest float32) and manifest.json (with the npz's
    sha256 and size), written atomically as one folder."""
    from esort_jax.io.atomic import atomic_folder, write_json

    stored = {name: value.astype(np.float16 if name.endswith(".kernel") else np.float32)
              for name, value in arrays.items()}
    with atomic_folder(folder, overwrite=True) as tmp:
        np.savez(tmp / "backbone.npz", **stored)
        blob = (tmp / "backbone.npz").read_bytes()
        write_json(tmp / "manifest.json", {
            "format": "esort_jax.backbone", "format_version": BACKBONE_FORMAT, **manifest,
            "arrays": {name: [list(value.shape), str(value.dtype)] for name, value in stored.items()},
            "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob),
        })
    return folder


def load_backbone(folder: str | Path) -> Backbone:
    """The backbone in `folder`, its checksum verified (ConfigError naming the file otherwise)."""
    folder = Path(folder)
    manifest_file, blob_file = folder / "manifest.json", folder / "backbone.npz"
    if not manifest_file.is_file() or not blob_file.is_file():
        raise ConfigError(f"{folder}: not a backbone (needs manifest.json and backbone.npz)")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != "esort_jax.backbone" or manifest.get("format_version") != BACKBONE_FORMAT:
        raise ConfigError(f"{manifest_file}: format {manifest.get('format')!r} version "
                          f"{manifest.get('format_version')!r}; this esort_jax reads esort_jax.backbone {BACKBONE_FORMAT}")
    blob = blob_file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.get("sha256"):
        raise ConfigError(f"{blob_file}: sha256 {digest} differs from the manifest's {manifest.get('sha256')}: "
                          "the file is corrupt or was changed; build it again (esort-backbones build)")
    with np.load(blob_file, allow_pickle=False) as npz:
        arrays = {name: npz[name].astype(np.float32) for name in npz.files}
    return Backbone(arrays=arrays, manifest=manifest, folder=folder)


def find_backbones(dirs: list[Path] | None = None) -> list[Path]:
    """Folders holding a backbone manifest, first directory first."""
    found = []
    for directory in backbone_dirs() if dirs is None else dirs:
        if directory.is_dir():
            found += sorted(p.parent for p in directory.glob("*/manifest.json"))
    return found


# ----------------------------------------------------------------------------------------------
# Picking by geometry


def match_sites(target_Cx2: np.ndarray, source_Sx2: np.ndarray, tolerance_um: float = 0.5):
    """(source site of each target channel, or None unless all match; offset (dx, dy) µm;
    channels matched): the translation mapping the most target sites onto source sites."""
    target, source = np.asarray(target_Cx2, float), np.asarray(source_Sx2, float)
    if not (np.all(np.isfinite(target)) and len(target)):
        return None, (0.0, 0.0), 0
    sites = {tuple(p): i for i, p in enumerate(np.round(source / tolerance_um).astype(np.int64).tolist())}
    best = (0, None, (0.0, 0.0))
    anchors = target[[0, len(target) // 2, -1]]  # candidate translations put one of these on a site
    offsets = np.unique(np.round((source[None, :, :] - anchors[:, None, :]).reshape(-1, 2), 3), axis=0)
    # smallest translation first: the recording's own coordinates when they are the probe's (a
    # regular grid matches a block at several offsets, all with the same layout)
    for offset in offsets[np.argsort(np.hypot(offsets[:, 0], offsets[:, 1]), kind="stable")]:
        shifted = np.round((target + offset) / tolerance_um).astype(np.int64).tolist()
        index = [sites.get(tuple(p)) for p in shifted]
        count = sum(i is not None for i in index)
        if count > best[0]:
            best = (count, index, (float(offset[0]), float(offset[1])))
        if count == len(target):
            break
    count, index, offset = best
    return (np.asarray(index, dtype=np.int64) if count == len(target) else None), offset, count


def target_arrays(backbone: Backbone, num_channels: int, sites: np.ndarray | None) -> dict:
    """The backbone's arrays for a recording of `num_channels` channels: per-channel
    normalisations of the matched `sites` (or the channel average broadcast), and the spatial
    filter's columns of those sites (feature-major: column f·C + c); no spatial layer when
    `sites` is None."""
    out = {}
    for name, value in backbone.arrays.items():
        if name.startswith(_TEMPORAL) and ".norm." in name:
            out[name] = value[sites] if sites is not None else np.repeat(value.mean(keepdims=True), num_channels)
        elif name.startswith(_TEMPORAL):
            out[name] = value
        elif sites is not None and name == "backbone.spatial.dense.kernel":
            features = backbone.model_config.temporal_features[1]
            out[name] = value.reshape(value.shape[0], features, -1)[:, :, sites].reshape(value.shape[0], -1)
        elif sites is not None:
            out[name] = value
    return out


def write_transfer_checkpoint(arrays: dict, backbone: Backbone, positions: np.ndarray, folder: Path) -> Path:
    """A checkpoint folder holding only `arrays` (no head: esort_jax.transfer initialises what
    is absent and says so), for `positions`' channels."""
    import orbax.checkpoint as ocp

    from esort_jax import checkpoint as ckpt
    from esort_jax.io.atomic import atomic_folder, write_json
    from esort_jax.runtime.provenance import provenance

    tree: dict = {}
    for name, value in arrays.items():
        node = tree
        *parents, leaf = name.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = np.asarray(value, dtype=np.float32)
    metadata = ckpt.CheckpointMetadata(
        model_config=backbone.model_config, num_channels=len(positions), num_units=0, unit_ids=np.zeros(0),
        channel_positions=positions, sampling_frequency=backbone.manifest.get("sampling_frequency"),
        extra={"role": "backbone", "backbone": backbone.name, "version": backbone.manifest["version"],
               "sha256": backbone.manifest["sha256"]},
    )
    # the checksums save_checkpoint records, so loading verifies this folder as any other
    checksums: dict = {"arrays": {name: ckpt.array_checksum(a) for name, a in
                                  ckpt.flatten_tree({"model": tree}).items()}}
    with atomic_folder(folder, overwrite=True) as tmp:
        ocp.PyTreeCheckpointer().save((tmp / "state").resolve(), {"model": tree})
        checksums["files"] = ckpt._file_checksums(tmp / "state")
        write_json(tmp / "metadata.json", {**metadata.to_json(), "checksums": checksums, "provenance": provenance()})
    return folder


def _fits(backbone: Backbone, model: ModelConfig) -> bool:
    source = backbone.model_config
    return all(tuple(np.atleast_1d(getattr(source, k))) == tuple(np.atleast_1d(getattr(model, k))) for k in _SIZES)


def _best_match(backbones: list[Backbone], positions: np.ndarray):
    """(backbone, sites, offset) of the spatial backbone containing every channel, or None."""
    for backbone in backbones:
        if backbone.positions is None:
            continue
        sites, offset, _ = match_sites(positions, backbone.positions)
        if sites is not None:
            return backbone, sites, offset
    return None


def pick_backbone(positions_um: np.ndarray, model: ModelConfig, *, sampling_frequency: float | None = None,
                  dirs: list[Path] | None = None, spatial_only: bool = False) -> BackbonePick | None:
    """The transfer checkpoint from the best backbone for a recording with these channel
    positions (module doc), or None when no backbone fits the network sizes (or, with
    `spatial_only`, when none holds every channel's site)."""
    positions = np.asarray(positions_um, dtype=np.float64)
    backbones = [b for b in (load_backbone(f) for f in find_backbones(dirs)) if _fits(b, model)]
    if not backbones:
        return None
    match = _best_match(backbones, positions) if np.all(np.isfinite(positions)) else None
    if match is None and spatial_only:
        return None
    temporal = next((b for b in backbones if b.positions is None), backbones[0])
    backbone, sites, offset = match if match else (temporal, None, (0.0, 0.0))
    arrays = target_arrays(backbone, len(positions), sites)
    key = hashlib.sha256(json.dumps([backbone.manifest["sha256"], None if sites is None else sites.tolist(),
                                     len(positions)]).encode()).hexdigest()[:16]
    folder = write_transfer_checkpoint(arrays, backbone, positions, user_cache() / "_targets" / key)
    what = (f"temporal layers and the spatial weights of the {len(positions)} matching sites (offset "
            f"{offset[0]:g}, {offset[1]:g} µm)" if sites is not None else
            "the temporal layers only (no backbone holds every channel's site; the spatial filter starts fresh)")
    message = f"backbone {backbone.name} v{backbone.manifest['version']} ({backbone.manifest['description']}): {what}"
    fs = backbone.manifest.get("sampling_frequency")
    if sampling_frequency and fs and abs(sampling_frequency - fs) > 0.01 * fs:
        message += f"; NOTE: built at {fs:g} Hz, the recording is at {sampling_frequency:g} Hz"
    return BackbonePick(checkpoint=folder, backbone=backbone.name, version=backbone.manifest["version"],
                        spatial=sites is not None, matched_channels=0 if sites is None else len(sites),
                        offset_um=offset, message=message, sites=() if sites is None else tuple(sites.tolist()))


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """esort-backbones build|list (see the module doc)."""
    parser = argparse.ArgumentParser(prog="esort-backbones", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="pretrain and store backbones (fixed seed)")
    build.add_argument("names", nargs="*", default=list(BACKBONE_SPECS), choices=list(BACKBONE_SPECS))
    build.add_argument("--out", type=Path, default=user_cache(), help="where to store them (default: %(default)s)")
    build.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("ESORT_CACHE_DIR", "cache")),
                       help="pretraining cache: source recordings, resumable training (default: %(default)s)")
    build.add_argument("--epochs", type=int, default=None, help="override the spec's epochs (recorded)")
    listing = commands.add_parser("list", help="the backbones found, verified")
    listing.add_argument("--dir", type=Path, action="append", default=None)
    args = parser.parse_args(argv)
    if args.command == "build":
        for name in args.names:
            spec = BACKBONE_SPECS[name]
            if args.epochs is not None:
                spec = dataclasses.replace(spec, epochs=args.epochs)
            folder = build_backbone(spec, args.out, cache_dir=args.cache_dir)
            manifest = load_backbone(folder).manifest
            print(f"{name}: {folder} ({manifest['size_bytes'] / 1e6:.2f} MB, sha256 {manifest['sha256'][:12]}, "
                  f"built in {manifest['build_seconds']:.0f} s)")
        return
    for folder in find_backbones(args.dir):
        backbone = load_backbone(folder)
        manifest = backbone.manifest
        print(f"{backbone.name} v{manifest['version']}: {folder} ({manifest['size_bytes'] / 1e6:.2f} MB, sha256 "
              f"{manifest['sha256'][:12]} verified): {manifest['description']}")


if __name__ == "__main__":
    main()
