"""esort_jax.runtime.artifacts: the pretraining cache key names what makes the network's numbers,
the layer-1 kernel as this machine resolves it included."""

import dataclasses
import warnings

import pytest
from test_fast_native import needs_native

from esort_jax import checkpoint as ckpt
from esort_jax.fast import native
from esort_jax.pipeline import PipelineConfig
from esort_jax.runtime.artifacts import pretrain_key
from esort_jax.train import TrainConfig

DATA = {"path": "source.h5"}


def key(kernel="auto", **train):
    config = PipelineConfig(train=TrainConfig(kernel=kernel, **train))
    return pretrain_key(config, seed=0, data_key=DATA)


@needs_native
def test_auto_is_keyed_as_the_native_kernel_where_it_runs():
    assert key()["train"]["kernel"] == "native" and key() == key("native")
    assert key("xla")["train"]["kernel"] == "xla" and key("xla") != key()


def test_auto_is_keyed_as_xla_without_a_compiler(monkeypatch):
    """A machine without a compiler trains 'auto' on XLA: its entry must not be the one a
    machine with the native kernel wrote (the roundings differ)."""
    monkeypatch.setattr(native, "unavailable_reason", lambda: "NativeBuildError: no C++ compiler")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert key()["train"]["kernel"] == "xla" and key() == key("xla")
    bf16 = PipelineConfig(model=dataclasses.replace(PipelineConfig().model, compute_dtype="bfloat16"))
    assert pretrain_key(bf16, seed=0, data_key=DATA)["train"]["kernel"] == "xla"


def test_key_names_the_checkpoint_format_and_ignores_what_changes_no_number():
    assert key()["checkpoint_format"] == ckpt.FORMAT_VERSION
    assert key(progress=False, log_every_steps=7) == key()
    with pytest.raises(ValueError, match="train.kernel"):
        key("fast")
