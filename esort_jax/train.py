"""Training: BCE on logits with optax, in the shape of the Flax examples.

    model = init_model(C, N, model_config, seed)            # or transfer.finetune_model(...)
    result = train(model, recording, windows, train_config, run_dir="runs/x",
                   freeze="none", callback=lambda epoch, metrics: ...)

The pieces: `create_train_state` (a `TrainState` of params, BatchNorm statistics, optimiser
state and step: pytrees of arrays with the module's names, see `nnx.to_pure_dict`);
`train_step`, one optimiser step, and `eval_step`, window-level counts, both pure functions
that `make_train_step` / `make_eval_step` jit for a data path (the state is donated); `train`,
the loop. Per epoch: a fresh order of the training windows from fold_in(shuffle key, epoch);
one jitted step per batch; the mean BCE loss; window-level metrics on the validation windows
(eval mode, threshold 0.5 on the sigmoid); a checkpoint every `checkpoint_every_epochs`; then
`callback(epoch, metrics)`.

The steps compute the network of esort_jax.model in the training formulation of
esort_jax.fast.training (same numbers, laid out for the step's cost on CPU); `kernel` picks its
layer 1 (esort_jax.fast.choose_kernel). Batches come from esort_jax.batches: windows cut inside
the jitted step from traces resident on device, or gathered on the host by a background thread.

Data parallel: a 1-D mesh over the devices ('data'); batches are sharded on 'data', parameters,
optimiser state and resident traces are replicated. Everything is one jit program over global
arrays, so BatchNorm's batch mean/variance are GLOBAL batch statistics (XLA inserts the
all-reduce): 1 device and 4 devices compute the same step up to float rounding.

Speed on CPU (benchmarks/bench_train.py): call
`esort_jax.runtime.host_memory.configure_host_allocator()` at program start, before JAX
computes anything; without it XLA page-faults its per-step temporaries again every step.

Refused or adjusted, never silent: NaN/inf in the traces the training or validation windows
read (`NonFiniteTracesError` before any step, naming sample and channel); a non-finite loss
(checked where it is fetched anyway: the epoch's mean and the progress bar's log steps, so no
extra device sync per step) or non-finite parameters at an epoch's end
(`NonFiniteTrainingError` naming epoch and step, before that epoch is saved); a batch larger
than the training set (the batch becomes the training set, said in the log, in
`TrainResult.batch_note` and in each epoch's `batch_size`).

Several processes (esort_jax.runtime.distributed, after jax.distributed is initialised): the
mesh spans every process's devices, each process feeds its share of the global batch, and the
epoch checkpoints are written by process 0 alone while the others wait.

Resuming (esort_jax.checkpoint): with a `run_dir`, each checkpoint holds parameters, BatchNorm
statistics, the optimiser state, the epoch/step, the run's rng info and the per-epoch metrics
so far. `train` called again with the same configuration and an identically initialised model
continues from the latest checkpoint and ends with the same parameters and the same history as
an uninterrupted run (the data order depends only on (seed, epoch)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from esort_jax import checkpoint as ckpt
from esort_jax.augment import CollisionSpec, collision_data, idle_collision_settings_removed, overlay_collisions
from esort_jax.batches import (
    WindowFeeder, batch_indices, epoch_order, first_nonfinite, plan_residency, span_bytes, steps_per_epoch,
    take_batch, window_sharding,
)
from esort_jax.config import ConfigError, require, to_dict
from esort_jax.fast import choose_kernel
from esort_jax.fast import training as fast_training
from esort_jax.infer import NonFiniteTracesError
from esort_jax.model import ESortNet, ModelConfig
from esort_jax.recording import Recording
from esort_jax.runtime import distributed
from esort_jax.windows import WindowSet, WindowSets

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "NonFiniteTrainingError",
    "FREEZE_OPTIONS",
    "rng_streams",
    "init_model",
    "freeze_labels",
    "make_optimizer",
    "create_train_state",
    "make_mesh",
    "train_step",
    "eval_step",
    "make_train_step",
    "make_eval_step",
    "evaluate_windows",
    "window_metrics",
    "early_stop",
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
      batch_size: global batch (paper: 1024); must divide by the number of devices. A batch
        larger than the training set becomes the training set (rounded up to the devices).
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
      max_steps: a budget in optimiser steps instead of epochs: the run takes exactly
        max_steps steps (ceil(max_steps / steps per epoch) epochs, replacing `epochs`, the last
        one cut short where the budget ends), so arms with different training-set sizes get the
        same budget. None: `epochs` decides.
      early_stopping_patience_steps: stop once the validation loss (`val_loss`, checked after
        each epoch) has not improved by more than `early_stopping_min_delta` for this many
        optimiser steps; the last state is kept (0: off; needs validation windows).
      early_stopping_min_delta: the improvement that counts.
      collision_probability: fraction of training windows that get a neighbouring unit's spike
        laid over them (esort_jax.augment; 0: off, the paper's training).
      collision_max_shift: how far from the window's anchor the overlaid spike may land, in
        samples either side (about 1 ms; within the labels' jitter it is a positive).
      collision_neighbours: how many of each unit's most overlapping units may be overlaid.
      collision_scale_jitter: the overlaid spike's amplitude is scaled by 1 ± this (uniform).
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
    max_steps: int | None = None
    early_stopping_patience_steps: int = 0
    early_stopping_min_delta: float = 0.0
    collision_probability: float = 0.0
    collision_max_shift: int = 30
    collision_neighbours: int = 8
    collision_scale_jitter: float = 0.2

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
        require(self.max_steps is None or self.max_steps >= 1, f"{where}.max_steps", "must be >= 1 or null")
        require(self.early_stopping_patience_steps >= 0, f"{where}.early_stopping_patience_steps", "must be >= 0")
        require(self.early_stopping_min_delta >= 0, f"{where}.early_stopping_min_delta", "must be >= 0")
        require(0 <= self.collision_probability <= 1, f"{where}.collision_probability",
                f"must lie in [0, 1]; got {self.collision_probability}")
        require(self.collision_max_shift >= 0, f"{where}.collision_max_shift",
                f"must be >= 0 samples; got {self.collision_max_shift}")
        require(self.collision_neighbours >= 1, f"{where}.collision_neighbours",
                f"must be >= 1; got {self.collision_neighbours}")
        require(0 <= self.collision_scale_jitter < 1, f"{where}.collision_scale_jitter",
                f"must lie in [0, 1); got {self.collision_scale_jitter}")


@dataclasses.dataclass(eq=False)
class TrainResult:
    """What `train` returns.

    Attributes:
      model: the trained network (the object passed in, updated; left in eval mode).
      history: per-epoch metrics dicts of every completed epoch (those before a resume come from
        the checkpoint's metadata).
      epochs_completed: total completed epochs (including those of a resumed run).
      resumed_from: the checkpoint the run continued from (None for a fresh start).
      checkpoint: the newest checkpoint written (None without a run folder).
      finished: True when all `epochs` are complete (False after `stop_after_epochs`).
      batch_size: the batch the run used (`config.batch_size`, or the training set's size when
        that is smaller; see `batch_note`).
      batch_note: why the batch differs from `config.batch_size` (None when it does not).
      steps: optimiser steps taken in all (including those of a resumed run).
      stopped_early: True when early stopping ended the run (`finished` is then True too).
    """

    model: ESortNet
    history: list[dict]
    epochs_completed: int
    resumed_from: Path | None
    checkpoint: Path | None
    finished: bool
    batch_size: int = 0
    batch_note: str | None = None
    steps: int = 0
    stopped_early: bool = False


# ----------------------------------------------------------------------------------------------
# Keys, model, optimiser


def rng_streams(seed: int) -> dict[str, jax.Array]:
    """Named key streams derived from one root key: 'init' (parameters), 'shuffle' and
    'augment' (esort_jax.augment, folded with the optimiser step)."""
    root = jax.random.key(seed)
    return {"init": jax.random.fold_in(root, 0), "shuffle": jax.random.fold_in(root, 1),
            "augment": jax.random.fold_in(root, 2)}


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
    total = run_steps(config, steps_each_epoch)
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


_OPTIMIZER_SETTINGS = ("epochs", "max_steps", "learning_rate", "optimizer", "weight_decay", "schedule",
                       "warmup_epochs", "final_lr_fraction")


def run_steps(config: TrainConfig, steps_each_epoch: int) -> int:
    """Optimiser steps of a whole run: `max_steps` when set, else epochs × steps per epoch."""
    return config.epochs * steps_each_epoch if config.max_steps is None else config.max_steps


def epoch_steps(config: TrainConfig, steps_each_epoch: int, epoch: int) -> int:
    """Optimiser steps of `epoch` (from 0): a whole epoch, or what is left of `max_steps`."""
    return max(0, min(steps_each_epoch, run_steps(config, steps_each_epoch) - epoch * steps_each_epoch))


def make_optimizer(config: TrainConfig, params: dict, steps_each_epoch: int, freeze: str = "none"):
    """Adam / AdamW with the configured schedule; frozen parameters get zero updates.

    Equal settings return the same transformation object, so `make_train_step` can reuse a
    compiled step across `train` calls (sweeps, tests)."""
    settings = tuple(
        getattr(config, name)
        for name in _OPTIMIZER_SETTINGS
    )
    return _optimizer(settings, steps_each_epoch, freeze, jax.tree.structure(params))


@functools.lru_cache(maxsize=64)
def _optimizer(settings: tuple, steps_each_epoch: int, freeze: str, treedef):
    config = TrainConfig(**dict(zip(_OPTIMIZER_SETTINGS, settings)))
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


@struct.dataclass
class TrainState:
    """What a training step updates: pytrees of arrays (pure dicts with the module's names).
    Fields in alphabetical order, as a dict state flattens: the jitted step's arguments, and so
    its compiled program, stay those of the dict state this replaced."""

    batch_stats: dict
    opt_state: Any
    params: dict
    step: jax.Array


def create_train_state(model: ESortNet, tx: optax.GradientTransformation) -> TrainState:
    """The model's parameters and BatchNorm statistics, a fresh optimiser state, step 0."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return TrainState(
        batch_stats=batch_stats, opt_state=tx.init(params), params=params, step=jnp.zeros((), jnp.int32)
    )


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh ('data',) over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), ("data",))


