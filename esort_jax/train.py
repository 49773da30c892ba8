"""Training: BCE on logits, optax, Flax NNX split into graph + state around jitted steps.

    model = init_model(C, N, model_config, seed)            # or transfer.finetune_model(...)
    result = train(model, recording, windows, train_config, run_dir="runs/x",
                   freeze="none", callback=lambda epoch, metrics: ...)

The training state is a pytree of plain arrays, {"params", "batch_stats", "opt_state", "step"}
(pure dicts with the module's names, see `nnx.to_pure_dict`), so the steps are pure functions
and the buffers are donated. Per epoch: a fresh order of the training windows from
fold_in(shuffle key, epoch); one jitted step per batch; the mean BCE loss; window-level metrics
on the validation windows (eval mode, threshold 0.5 on the sigmoid); a checkpoint every
`checkpoint_every_epochs`; then `callback(epoch, metrics)`.

Data parallel: a 1-D mesh over the devices ('data'); batches are sharded on 'data', parameters,
optimiser state and resident traces are replicated. Everything is one jit program over global
arrays, so BatchNorm's batch mean/variance are GLOBAL batch statistics (XLA inserts the
all-reduce): 1 device and 4 devices compute the same step up to float rounding.

Data paths (`data_on_device`): 'auto' keeps the span of the recording that the training windows
touch resident on every device when it fits `device_bytes_budget`, and cuts windows inside the
jitted step (vmap of dynamic_slice; no host work per step); otherwise windows are gathered on
the host from the memory-mapped recording by a background thread, `prefetch_batches` ahead.

Speed on CPU (benchmarks/bench_train.py): call `configure_host_allocator()` at program start,
before JAX computes anything; without it XLA page-faults its ~240 MB of per-step temporaries
again every step (paper sizes), which costs a third of the step. The model's training
formulation (feature-major temporal filters, custom VJPs; esort_jax.model) and the time-major
window gather avoid transposing the 94 MB window batch.

Resuming: with a `run_dir`, each checkpoint holds parameters, BatchNorm statistics, the optimiser
state, the epoch/step and the run's rng info. `train` called again with the same configuration
and an identically initialised model continues from the latest checkpoint and ends with the same
parameters as an uninterrupted run (the data order depends only on (seed, epoch)).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esort_jax import checkpoint as ckpt
from esort_jax.fast import native
from esort_jax.config import ConfigError, require, to_dict
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.recording import Recording
from esort_jax.windows import (
    DeviceTraces,
    Prefetcher,
    WindowSet,
    WindowSets,
    epoch_order,
    gather_device,
    gather_host,
    span_bytes,
    steps_per_epoch,
)

__all__ = [
    "configure_host_allocator",
    "TrainConfig",
    "TrainResult",
    "FREEZE_OPTIONS",
    "rng_streams",
    "init_model",
    "freeze_labels",
    "make_optimizer",
    "init_train_state",
    "make_mesh",
    "make_train_step",
    "make_eval_step",
    "evaluate_windows",
    "window_metrics",
    "train",
]

log = logging.getLogger(__name__)

FREEZE_OPTIONS = ("none", "temporal", "backbone")
# Keys of TrainConfig that do not change the numbers a run computes: a run may be resumed with
# other values for these.
_RESUME_IGNORED = (
    "log_every_steps", "checkpoint_every_epochs", "keep_checkpoints", "data_on_device",
    "device_bytes_budget", "prefetch_batches", "stop_after_epochs", "progress", "kernel",
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings.

    Attributes:
      epochs: passes over the training windows (paper: 50).
      batch_size: global batch (paper: 1024); must divide by the number of devices.
      learning_rate: peak learning rate (paper: 5e-3).
      optimizer: 'adam' or 'adamw' (decoupled weight decay on Dense kernels only).
      weight_decay: AdamW's decay (requires optimizer='adamw').
      schedule: 'constant' or 'cosine' (decay to final_lr_fraction · lr at the last step).
      warmup_epochs: linear warm-up from 0 over this many epochs (fractions allowed).
      final_lr_fraction: the cosine schedule's end value relative to learning_rate.
      seed: root of the run's key streams (shuffling; `init_model` uses the 'init' stream).
      log_every_steps: fetch the loss (one device sync) every this many steps.
      checkpoint_every_epochs: checkpoint cadence when a run folder is given (the last epoch
        is always saved).
      keep_checkpoints: how many of the newest checkpoints to keep (0: all).
      data_on_device: 'auto', 'always' or 'never' keep the training span resident on device.
      device_bytes_budget: resident traces allowed per device in 'auto' mode.
      prefetch_batches: host path: batches prepared ahead by the background thread.
      stop_after_epochs: stop once this many epochs are complete (the run can be resumed).
      progress: show a tqdm progress bar.
      kernel: how the train step computes layer 1. 'xla': gather the batch's windows, then
        matrix products (any backend, any device count); 'native': the C++ kernel of
        esort_jax.fast.native reads the windows in place from the traces (one CPU device, float32;
        an error if it cannot be used); 'auto' (default): 'native' where it can be used.
    """

    epochs: int = 50
    batch_size: int = 1024
    learning_rate: float = 5e-3
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    final_lr_fraction: float = 0.0
    seed: int = 0
    log_every_steps: int = 20
    checkpoint_every_epochs: int = 1
    keep_checkpoints: int = 2
    data_on_device: Literal["auto", "always", "never"] = "auto"
    device_bytes_budget: int = 2 * 1024**3
    prefetch_batches: int = 2
    stop_after_epochs: int | None = None
    progress: bool = True
    kernel: Literal["auto", "xla", "native"] = "auto"

    def validate(self, where: str = "train") -> None:
        require(self.epochs >= 1, f"{where}.epochs", f"must be >= 1; got {self.epochs}")
        require(self.batch_size >= 1, f"{where}.batch_size", f"must be >= 1; got {self.batch_size}")
        require(self.learning_rate > 0, f"{where}.learning_rate", f"must be > 0; got {self.learning_rate}")
        require(
            self.optimizer in ("adam", "adamw"), f"{where}.optimizer",
            f"must be 'adam' or 'adamw'; got {self.optimizer!r}",
        )
        require(self.weight_decay >= 0, f"{where}.weight_decay", f"must be >= 0; got {self.weight_decay}")
        require(
            self.weight_decay == 0 or self.optimizer == "adamw", f"{where}.weight_decay",
            "needs optimizer 'adamw' (Adam with L2 in the loss is not offered)",
        )
        require(
            self.schedule in ("constant", "cosine"), f"{where}.schedule",
            f"must be 'constant' or 'cosine'; got {self.schedule!r}",
        )
        require(
            0 <= self.warmup_epochs < self.epochs, f"{where}.warmup_epochs",
            f"must lie in [0, epochs={self.epochs}); got {self.warmup_epochs}",
        )
        require(
            0 <= self.final_lr_fraction <= 1, f"{where}.final_lr_fraction",
            f"must lie in [0, 1]; got {self.final_lr_fraction}",
        )
        require(self.log_every_steps >= 1, f"{where}.log_every_steps", "must be >= 1")
        require(self.checkpoint_every_epochs >= 1, f"{where}.checkpoint_every_epochs", "must be >= 1")
        require(self.keep_checkpoints >= 0, f"{where}.keep_checkpoints", "must be >= 0 (0 keeps all)")
        require(
            self.data_on_device in ("auto", "always", "never"), f"{where}.data_on_device",
            f"must be 'auto', 'always' or 'never'; got {self.data_on_device!r}",
        )
        require(self.device_bytes_budget >= 0, f"{where}.device_bytes_budget", "must be >= 0")
        require(self.prefetch_batches >= 1, f"{where}.prefetch_batches", "must be >= 1")
        require(
            self.stop_after_epochs is None or self.stop_after_epochs >= 1, f"{where}.stop_after_epochs",
            f"must be >= 1 or null; got {self.stop_after_epochs}",
        )
        require(
            self.kernel in ("auto", "xla", "native"), f"{where}.kernel",
            f"must be 'auto', 'xla' or 'native'; got {self.kernel!r}",
        )


