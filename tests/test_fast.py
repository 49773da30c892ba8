"""The one kernel chooser (esort_jax.fast.choose_kernel): what 'auto' picks for training and
inference, the errors for 'native' where it cannot run, and the fallback without a compiler."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from esort_jax.fast import choose_kernel
from esort_jax.train import TrainConfig
from test_fast_native import needs_native

CPU = jax.devices()


def choose(requested, purpose="train", *, devices=CPU, compute_dtype="float32", features=(8, 16)):
    return choose_kernel(requested, purpose=purpose, devices=devices, compute_dtype=compute_dtype,
                         temporal_features=features)


@needs_native
def test_auto_takes_the_native_kernel_where_it_runs():
    assert choose("auto") == "native"
    assert choose("native") == "native"
    assert choose("auto", "infer", features=(4, 8)) == "native"
    assert choose("auto", "infer", devices=CPU * 2, features=(4, 8)) == "native"  # chunks per device


def test_kernel_choice_for_training():
    assert choose("xla") == "xla"
    assert choose("auto", compute_dtype="bfloat16") == "xla"
    with pytest.raises(ValueError, match="train.kernel = 'native' cannot be used: model dtype"):
        choose("native", compute_dtype="bfloat16")
    assert choose("auto", features=(6, 8)) == "xla"
    with pytest.raises(ValueError, match="no native kernel for 6 first-layer features"):
        choose("native", features=(6, 8))
    assert choose("auto", devices=CPU * 2) == "xla"  # data parallel
    with pytest.raises(ValueError, match="2 devices"):
        choose("native", devices=CPU * 2)
    with pytest.raises(Exception, match="train.kernel"):
        TrainConfig(kernel="fast").validate()
    with pytest.raises(ValueError, match="train.kernel must be 'auto', 'xla' or 'native'; got 'fast'"):
        choose("fast")


def test_kernel_choice_for_inference():
    assert choose("auto", "infer", compute_dtype="bfloat16") == "xla"
    with pytest.raises(ValueError, match="infer.kernel = 'native' cannot be used: compute_dtype"):
        choose("native", "infer", compute_dtype="bfloat16")
    assert choose("auto", "infer", features=(3, 5)) == "xla"
    with pytest.raises(ValueError, match=r"no native kernel for temporal features \(3, 5\)"):
        choose("native", "infer", features=(3, 5))


NO_COMPILER_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_infer import make_model, sigmoid
    from esort_jax import infer
    params = infer.fold_batchnorm(make_model(3))
    x = np.random.default_rng(1).normal(0.0, 10.0, (500, 8)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = infer.predict_probabilities(params, x, infer.InferenceConfig(chunk_steps=256, block_steps=64))
    print("WARNED", [str(w.message) for w in caught])
    want = infer.predict_probabilities(params, x, infer.InferenceConfig(kernel="xla", block_steps=64))
    print("DIFF", np.abs(got - want).max())
    try:
        infer.InferenceConfig(kernel="native").resolve_kernel(params)
    except ValueError as error:
        print("ERROR", error)
    import jax
    from esort_jax.fast import choose_kernel
    kw = dict(devices=jax.devices(), compute_dtype="float32", temporal_features=(4, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print("TRAIN", choose_kernel("auto", purpose="train", **kw), [str(w.message) for w in caught])
    try:
        choose_kernel("native", purpose="train", **kw)
    except ValueError as error:
        print("TRAIN_ERROR", error)
    """
)


def test_without_a_compiler_inference_and_training_fall_back_to_xla(tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), ESORT_JAX_NATIVE_CACHE=str(tmp_path / "cache"))
    script = NO_COMPILER_SCRIPT.format(tests=os.path.dirname(__file__))
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "native CPU kernel is unavailable (NativeBuildError: no C++ compiler" in out
    assert float(out.split("DIFF")[1].split()[0]) <= 1e-6
    assert "infer.kernel = 'native' cannot be used: NativeBuildError: no C++ compiler" in out
    train_line = out.split("TRAIN ")[1].splitlines()[0]
    assert train_line.startswith("xla") and "training uses the XLA path" in train_line
    assert "train.kernel = 'native' cannot be used: NativeBuildError: no C++ compiler" in out
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