# ----------------------------------------------------------------------------------------------
# Steps


def train_step(graphdef, tx, state: TrainState, windows, labels_BxN) -> tuple[TrainState, jax.Array]:
    """One optimiser step on the mean BCE of a batch; returns (new state, loss).

    `graphdef`: the model's graph in train mode; `windows`: [W, B, C] (time-major), or
    esort_jax.fast.training.WindowRows for the native layer-1 kernel."""

    def loss_fn(params, batch_stats):
        model = nnx.merge(graphdef, params, batch_stats)
        logits_BxN = fast_training.logits(model, windows)
        loss = optax.sigmoid_binary_cross_entropy(logits_BxN, labels_BxN.astype(jnp.float32)).mean()
        return loss, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        step=state.step + 1,
    )
    return new_state, loss


def eval_step(graphdef, params, batch_stats, windows_WxBxC, labels_BxN, valid_B):
    """Eval-mode counts of a batch: ([tp, fp, fn, tn, exact, n] over valid windows, loss sum).

    `graphdef`: the model's graph in eval mode; `windows_WxBxC` time-major; `valid_B` masks
    the padding of the last batch."""
    model = nnx.merge(graphdef, params, batch_stats)
    logits = fast_training.logits(model, windows_WxBxC)
    truth = labels_BxN.astype(bool)
    pred = logits > 0.0  # sigmoid(logit) > 0.5
    valid = valid_B[:, None]
    loss = optax.sigmoid_binary_cross_entropy(logits, labels_BxN.astype(jnp.float32)).mean(axis=1)
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