@dataclasses.dataclass(eq=False)
class TrainResult:
    """What `train` returns.

    Attributes:
      model: the trained network (the object passed in, updated; left in eval mode).
      history: per-epoch metrics dicts of the epochs run in this call.
      epochs_completed: total completed epochs (including those of a resumed run).
      resumed_from: the checkpoint the run continued from (None for a fresh start).
      checkpoint: the newest checkpoint written (None without a run folder).
      finished: True when all `epochs` are complete (False after `stop_after_epochs`).
    """

    model: ESortNet
    history: list[dict]
    epochs_completed: int
    resumed_from: Path | None
    checkpoint: Path | None
    finished: bool


# ----------------------------------------------------------------------------------------------
# Host memory


def configure_host_allocator() -> bool:
    """Make glibc malloc keep and reuse freed memory (one arena, no mmap, no trimming).

    XLA on CPU allocates each step's temporaries (~240 MB for a paper-sized batch) afresh; glibc
    serves allocations that large with mmap and returns them with munmap, so every step
    page-faults all of it again (~60 000 faults per step, 30-40 % of the step time on this
    machine kind). With these settings the memory stays mapped and is reused: zero faults
    per step. The cost: the process keeps its peak heap (fine for a training run).

    Must run before JAX starts its CPU backend (before the first computation); it returns
    False and changes nothing when not on glibc. Equivalent environment for launchers:
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc malloc.h
    ok = mallopt(M_ARENA_MAX, 1) == 1
    ok &= mallopt(M_MMAP_MAX, 0) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok)


# ----------------------------------------------------------------------------------------------
# Keys, model, optimiser


def rng_streams(seed: int) -> dict[str, jax.Array]:
    """Named key streams derived from one root key: 'init' (parameters) and 'shuffle'."""
    root = jax.random.key(seed)
    return {"init": jax.random.fold_in(root, 0), "shuffle": jax.random.fold_in(root, 1)}


def init_model(num_channels: int, num_units: int, config: ModelConfig, seed: int) -> ESortNet:
    """A freshly initialised network from the seed's 'init' stream."""
    config.validate()
    return ESortNet(num_channels, num_units, config, rngs=nnx.Rngs(params=rng_streams(seed)["init"]))


