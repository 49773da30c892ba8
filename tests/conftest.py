"""Shared test set-up: strict JAX numerics, no W&B, the config resolvers every entry point registers."""

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from experiments._common import register_resolvers  # noqa: E402

register_resolvers()  # what every entry point does first; in-process config composition needs it