def _graphdefs(model: ESortNet):
    model.train()
    train_graph = nnx.graphdef(model)
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    return train_graph, eval_graph


def _train_kernel(kernel: str, model: ESortNet, mesh: Mesh) -> str:
    """'xla' or 'native': what `kernel` (TrainConfig.kernel) means for this model on this mesh."""
    return choose_kernel(
        kernel, purpose="train", devices=list(mesh.devices.flat), compute_dtype=model.config.compute_dtype,
        temporal_features=model.config.temporal_features,
    )


def make_train_step(model: ESortNet, tx, mesh: Mesh, *, batch_size: int, resident: bool, kernel: str = "auto",
                    collisions: tuple[CollisionSpec, dict] | None = None):
    """`train_step` jitted for a data path. Resident: step(state, data, order, i) cuts batch i
    of `order` from data = {"traces" [T, C], "starts" [M] (relative to traces), "labels" [M, N]}
    (esort_jax.batches.WindowFeeder.data). Host: step(state, x [W, B, C], y [B, N]). Both return
    (new state, loss); `state` is donated. `kernel`: see `TrainConfig.kernel`. `collisions`:
    (spec, {"templates", "neighbours", "has_template", "key"} on the devices): every batch goes through
    esort_jax.augment.overlay_collisions with the key folded with the step first."""
    graphdef, _ = _graphdefs(model)
    kernel = _train_kernel(kernel, model, mesh)
    spec, arrays = collisions if collisions is not None else (None, None)
    jitted = _jitted_train_step(graphdef, tx, mesh, batch_size, resident, model.config.window, kernel, spec)
    return jitted if spec is None else functools.partial(jitted, collisions=arrays)