def freeze_labels(params: dict, freeze: str) -> dict:
    """'trainable' / 'frozen' for every parameter (same tree as `params`).

    'none' trains everything; 'temporal' freezes backbone.temporal1 and backbone.temporal2
    (Dense and normalisation scale/shift); 'backbone' freezes all of backbone. The head always
    trains. BatchNorm layers still normalise with batch statistics and update their running
    averages in training mode (as in PyTorch with requires_grad=False).
    """
    if freeze not in FREEZE_OPTIONS:
        raise ConfigError(f"transfer.freeze: must be one of {list(FREEZE_OPTIONS)}; got {freeze!r}")
    frozen_prefixes = {
        "none": (),
        "temporal": (("backbone", "temporal1"), ("backbone", "temporal2")),
        "backbone": (("backbone",),),
    }[freeze]

    def label(path, _):
        names = tuple(getattr(p, "key", getattr(p, "name", None)) for p in path)
        return "frozen" if any(names[: len(q)] == q for q in frozen_prefixes) else "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params: dict) -> dict:
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(config: TrainConfig, steps_each_epoch: int) -> optax.Schedule:
    total = config.epochs * steps_each_epoch
    warmup = int(round(config.warmup_epochs * steps_each_epoch))
    peak = config.learning_rate
    if config.schedule == "cosine":
        if warmup:
            return optax.warmup_cosine_decay_schedule(
                0.0, peak, warmup, total, end_value=peak * config.final_lr_fraction
            )
        return optax.cosine_decay_schedule(peak, total, alpha=config.final_lr_fraction)
    if warmup:
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
        )
    return optax.constant_schedule(peak)


def make_optimizer(config: TrainConfig, params: dict, steps_each_epoch: int, freeze: str = "none"):
    """Adam / AdamW with the configured schedule; frozen parameters get zero updates.

    Equal settings return the same transformation object, so `make_train_step` can reuse a
    compiled step across `train` calls (sweeps, tests)."""
    settings = tuple(
        getattr(config, name)
        for name in ("epochs", "learning_rate", "optimizer", "weight_decay", "schedule", "warmup_epochs", "final_lr_fraction")
    )
    return _optimizer(settings, steps_each_epoch, freeze, jax.tree.structure(params))


