"""Collision augmentation: training windows with a neighbouring unit's spike laid over them.

Why: trained on a short labelled span, the network sees few overlapping spikes of neighbouring
units, and on new data it misses such spikes far more often than isolated ones (docs/claims.md,
section 0: at 384 channels E-Sort missed 10.6-12.5 % of crowded spikes after its training span,
1-7 % inside it). Detectors trained on recordings have long made such collisions synthetically
(YASS adds templates to clean spikes); here the same is done to each batch inside the jitted
training step, so no augmented window is stored and every data path (resident, host gathered,
native layer-1 kernel) sees the same augmented windows.

The pieces, pure functions over arrays:
- `unit_templates`: each label column's mean waveform from its kept spikes (the training
  positives), [N, W + 2D, C] with the spike at sample A + D, read from the training span only.
- `template_neighbours`: per unit, the k other units whose templates overlap it most on the probe
  (cosine similarity of the per-channel energy): who collides with whom in space.
- `overlay_collisions`: for a fraction `probability` of the windows of a batch, a base unit
  (one of the window's positive units; a random unit for an all-negative window), a partner
  among its neighbours, a shift δ in [-D, D] samples of the partner's spike from the window's
  anchor and a scale in [1 - s, 1 + s]; the partner's template is added there, and the partner's
  label becomes positive when |δ| <= J (the labels' jitter), as for a recorded spike. Labels are
  never cleared: a window positive for the partner stays positive.

The random draws come from the 'augment' stream of esort_jax.train.rng_streams folded with the
optimiser step, so a run's augmentation depends only on (seed, step) and a resumed run repeats
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from esort_jax.recording import Recording, Sorting

__all__ = ["CollisionSpec", "unit_templates", "template_neighbours", "overlay_collisions", "collision_data",
           "idle_collision_settings_removed"]


@dataclasses.dataclass(frozen=True)
class CollisionSpec:
    """The static part of the augmentation (hashable: it shapes the jitted step).

    probability: fraction of windows that get a partner spike; max_shift: D, samples either side
    of the anchor; jitter: J of the labels (a partner within ±J of the anchor is positive);
    scale_jitter: s, the partner's amplitude is scaled by a factor uniform in [1 - s, 1 + s].
    """

    probability: float
    max_shift: int
    jitter: int
    scale_jitter: float


def unit_templates(
    recording: Recording,
    spikes: Sorting,
    unit_ids: np.ndarray,
    *,
    window: int,
    anchor: int,
    max_shift: int,
    span: tuple[int, int],
    max_spikes: int = 200,
) -> np.ndarray:
    """[N, W + 2D, C] float32: column n's mean snippet [s - A - D, s - A + W + D) over its first
    `max_spikes` spikes in `spikes` (unit id unit_ids[n]) whose snippet lies inside `span` (the
    samples training may read). A unit without such a spike gets zeros (nothing is overlaid)."""
    from esort_jax.report.snr import mean_snippets

    before, after = anchor + max_shift, window - anchor + max_shift
    ids = [str(u) for u in np.asarray(spikes.unit_ids).tolist()]
    chosen: dict[int, np.ndarray] = {}
    for n, unit in enumerate(np.asarray(unit_ids).tolist()):
        if str(unit) not in ids:
            continue
        times = spikes.samples[spikes.unit_indices == ids.index(str(unit))]
        times = times[(times - before >= span[0]) & (times + after <= span[1])][:max_spikes]
        if times.size:
            chosen[n] = times
    templates = np.zeros((len(unit_ids), before + after, recording.num_channels), dtype=np.float32)
    for n, mean in mean_snippets(recording, chosen, before, after, chunk=1 << 15).items():
        templates[n] = mean
    return templates


def template_neighbours(templates: np.ndarray, k: int) -> np.ndarray:
    """[N, k] int32: for each unit the k other units with the largest cosine similarity of the
    templates' per-channel energy (most similar first; with fewer than k other units they repeat;
    a single unit is its own neighbour: nothing else can collide with it)."""
    energy = np.square(templates.astype(np.float64)).sum(axis=1)  # [N, C]
    norm = np.linalg.norm(energy, axis=1, keepdims=True)
    unit = np.divide(energy, norm, out=np.zeros_like(energy), where=norm > 0)
    similarity = unit @ unit.T
    n = templates.shape[0]
    if n == 1:
        return np.zeros((1, k), dtype=np.int32)
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, : n - 1]
    return order[:, np.arange(k) % (n - 1)].astype(np.int32)


def overlay_collisions(
    key: jax.Array,
    x_WxBxC: jax.Array,
    y_BxN: jax.Array,
    templates_NxTxC: jax.Array,
    neighbours_NxK: jax.Array,
    spec: CollisionSpec,
    has_template_N: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The batch (windows [W, B, C] time-major, labels [B, N]) with partner spikes overlaid on a
    `spec.probability` fraction of its windows (module doc). Jit-friendly, static shapes.
    `has_template_N`: units without a template (no spike to average) are never overlaid, so no
    label is set without a waveform (default: every unit has one)."""
    W, B, _ = x_WxBxC.shape
    N, K = neighbours_NxK.shape
    D = spec.max_shift
    k_apply, k_base, k_partner, k_shift, k_scale = jax.random.split(key, 5)
    positive = y_BxN > 0
    # base: a uniformly chosen positive column; all-negative windows: any column
    logits = jnp.where(positive.any(axis=1, keepdims=True), jnp.where(positive, 0.0, -jnp.inf), 0.0)
    base_B = jax.random.categorical(k_base, logits, axis=1)
    partner_B = neighbours_NxK[base_B, jax.random.randint(k_partner, (B,), 0, K)]
    shift_B = jax.random.randint(k_shift, (B,), -D, D + 1)
    scale_B = jax.random.uniform(k_scale, (B,), minval=1.0 - spec.scale_jitter, maxval=1.0 + spec.scale_jitter)
    apply_B = jax.random.bernoulli(k_apply, spec.probability, (B,))
    if has_template_N is not None:
        apply_B = apply_B & has_template_N[partner_B]
    # window sample w shows template sample w + D - δ (the partner's spike, at A + D in the
    # template, lands on window sample A + δ)
    rows_WxB = jnp.arange(W)[:, None] + (D - shift_B)[None, :]
    partner_WxBxC = templates_NxTxC[partner_B[None, :], rows_WxB]
    weight_B = jnp.where(apply_B, scale_B, 0.0).astype(x_WxBxC.dtype)
    x_WxBxC = x_WxBxC + weight_B[None, :, None] * partner_WxBxC
    hit_B = apply_B & (jnp.abs(shift_B) <= spec.jitter)
    onehot_BxN = jax.nn.one_hot(partner_B, N, dtype=jnp.bool_) & hit_B[:, None]
    y_BxN = jnp.where(onehot_BxN, jnp.ones_like(y_BxN), y_BxN)
    return x_WxBxC, y_BxN


def collision_data(recording: Recording, windows, *, max_shift: int, neighbours: int, max_spikes: int = 200) -> dict:
    """{'templates' [N, W + 2D, C] float32, 'neighbours' [N, k] int32, 'has_template' [N] bool}
    (host arrays) for a run on `windows` (esort_jax.windows.WindowSets): templates from its kept
    spikes within its training span (a unit whose spikes all lie too near the span's edges has
    none and is never overlaid)."""
    templates = unit_templates(
        recording, windows.kept_spikes, windows.unit_ids, window=windows.window, anchor=windows.anchor,
        max_shift=max_shift, span=windows.train_span, max_spikes=max_spikes,
    )
    return {"templates": templates, "neighbours": template_neighbours(templates, neighbours),
            "has_template": templates.any(axis=(1, 2))}


def idle_collision_settings_removed(settings: dict, probability: float) -> dict:
    """`settings` (a TrainConfig as a dict) without its collision_* keys when the augmentation is
    off: they change nothing then, and runs and caches made before they existed lack them (the
    resume signature and the pretraining cache key)."""
    if probability != 0:
        return settings
    return {k: v for k, v in settings.items() if not k.startswith("collision_")}