@functools.lru_cache(maxsize=32)
def _jitted_train_step(graphdef, tx, mesh, batch_size, resident, window, kernel, spec: CollisionSpec | None = None):
    replicated = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(train_step, graphdef, tx)
    if spec is not None:
        return jax.jit(_augmented_step(step, mesh, batch_size, resident, window, kernel, spec),
                       donate_argnums=0, out_shardings=(replicated, replicated))

    if resident and kernel == "native":
        def fn(state, data, order, i):
            idx_B = batch_indices(order, i, batch_size, mesh)
            windows = fast_training.WindowRows(data["traces"], data["starts"][idx_B], 1)
            return step(state, windows, data["labels"][idx_B])
    elif resident:
        def fn(state, data, order, i):
            x, y = take_batch(data, order, i, batch_size, window, mesh)
            return step(state, x, y)
    elif kernel == "native":
        def fn(state, x, y):
            return step(state, _as_rows(x), y)
    else:
        fn = step

    return jax.jit(fn, donate_argnums=0, out_shardings=(replicated, replicated))


def _as_rows(x_WxBxC: jax.Array) -> fast_training.WindowRows:
    """Windows [W, B, C] as rows [W·B, C] for the native kernel: sample w of window b is row w·B + b."""
    w, b, c = x_WxBxC.shape
    return fast_training.WindowRows(x_WxBxC.reshape(w * b, c), jnp.arange(b, dtype=jnp.int32), b)


def _augmented_step(step, mesh, batch_size, resident, window, kernel, spec: CollisionSpec):
    """The step with the batch augmented first: the windows are materialised (gathered on
    device, or as they came from the host) and go to the native kernel as rows."""

    def augmented(state, x, y, collisions):
        key = jax.random.fold_in(collisions["key"], state.step)
        x, y = overlay_collisions(key, x, y, collisions["templates"], collisions["neighbours"], spec,
                                  collisions["has_template"])
        x = jax.lax.with_sharding_constraint(x, window_sharding(mesh))
        return step(state, _as_rows(x) if kernel == "native" else x, y)

    if resident:
        def fn(state, data, order, i, collisions):
            x, y = take_batch(data, order, i, batch_size, window, mesh)
            return augmented(state, x, y, collisions)
        return fn
    return augmented


def make_eval_step(model: ESortNet, mesh: Mesh, *, batch_size: int, resident: bool):
    """`eval_step` jitted for a data path: fn(params, batch_stats, data, order, i, valid_B)
    (resident) or fn(params, batch_stats, x [W, B, C], y, valid_B) (host)."""
    _, graphdef = _graphdefs(model)
    return _jitted_eval_step(graphdef, mesh, batch_size, resident, model.config.window)


@functools.lru_cache(maxsize=32)
def _jitted_eval_step(graphdef, mesh, batch_size, resident, window):
    replicated = NamedSharding(mesh, PartitionSpec())
    step = functools.partial(eval_step, graphdef)

    if resident:
        def fn(params, batch_stats, data, order, i, valid_B):
            x, y = take_batch(data, order, i, batch_size, window, mesh)
            return step(params, batch_stats, x, y, valid_B)
    else:
        fn = step

    return jax.jit(fn, out_shardings=(replicated, replicated))


# ----------------------------------------------------------------------------------------------
# Window-level metrics


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