@functools.lru_cache(maxsize=64)
def _optimizer(settings: tuple, steps_each_epoch: int, freeze: str, treedef):
    config = TrainConfig(**dict(zip(
        ("epochs", "learning_rate", "optimizer", "weight_decay", "schedule", "warmup_epochs", "final_lr_fraction"),
        settings,
    )))
    params = jax.tree.unflatten(treedef, [0] * treedef.num_leaves)
    schedule = learning_rate_schedule(config, steps_each_epoch)
    if config.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask(params))
    else:
        tx = optax.adam(schedule)
    labels = freeze_labels(params, freeze)
    if freeze != "none":
        tx = optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def init_train_state(model: ESortNet, tx: optax.GradientTransformation) -> dict:
    """{"params", "batch_stats", "opt_state", "step"} as pure dicts of arrays."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return {
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh ('data',) over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


# ----------------------------------------------------------------------------------------------
# Steps


def _graphdefs(model: ESortNet):
    model.train()
    train_graph = nnx.graphdef(model)
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    return train_graph, eval_graph


def resolve_kernel(kernel: str, model: ESortNet, mesh: Mesh, where: str = "train.kernel") -> str:
    """'xla' or 'native': what `kernel` ('auto', 'xla', 'native') means for this model on this
    mesh; ValueError if 'native' was asked for and cannot be used (the message says why)."""
    if kernel not in ("auto", "xla", "native"):
        raise ValueError(f"{where} must be 'auto', 'xla' or 'native'; got {kernel!r}")
    if kernel == "xla":
        return "xla"
    devices = list(mesh.devices.flat)
    features = int(model.config.temporal_features[0])
    obstacle = None
    if len(devices) != 1:
        obstacle = f"{len(devices)} devices (the native kernel runs on one; data-parallel training uses XLA)"
    elif devices[0].platform != "cpu":
        obstacle = f"the device is {devices[0].platform} (the native kernel is CPU only)"
    elif jnp.dtype(model.config.dtype) != jnp.float32:
        obstacle = f"model dtype is {model.config.dtype} (the native kernel is float32)"
    elif features not in native.WINDOW_DENSE_FEATURES:
        obstacle = f"no native kernel for {features} first-layer features (compiled for {sorted(native.WINDOW_DENSE_FEATURES)})"
    else:
        obstacle = native.unavailable_reason()
        if obstacle and kernel == "auto":
            log.warning("the native CPU kernel is unavailable (%s); training uses the XLA path", obstacle)
    if obstacle and kernel == "native":
        raise ValueError(f"{where} = 'native' cannot be used: {obstacle}")
    return "xla" if obstacle else "native"


def _update(graphdef, tx, state, batch, y_BxN):
    """One optimiser step. `batch`: windows [W, B, C] (XLA path), or (rows [R, C], starts [B],
    row_stride) describing them for the native kernel (`ESortNet.logits_from_rows`)."""
    if isinstance(batch, tuple):
        rows_RxC, starts_B, row_stride = batch
        forward = lambda model: model.logits_from_rows(rows_RxC, starts_B, row_stride)  # noqa: E731
    else:
        # Windows arrive as [W, B, C]; the transpose to the model's [B, W, C] cancels against
        # the model's own transpose to [W, B, C] (see esort_jax.model.contract_leading).
        x_BxWxC = jnp.transpose(batch, (1, 0, 2))
        forward = lambda model: model(x_BxWxC)  # noqa: E731

    def loss_fn(params, batch_stats):
        model = nnx.merge(graphdef, params, batch_stats)
        logits_BxN = forward(model)
        loss = optax.sigmoid_binary_cross_entropy(logits_BxN, y_BxN.astype(jnp.float32)).mean()
        return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"]
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "batch_stats": batch_stats,
        "opt_state": opt_state,
        "step": state["step"] + 1,
    }
    return new_state, loss


def _batch_indices(order, step, batch_size, mesh):
    """Window indices [B] of batch `step` of the epoch order, split over the devices."""
    idx_B = jax.lax.dynamic_slice_in_dim(order, step * batch_size, batch_size)
    return jax.lax.with_sharding_constraint(idx_B, NamedSharding(mesh, PartitionSpec("data")))


def _take_batch(data, order, step, batch_size, window, mesh):
    """Indices of batch `step` of the epoch order → (windows [W, B, C], labels), cut on device."""
    idx_B = _batch_indices(order, step, batch_size, mesh)
    x_WxBxC = gather_device(data["traces"], data["starts"][idx_B], window, layout="WBC")
    x_WxBxC = jax.lax.with_sharding_constraint(x_WxBxC, _window_sharding(mesh))
    return x_WxBxC, data["labels"][idx_B]


def _window_sharding(mesh: Mesh) -> NamedSharding:
    """Windows [W, B, C] split over devices along the batch axis."""
    return NamedSharding(mesh, PartitionSpec(None, "data"))


def make_train_step(model: ESortNet, tx, mesh: Mesh, *, batch_size: int, resident: bool, kernel: str = "auto"):
    """The jitted step. Resident: step(state, data, order, i) cuts batch i of `order` from
    data = {"traces" [T, C], "starts" [M] (relative to traces), "labels" [M, N]}. Host:
    step(state, x [W, B, C], y [B, N]) (windows time-major, batch second; see
    `gather_host(..., layout="WBC")`). Both return (new state, loss); `state` is donated.
    `kernel`: see `TrainConfig.kernel` (resolved here by `resolve_kernel`)."""
    graphdef, _ = _graphdefs(model)
    kernel = resolve_kernel(kernel, model, mesh)
    return _train_step(graphdef, tx, mesh, batch_size, resident, model.config.window, kernel)


@functools.lru_cache(maxsize=32)
def _train_step(graphdef, tx, mesh, batch_size, resident, window, kernel):
    replicated = NamedSharding(mesh, PartitionSpec())

    if resident and kernel == "native":
        def step(state, data, order, i):
            idx_B = _batch_indices(order, i, batch_size, mesh)
            batch = (data["traces"], data["starts"][idx_B], 1)
            return _update(graphdef, tx, state, batch, data["labels"][idx_B])
    elif resident:
        def step(state, data, order, i):
            x, y = _take_batch(data, order, i, batch_size, window, mesh)
            return _update(graphdef, tx, state, x, y)
    elif kernel == "native":
        def step(state, x, y):
            w, b, c = x.shape  # windows [W, B, C] as rows [W·B, C]: sample w of window b is row w·B + b
            batch = (x.reshape(w * b, c), jnp.arange(b, dtype=jnp.int32), b)
            return _update(graphdef, tx, state, batch, y)
    else:
        def step(state, x, y):
            return _update(graphdef, tx, state, x, y)

    return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def _counts(graphdef, params, batch_stats, x_WxBxC, y_BxN, valid_B):
    model = nnx.merge(graphdef, params, batch_stats)
    logits = model(jnp.transpose(x_WxBxC, (1, 0, 2)))
    truth = y_BxN.astype(bool)
    pred = logits > 0.0  # sigmoid(logit) > 0.5
    valid = valid_B[:, None]
    loss = optax.sigmoid_binary_cross_entropy(logits, y_BxN.astype(jnp.float32)).mean(axis=1)
    return jnp.stack(
        [
            jnp.sum(pred & truth & valid),
            jnp.sum(pred & ~truth & valid),
            jnp.sum(~pred & truth & valid),
            jnp.sum(~pred & ~truth & valid),
            jnp.sum(jnp.all(pred == truth, axis=1) & valid_B),
            jnp.sum(valid_B),
        ]
    ).astype(jnp.float32), jnp.sum(jnp.where(valid_B, loss, 0.0))


def make_eval_step(model: ESortNet, mesh: Mesh, *, batch_size: int, resident: bool):
    """Jitted eval-mode counts for one batch: ([tp, fp, fn, tn, exact, n], loss sum).
    Resident: fn(params, batch_stats, data, order, i, valid_B); host: fn(params, batch_stats,
    x [W, B, C], y, valid_B)."""
    _, graphdef = _graphdefs(model)
    return _eval_step(graphdef, mesh, batch_size, resident, model.config.window)


@functools.lru_cache(maxsize=32)
def _eval_step(graphdef, mesh, batch_size, resident, window):
    replicated = NamedSharding(mesh, PartitionSpec())

    if resident:
        def fn(params, batch_stats, data, order, i, valid_B):
            x, y = _take_batch(data, order, i, batch_size, window, mesh)
            return _counts(graphdef, params, batch_stats, x, y, valid_B)
    else:
        def fn(params, batch_stats, x, y, valid_B):
            return _counts(graphdef, params, batch_stats, x, y, valid_B)

    return jax.jit(fn, out_shardings=(replicated, replicated))


def window_metrics(counts: np.ndarray, loss_sum: float) -> dict[str, float]:
    """Window-level metrics from [tp, fp, fn, tn, exact, n] (entries are (window, unit) pairs).

    precision = tp / (tp + fp), recall = tp / (tp + fn) (0 when undefined), accuracy = correct
    (window, unit) entries / all entries (dominated by negatives when N is large), exact_match =
    windows whose whole label vector is right, loss = mean BCE.
    """
    tp, fp, fn, tn, exact, n = (float(c) for c in counts)
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": (tp + tn) / (tp + fp + fn + tn) if n else 0.0,
        "exact_match": exact / n if n else 0.0,
        "loss": loss_sum / n if n else 0.0,
        "windows": int(n),
    }


# ----------------------------------------------------------------------------------------------
# Feeding windows


class _Feeder:
    """Batches of one WindowSet, resident on device or gathered on the host."""

    def __init__(self, recording, windows: WindowSet, mesh, *, batch_size, resident, prefetch):
        self.windows = windows
        self.recording = recording
        self.batch_size = batch_size
        self.prefetch = prefetch
        self.resident = resident
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self.window_sharding = _window_sharding(mesh)
        self.steps = steps_per_epoch(len(windows), batch_size)
        self.data = None
        if resident:
            start, stop = windows.span()
            traces = DeviceTraces.load(recording, start, stop, self.replicated)
            self.data = {
                "traces": traces.traces,
                "starts": jax.device_put((windows.starts - start).astype(np.int32), self.replicated),
                "labels": jax.device_put(windows.labels, self.replicated),
            }

    def host_batches(self, order: np.ndarray) -> Prefetcher:
        """Background-gathered (x, y) device batches following `order` (host path)."""
        B = self.batch_size

        def produce(i):
            idx = order[i * B : (i + 1) * B]
            x = gather_host(self.recording, self.windows.starts[idx], self.windows.window, layout="WBC")
            y = self.windows.labels[idx]
            return jax.device_put(x, self.window_sharding), jax.device_put(y, self.batch_sharding)

        return Prefetcher(produce, self.steps, depth=self.prefetch)


def _plan_residency(config: TrainConfig, recording: Recording, sets: list[WindowSet]) -> list[bool]:
    """Which window sets get their span resident on device (in order, within the budget)."""
    budget = config.device_bytes_budget
    plan = []
    for windows in sets:
        need = span_bytes(windows.span(), recording.num_channels)
        if config.data_on_device == "always":
            plan.append(True)
        elif config.data_on_device == "never" or not len(windows):
            plan.append(False)
        else:
            fits = need <= budget
            budget -= need if fits else 0
            plan.append(fits)
    return plan


def _evaluate(model, eval_step, feeder: _Feeder, state) -> dict[str, float]:
    """Window metrics over a feeder's windows (sequential order, last batch padded)."""
    if not len(feeder.windows):
        return {}
    M, B = len(feeder.windows), feeder.batch_size
    positions = np.arange(feeder.steps * B)
    order_np = (positions % M).astype(np.int32)
    valid_np = positions < M
    counts = jnp.zeros(6, jnp.float32)
    loss_sum = jnp.zeros((), jnp.float32)
    params, stats = state["params"], state["batch_stats"]
    if feeder.resident:
        order = jax.device_put(order_np, feeder.replicated)
        for i in range(feeder.steps):
            valid = jax.device_put(valid_np[i * B : (i + 1) * B], feeder.batch_sharding)
            c, l = eval_step(params, stats, feeder.data, order, i, valid)
            counts, loss_sum = counts + c, loss_sum + l
    else:
        with feeder.host_batches(order_np) as batches:
            for i, (x, y) in enumerate(batches):
                valid = jax.device_put(valid_np[i * B : (i + 1) * B], feeder.batch_sharding)
                c, l = eval_step(params, stats, x, y, valid)
                loss_sum.block_until_ready()  # at most two batches in flight
                counts, loss_sum = counts + c, loss_sum + l
    return window_metrics(np.asarray(counts), float(loss_sum))


def evaluate_windows(
    model: ESortNet,
    recording: Recording,
    windows: WindowSet,
    *,
    batch_size: int = 1024,
    devices=None,
    data_on_device: bool | None = None,
    device_bytes_budget: int = 2 * 1024**3,
) -> dict[str, float]:
    """Window-level precision / recall / accuracy / exact match of `model` (eval mode) on
    `windows` (e.g. `WindowSets.validation`, or `balanced_windows` on the evaluation span)."""
    mesh = make_mesh(devices)
    _check_batch(batch_size, mesh)
    if windows.window != model.config.window or windows.num_units != model.num_units:
        raise ValueError(
            f"windows are W={windows.window}, N={windows.num_units}; the model is "
            f"W={model.config.window}, N={model.num_units}"
        )
    if data_on_device is None:
        data_on_device = span_bytes(windows.span(), recording.num_channels) <= device_bytes_budget
    feeder = _Feeder(recording, windows, mesh, batch_size=batch_size, resident=data_on_device, prefetch=2)
    state = jax.device_put(
        {
            "params": nnx.to_pure_dict(nnx.state(model, nnx.Param)),
            "batch_stats": nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
        },
        NamedSharding(mesh, PartitionSpec()),
    )
    metrics = _evaluate(model, make_eval_step(model, mesh, batch_size=batch_size, resident=data_on_device), feeder, state)
    model.eval()
    return metrics