def _evaluate(eval_fn, feeder: WindowFeeder, params, batch_stats) -> dict[str, float]:
    """Window metrics over a feeder's windows (sequential order, last batch padded)."""
    if not len(feeder.windows):
        return {}
    M, B = len(feeder.windows), feeder.batch_size
    positions = np.arange(feeder.steps * B)
    order_np = (positions % M).astype(np.int32)
    valid_np = positions < M
    counts = jnp.zeros(6, jnp.float32)
    loss_sum = jnp.zeros((), jnp.float32)
    if feeder.resident:
        order = jax.device_put(order_np, feeder.replicated)
        for i in range(feeder.steps):
            valid = jax.device_put(valid_np[i * B : (i + 1) * B], feeder.batch_sharding)
            c, l = eval_fn(params, batch_stats, feeder.data, order, i, valid)
            counts, loss_sum = counts + c, loss_sum + l
    else:
        with feeder.host_batches(order_np) as batches:
            for i, (x, y) in enumerate(batches):
                valid = jax.device_put(valid_np[i * B : (i + 1) * B], feeder.batch_sharding)
                c, l = eval_fn(params, batch_stats, x, y, valid)
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
    feeder = WindowFeeder(recording, windows, mesh, batch_size=batch_size, resident=data_on_device, prefetch=2)
    params, batch_stats = jax.device_put(
        (nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))),
        NamedSharding(mesh, PartitionSpec()),
    )
    eval_fn = make_eval_step(model, mesh, batch_size=batch_size, resident=data_on_device)
    metrics = _evaluate(eval_fn, feeder, params, batch_stats)
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
    _check_inputs(model, recording, windows, config, mesh)
    config, batch_note = _fit_batch(config, len(windows.train), mesh)
    steps = steps_per_epoch(len(windows.train), config.batch_size)
    config = _step_budget(config, steps, len(windows.validation))
    tx = make_optimizer(config, nnx.to_pure_dict(nnx.state(model, nnx.Param)), steps, freeze)
    state = create_train_state(model, tx)
    signature = ckpt.resume_signature(_resume_settings(config), model, windows, freeze)
    state, start_epoch, resumed_from, history = _resume(run_dir, model, tx, state, signature)
    last_epoch = config.epochs if config.stop_after_epochs is None else min(config.epochs, config.stop_after_epochs)
    if early_stop(history, config):  # a resumed run that had already stopped
        last_epoch = start_epoch
    written = None
    if start_epoch < last_epoch:
        save = None
        if run_dir is not None:
            save = _epoch_saver(run_dir, model, recording, windows, config, signature, freeze, transfer, metadata_extra)
        state, history, written = _run_epochs(
            model, recording, windows, config, mesh, tx, state, range(start_epoch, last_epoch), save, callback,
            history,
        )
    _write_state_into(model, state)
    model.eval()
    stopped = early_stop(history, config)
    completed = max(start_epoch, len(history) if stopped else last_epoch)
    return TrainResult(
        model=model,
        history=history,
        epochs_completed=completed,
        resumed_from=resumed_from,
        checkpoint=written or resumed_from,
        finished=completed >= config.epochs or stopped,
        batch_size=config.batch_size,
        batch_note=batch_note,
        steps=int(state.step),
        stopped_early=stopped,
    )