def _check_batch(batch_size: int, mesh: Mesh) -> None:
    devices = mesh.devices.size
    if batch_size % devices:
        raise ConfigError(
            f"train.batch_size: {batch_size} does not divide by the {devices} devices of the data "
            f"mesh; use a multiple of {devices}"
        )


# ----------------------------------------------------------------------------------------------
# The loop


def _write_state_into(model: ESortNet, state: dict) -> None:
    """Copy the (possibly replicated) training state into the module, on the default device."""
    host = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    nnx.update(model, jax.tree.map(jnp.asarray, host["params"]), jax.tree.map(jnp.asarray, host["batch_stats"]))


def _resume_signature(config: TrainConfig, model: ESortNet, windows: WindowSets, freeze: str) -> dict:
    return {
        "train_config": {k: v for k, v in to_dict(config).items() if k not in _RESUME_IGNORED},
        "model_config": to_dict(model.config),
        "num_channels": model.num_channels,
        "unit_ids": [str(u) for u in windows.unit_ids.tolist()],
        "windows_fingerprint": windows.train.fingerprint(),
        "freeze": freeze,
    }


def _check_resume(path: Path, meta: ckpt.CheckpointMetadata, expected: dict) -> None:
    saved = meta.extra.get("resume_signature")
    if saved is None:
        raise ckpt.CheckpointError(f"{path}: not a training checkpoint of train() (no resume signature)")
    for key, value in expected.items():
        if key == "train_config":
            for name in sorted(set(value) | set(saved[key])):
                if value.get(name) != saved[key].get(name):
                    raise ckpt.CheckpointError(
                        f"cannot resume from {path}: train.{name} was {saved[key].get(name)!r}, now "
                        f"{value.get(name)!r}; use a new run folder (or the old configuration)"
                    )
        elif saved.get(key) != value:
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: {key} differs from the checkpoint's; the run folder "
                "belongs to another run (different data, windows, model or freeze setting)"
            )