def _step_budget(config: TrainConfig, steps_each_epoch: int, validation_windows: int) -> TrainConfig:
    """`config` with `max_steps` turned into epochs (ceil(max_steps / steps per epoch); the last
    epoch stops at max_steps, `epoch_steps`); a ValueError when early stopping has no
    validation windows to watch."""
    if config.early_stopping_patience_steps and not validation_windows:
        raise ValueError("train.early_stopping_patience_steps needs validation windows "
                         "(windows.validation_fraction > 0 and max_validation_windows > 0)")
    if config.max_steps is None:
        return config
    return dataclasses.replace(config, epochs=max(1, -(-config.max_steps // steps_each_epoch)))


def early_stop(history: list[dict], config: TrainConfig) -> bool:
    """Whether early stopping ends the run after the epochs of `history`: the validation loss
    has not improved by more than `early_stopping_min_delta` for at least
    `early_stopping_patience_steps` optimiser steps (False when early stopping is off)."""
    losses = [h.get("val_loss") for h in history]
    if not config.early_stopping_patience_steps or not losses or None in losses:
        return False
    best = 0
    for i, loss in enumerate(losses):
        if loss < losses[best] - config.early_stopping_min_delta:
            best = i
    return history[-1]["step"] - history[best]["step"] >= config.early_stopping_patience_steps


def _resume(run_dir, model: ESortNet, tx, state: TrainState, signature: dict):
    """(state, first epoch to run, checkpoint resumed from, history so far) of a run folder's
    newest checkpoint, or of a fresh start."""
    resumed = ckpt.restore_training(run_dir, model, state.opt_state, signature) if run_dir is not None else None
    if resumed is None:
        return state, 0, None, []
    if len(resumed.history) != resumed.epoch:
        log.warning("%s holds the metrics of %d of its %d epochs (saved by an older esort_jax); the "
                    "history lacks the others", resumed.path, len(resumed.history), resumed.epoch)
    # The model now holds the checkpoint's arrays.
    state = create_train_state(model, tx).replace(opt_state=resumed.opt_state, step=jnp.asarray(resumed.step, jnp.int32))
    return state, resumed.epoch, resumed.path, list(resumed.history)


def _fit_batch(config: TrainConfig, num_windows: int, mesh: Mesh) -> tuple[TrainConfig, str | None]:
    """`config` with a batch no larger than the training set: a batch of B > M windows would
    repeat each window ~B/M times in every step (the same mean loss, B/M times the work). It
    becomes the smallest multiple of the device count >= M: one step sees every window once
    (as a PyTorch DataLoader's single batch of M), plus at most devices - 1 repeats."""
    devices = mesh.devices.size
    fitted = -(-num_windows // devices) * devices
    if config.batch_size <= fitted:
        return config, None
    note = (f"train.batch_size {config.batch_size} is larger than the {num_windows} training windows: "
            f"using batch {fitted} (one step per epoch sees every window once)")
    log.warning(note)
    return dataclasses.replace(config, batch_size=fitted), note


def _run_epochs(model, recording, windows, config, mesh, tx, state, epochs: range, save, callback, history: list):
    """The epochs of a run: returns (state, per-epoch metrics: `history` extended, newest
    checkpoint written). NonFiniteTrainingError as soon as a fetched loss, or the parameters at
    an epoch's end, are not finite: before that epoch's checkpoint or callback."""
    train_feed, val_feed, step_fn, eval_fn = _feeds_and_steps(model, recording, windows, config, mesh, tx)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    shuffle_key = rng_streams(config.seed)["shuffle"]
    history, written = list(history), None
    total = sum(epoch_steps(config, train_feed.steps, epoch) for epoch in epochs)
    with _progress_bar(config.progress, total) as progress:
        for epoch in epochs:
            started = time.perf_counter()
            order = epoch_order(shuffle_key, epoch, len(windows.train), config.batch_size)
            steps = epoch_steps(config, train_feed.steps, epoch)
            state, train_loss = _train_epoch(
                step_fn, state, train_feed, order, steps, progress, epoch, config.log_every_steps
            )
            _check_finite_state(state, epoch)
            metrics = {"epoch": epoch, "step": int(state.step), "batch_size": config.batch_size, "train_loss": train_loss}
            val = _evaluate(eval_fn, val_feed, state.params, state.batch_stats)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            metrics["epoch_seconds"] = time.perf_counter() - started
            metrics["windows_per_second"] = steps * config.batch_size / metrics["epoch_seconds"]
            history.append(metrics)
            _report_epoch(progress, metrics, last=epoch + 1 == epochs.stop)
            completed, stop = epoch + 1, early_stop(history, config)
            if save is not None and (completed % config.checkpoint_every_epochs == 0 or completed == epochs.stop or stop):
                written = save(state, completed, history)
            if callback is not None:
                callback(epoch, metrics)
            if stop:
                log.info("early stopping after epoch %d (step %d): no val_loss improvement for %d steps",
                         epoch, int(state.step), config.early_stopping_patience_steps)
                break
    return state, history, written


class NonFiniteTrainingError(ArithmeticError):
    """The training loss or the parameters became NaN or inf (the message names epoch and step)."""


def _train_epoch(step_fn, state, feed: WindowFeeder, order, steps: int, progress, epoch: int, log_every: int):
    """The first `steps` batches of the epoch order (all of them but in a step budget's last
    epoch): (state, mean loss). The losses are checked where they are
    fetched anyway (the progress bar's log steps, the epoch's mean): no extra device sync."""
    losses = []
    first_step = epoch * feed.steps  # optimiser steps before this epoch

    def after_step(i, loss):
        losses.append(loss)
        if progress is not None:
            progress.update(1)
            if (i + 1) % log_every == 0:
                value = float(loss)
                if not np.isfinite(value):
                    _raise_nonfinite_loss(losses, epoch, first_step)
                progress.set_postfix(epoch=epoch, loss=f"{value:.4f}")

    if feed.resident:
        order = jax.device_put(order, feed.replicated)
        for i in range(steps):
            state, loss = step_fn(state, feed.data, order, i)
            after_step(i, loss)
    else:
        with feed.host_batches(np.asarray(order)[: steps * feed.batch_size]) as batches:
            for i, (x, y) in enumerate(batches):
                state, loss = step_fn(state, x, y)
                if losses:  # at most two steps in flight: bounds the batches held in memory
                    losses[-1].block_until_ready()
                after_step(i, loss)
    mean = float(jnp.mean(jnp.stack(losses)))
    if not np.isfinite(mean):
        _raise_nonfinite_loss(losses, epoch, first_step)
    return state, mean


def _raise_nonfinite_loss(losses: list, epoch: int, first_step: int):
    values = np.asarray(jnp.stack(losses))
    i = int(np.flatnonzero(~np.isfinite(values))[0])
    raise NonFiniteTrainingError(
        f"training stopped: the loss is {values[i]} at epoch {epoch}, step {first_step + i + 1} (batch "
        f"{i + 1} of the epoch); nothing from this epoch was saved. With finite traces this means the "
        "optimisation diverged: lower train.learning_rate (or add warm-up)"
    )


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _check_finite_state(state: TrainState, epoch: int) -> None:
    """NonFiniteTrainingError when a parameter or BatchNorm statistic is NaN or inf after `epoch`."""
    if not bool(_all_finite((state.params, state.batch_stats))):
        raise NonFiniteTrainingError(
            f"training stopped: the parameters are not finite after epoch {epoch} (step {int(state.step)}); "
            "nothing from this epoch was saved. Lower train.learning_rate (or add warm-up)"
        )


def _feeds_and_steps(model, recording, windows, config, mesh, tx):
    """Window feeders (training, validation) and jitted steps for a run's data paths."""
    train_resident, val_resident = plan_residency(
        [windows.train, windows.validation], recording.num_channels,
        data_on_device=config.data_on_device, budget_bytes=config.device_bytes_budget,
    )
    feeds = [
        WindowFeeder(recording, ws, mesh, batch_size=config.batch_size, resident=resident,
                     prefetch=config.prefetch_batches)
        for ws, resident in ((windows.train, train_resident), (windows.validation, val_resident))
    ]
    kernel = _train_kernel(config.kernel, model, mesh)
    where = {True: "resident on device", False: "gathered on the host"}
    log.info(
        "training %d windows (%d steps/epoch, batch %d on %d device(s)); training data %s, validation %s; "
        "layer 1: %s",
        len(windows.train), feeds[0].steps, config.batch_size, mesh.devices.size, where[train_resident],
        where[val_resident],
        ("native kernel (windows read in place)" if config.collision_probability == 0 else
         "native kernel (windows gathered: collision augmentation)") if kernel == "native" else "XLA (windows gathered)",
    )
    step_fn = make_train_step(
        model, tx, mesh, batch_size=config.batch_size, resident=train_resident, kernel=kernel,
        collisions=_collisions(recording, windows, config, mesh),
    )
    eval_fn = make_eval_step(model, mesh, batch_size=config.batch_size, resident=val_resident)
    return feeds[0], feeds[1], step_fn, eval_fn


def _collisions(recording, windows, config: TrainConfig, mesh: Mesh) -> tuple[CollisionSpec, dict] | None:
    """The collision augmentation's spec and device arrays for a run (None when it is off)."""
    if config.collision_probability == 0:
        return None
    started = time.perf_counter()
    data = collision_data(recording, windows, max_shift=config.collision_max_shift,
                          neighbours=config.collision_neighbours)
    log.info("collision augmentation: %.0f%% of windows, shift ±%d samples, %d neighbours per unit, templates "
             "from the kept spikes (%.1f s)", 100 * config.collision_probability, config.collision_max_shift,
             config.collision_neighbours, time.perf_counter() - started)
    spec = CollisionSpec(probability=float(config.collision_probability), max_shift=int(config.collision_max_shift),
                         jitter=int(windows.train.jitter), scale_jitter=float(config.collision_scale_jitter))
    replicated = NamedSharding(mesh, PartitionSpec())
    arrays = {"templates": jax.device_put(data["templates"], replicated),
              "neighbours": jax.device_put(data["neighbours"], replicated),
              "has_template": jax.device_put(data["has_template"], replicated),
              "key": jax.device_put(rng_streams(config.seed)["augment"], replicated)}
    return spec, arrays


def _epoch_saver(run_dir, model, recording, windows, config, signature, freeze, transfer, metadata_extra):
    """save(state, completed_epochs, history) → the epoch checkpoint written (esort_jax.checkpoint);
    the per-epoch metrics so far go into its metadata (`extra.history`) for a resumed run."""
    fingerprint = ckpt.data_fingerprint(recording)
    shuffle_key = rng_streams(config.seed)["shuffle"]
    rng = {
        "seed": config.seed,
        "streams": "fold_in(key(seed), 0: init, 1: shuffle); epoch order = fold_in(shuffle, epoch)",
        "shuffle_key_data": np.asarray(jax.random.key_data(shuffle_key)).tolist(),
    }

    def save(state: TrainState, completed: int, history: list) -> Path:
        _write_state_into(model, state)
        if distributed.is_primary():  # several processes: process 0 writes, the others wait
            ckpt.save_epoch_checkpoint(
                run_dir, model, state.opt_state, epoch=completed, step=int(state.step),
                signature=signature, keep=config.keep_checkpoints, recording=recording, fingerprint=fingerprint,
                windows=windows, train_config=to_dict(config), transfer=transfer or {}, rng=rng,
                extra={**(metadata_extra or {}), "freeze": freeze, "last_metrics": history[-1], "history": history},
            )
        distributed.barrier(f"checkpoint {run_dir} epoch {completed}")
        return ckpt.epoch_checkpoint_path(run_dir, completed)

    return save


def _progress_bar(enabled: bool, total: int):
    """A tqdm bar over the run's steps (a null context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train", unit="step", leave=False)


def _report_epoch(progress, metrics: dict, *, last: bool) -> None:
    """The epoch's metrics in the bar's postfix, and one log line per epoch without a bar (with
    a bar only the last; all are in the history)."""
    epoch = metrics["epoch"]
    if progress is not None:
        progress.set_postfix(
            epoch=epoch, loss=f"{metrics['train_loss']:.4f}", val_recall=f"{metrics['val_recall']:.3f}"
        )
    level = logging.INFO if progress is None or last else logging.DEBUG
    log.log(level, "epoch %d: %s", epoch, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


def _check_inputs(model: ESortNet, recording: Recording, windows: WindowSets, config: TrainConfig, mesh: Mesh) -> None:
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
    _check_finite_traces(recording, windows)


def _check_finite_traces(recording: Recording, windows: WindowSets) -> None:
    """NonFiniteTracesError naming the first NaN/inf sample and channel the training or
    validation windows read (checked before any training: a network trained on them is NaN)."""
    for name, window_set in (("training", windows.train), ("validation", windows.validation)):
        bad = first_nonfinite(recording, window_set)
        if bad is not None:
            sample, channel, value = bad
            start, stop = window_set.span()
            raise NonFiniteTracesError(
                f"the traces the {name} windows read are not finite: first bad value {value} at "
                f"sample {sample}, channel {channel} (the {name} windows span samples [{start}, {stop})); "
                "repair or cut out those samples (or label another span) before training"
            )


def _resume_settings(config: TrainConfig) -> dict:
    """The TrainConfig values that change the numbers a run computes (a resumed run must match)."""
    return idle_collision_settings_removed(
        {k: v for k, v in to_dict(config).items() if k not in _RESUME_IGNORED}, config.collision_probability)


def _write_state_into(model: ESortNet, state: TrainState) -> None:
    """Copy the (possibly replicated) training state into the module, on the default device."""
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    nnx.update(model, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, batch_stats))