def train(
    model: ESortNet,
    recording: Recording,
    windows: WindowSets,
    config: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    freeze: str = "none",
    callback: Callable[[int, dict], None] | None = None,
    devices=None,
    transfer: dict | None = None,
    metadata_extra: dict | None = None,
) -> TrainResult:
    """Train `model` on `windows` of `recording` (see the module doc).

    Args:
      model: an initialised ESortNet (C = recording channels, N = windows.num_units); trained
        in place.
      recording: the traces the windows are cut from.
      windows: from `esort_jax.windows.make_windows`.
      config: TrainConfig.
      run_dir: folder for checkpoints; an existing run there is resumed (same config required).
      freeze: 'none' | 'temporal' | 'backbone' (see `freeze_labels`).
      callback: called as callback(epoch, metrics) after each epoch (epoch counts from 0).
      devices: devices of the data-parallel mesh (default: all).
      transfer: how the model was initialised (`TransferReport.to_dict()`), kept in checkpoints.
      metadata_extra: merged into the checkpoints' metadata `extra` (e.g. the resolved config).
    """
    config.validate()
    mesh = make_mesh(devices)
    _check_batch(config.batch_size, mesh)
    if model.num_channels != recording.num_channels:
        raise ValueError(f"model has {model.num_channels} channels; the recording has {recording.num_channels}")
    if model.num_units != windows.num_units:
        raise ValueError(f"model has {model.num_units} outputs; the windows label {windows.num_units} units")
    if (model.config.window, model.config.anchor) != (windows.window, windows.anchor):
        raise ValueError(
            f"windows were cut with W={windows.window}, A={windows.anchor}; the model has "
            f"W={model.config.window}, A={model.config.anchor}"
        )
    if not len(windows.train):
        raise ValueError("no training windows")

    replicated = NamedSharding(mesh, PartitionSpec())
    steps = steps_per_epoch(len(windows.train), config.batch_size)
    tx = make_optimizer(config, nnx.to_pure_dict(nnx.state(model, nnx.Param)), steps, freeze)
    state = init_train_state(model, tx)
    shuffle_key = rng_streams(config.seed)["shuffle"]
    signature = _resume_signature(config, model, windows, freeze)

    start_epoch, resumed_from = 0, None
    latest = ckpt.latest_checkpoint(run_dir) if run_dir is not None else None
    if latest is not None:
        meta = ckpt.read_metadata(latest)
        _check_resume(latest, meta, signature)
        arrays = ckpt.restore_arrays(latest, ("model", "opt_state"))
        ckpt.apply_model_arrays(model, arrays["model"], str(latest))
        saved_leaves = [arrays["opt_state"][k] for k in sorted(arrays["opt_state"])]
        treedef = jax.tree.structure(state["opt_state"])
        if treedef.num_leaves != len(saved_leaves):
            raise ckpt.CheckpointError(
                f"{latest}: optimiser state has {len(saved_leaves)} arrays; this optimiser has {treedef.num_leaves}"
            )
        state = init_train_state(model, tx)
        state["opt_state"] = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in saved_leaves])
        state["step"] = jnp.asarray(meta.step, jnp.int32)
        start_epoch, resumed_from = meta.epoch, latest
        log.info("resuming %s from %s (epoch %d, step %d)", run_dir, latest, meta.epoch, meta.step)

    last_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, config.stop_after_epochs)
    if start_epoch >= last_epoch:
        _write_state_into(model, state)
        model.eval()
        return TrainResult(model, [], start_epoch, resumed_from, latest, start_epoch >= config.epochs)

    train_resident, val_resident = _plan_residency(config, recording, [windows.train, windows.validation])
    train_feed = _Feeder(
        recording, windows.train, mesh, batch_size=config.batch_size, resident=train_resident,
        prefetch=config.prefetch_batches,
    )
    val_feed = _Feeder(
        recording, windows.validation, mesh, batch_size=config.batch_size, resident=val_resident,
        prefetch=config.prefetch_batches,
    )
    kernel = resolve_kernel(config.kernel, model, mesh)
    log.info(
        "training %d windows (%d steps/epoch, batch %d on %d device(s)); training data %s, validation %s; "
        "layer 1: %s",
        len(windows.train), steps, config.batch_size, mesh.devices.size,
        "resident on device" if train_resident else "gathered on the host",
        "resident on device" if val_resident else "gathered on the host",
        "native kernel (windows read in place)" if kernel == "native" else "XLA (windows gathered)",
    )
    state = jax.device_put(state, replicated)
    step_fn = make_train_step(model, tx, mesh, batch_size=config.batch_size, resident=train_resident,
                              kernel=kernel)
    eval_fn = make_eval_step(model, mesh, batch_size=config.batch_size, resident=val_resident)

    fingerprint = ckpt.data_fingerprint(recording) if run_dir is not None else None
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=(last_epoch - start_epoch) * steps, desc="train", unit="step", leave=False)

    history, latest_written = [], None
    try:
        for epoch in range(start_epoch, last_epoch):
            started = time.perf_counter()
            order = epoch_order(shuffle_key, epoch, len(windows.train), config.batch_size)
            losses = []

            def after_step(i, loss):
                losses.append(loss)
                if progress is not None:
                    progress.update(1)
                    if (i + 1) % config.log_every_steps == 0:
                        progress.set_postfix(epoch=epoch, loss=f"{float(loss):.4f}")

            if train_resident:
                order = jax.device_put(order, replicated)
                for i in range(steps):
                    state, loss = step_fn(state, train_feed.data, order, i)
                    after_step(i, loss)
            else:
                with train_feed.host_batches(np.asarray(order)) as prefetched:
                    for i, (x, y) in enumerate(prefetched):
                        state, loss = step_fn(state, x, y)
                        if losses:  # at most two steps in flight: bounds the batches held in memory
                            losses[-1].block_until_ready()
                        after_step(i, loss)
            train_loss = float(jnp.mean(jnp.stack(losses)))
            metrics = {"epoch": epoch, "step": int(state["step"]), "train_loss": train_loss}
            metrics.update({f"val_{k}": v for k, v in _evaluate(model, eval_fn, val_feed, state).items()})
            metrics["epoch_seconds"] = time.perf_counter() - started
            metrics["windows_per_second"] = steps * config.batch_size / metrics["epoch_seconds"]
            history.append(metrics)
            if progress is not None:  # the bar carries the progress; the metrics go in its postfix
                progress.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", val_recall=f"{metrics['val_recall']:.3f}")
            # One line per epoch without a bar; with a bar only the last (all are in `history`).
            level = logging.INFO if progress is None or epoch + 1 == last_epoch else logging.DEBUG
            log.log(level, "epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
            completed = epoch + 1
            if run_dir is not None and (
                completed % config.checkpoint_every_epochs == 0 or completed == last_epoch
            ):
                _write_state_into(model, state)
                meta = ckpt.make_metadata(
                    model,
                    unit_ids=windows.unit_ids,
                    recording=recording,
                    fingerprint=fingerprint,
                    epoch=completed,
                    step=int(state["step"]),
                    train_config=to_dict(config),
                    window_config=to_dict(windows.config),
                    windows_fingerprint=signature["windows_fingerprint"],
                    transfer=transfer or {},
                    rng={
                        "seed": config.seed,
                        "streams": "fold_in(key(seed), 0: init, 1: shuffle); epoch order = fold_in(shuffle, epoch)",
                        "shuffle_key_data": np.asarray(jax.random.key_data(shuffle_key)).tolist(),
                    },
                    extra={**(metadata_extra or {}), "resume_signature": signature, "freeze": freeze,
                           "last_metrics": metrics},
                )
                latest_written = ckpt.save_checkpoint(
                    ckpt.epoch_checkpoint_path(run_dir, completed), model, meta,
                    opt_state=state["opt_state"], overwrite=True,
                )
                ckpt.prune_checkpoints(run_dir, config.keep_checkpoints)
            if callback is not None:
                callback(epoch, metrics)
    finally:
        if progress is not None:
            progress.close()

    _write_state_into(model, state)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        epochs_completed=last_epoch,
        resumed_from=resumed_from,
        checkpoint=latest_written or latest,
        finished=last_epoch >= config.epochs,
    )
