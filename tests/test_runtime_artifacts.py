"""esort_jax.runtime.artifacts: synthesised recordings and pretrained checkpoints are made once
and then found in the cache; their keys are the keys the code before the reorganisation
(170ba88, experiments/_data.synthesis_key and experiments/_stages.cached_pretrain) computed,
except two deliberate changes of the pretraining key (issue 14: checkpoint format 3, with
checksums; the layer-1 kernel as resolved on the machine, not 'auto'), so older pretrained
entries are rebuilt once; a stopped pretraining resumes from its work folder; two concurrent
jobs asking for the same artefacts build each once."""

import dataclasses
import multiprocessing
import warnings
from pathlib import Path

from test_fast_native import needs_native

from data_gen import SynthesisConfig
from data_gen.config import ProbeConfig, UnitsConfig
from data_gen.synthesize import GENERATOR, GENERATOR_VERSION
from esort_jax import checkpoint as ckpt
from esort_jax.config import to_dict
from esort_jax.io import read_recording_folder
from esort_jax.model import ModelConfig
from esort_jax.pipeline import PipelineConfig, fit
from esort_jax.runtime.artifacts import pretrain_key, pretrained_checkpoint, synthesis_key, synthesised_recording
from esort_jax.runtime.cache import config_hash
from esort_jax.train import TrainConfig
from esort_jax.transfer import TransferConfig
from esort_jax.windows import WindowConfig
from tests._tiny import TINY_MODEL, fast_compile, tiny_recording  # noqa: F401  (fixture)

TINY_DATA = SynthesisConfig(duration_s=0.2, seed=1, probe=ProbeConfig(n_channels=8), units=UnitsConfig(n_units=3))
CONFIG = PipelineConfig(model=TINY_MODEL, train=TrainConfig(epochs=1, batch_size=64, progress=False, kernel="xla"))
DATA_KEY = {"path": "recordings/source.h5"}


# ----------------------------------------------------------------------------------------------
# Keys: the pre-reorganisation ones


def _old_pretrain_key(model, windows, train, seed, data_key):
    """experiments/_stages.cached_pretrain's key at 170ba88, written out."""
    return {
        "role": "pretrain",
        "checkpoint_format": ckpt.FORMAT_VERSION,
        "data": data_key,
        "model": to_dict(model),
        # (settings added later, at their defaults, are not in the key: issue 17's label_mode, max_steps, ...)
        "windows": {k: v for k, v in to_dict(windows).items() if k != "label_mode"},
        "train": {k: v for k, v in to_dict(train).items() if k not in (
            "progress", "log_every_steps", "max_steps", "early_stopping_patience_steps", "early_stopping_min_delta")
            and not k.startswith("collision_")},
        "seed": seed,
    }


def test_pretrain_key_is_the_pre_reorganisation_key():
    """With the kernel given ('xla'), the key is 170ba88's dict; its hashes differ from 170ba88's
    (6523724401a74fe1, ce33ac9a83d636fc) only through checkpoint_format 3."""
    model = ModelConfig(window=20, anchor=9, temporal_features=(4, 8), spatial_features=16)
    windows = WindowConfig(spikes_per_unit=5)
    train = TrainConfig(epochs=1, batch_size=64, progress=False, log_every_steps=5, kernel="xla")
    config = PipelineConfig(model=model, windows=windows, train=train)
    key = pretrain_key(config, seed=2, data_key=DATA_KEY)
    assert key == _old_pretrain_key(model, windows, train, 2, DATA_KEY) and key["checkpoint_format"] == 3
    assert key["train"]["stop_after_epochs"] is None and "progress" not in key["train"]
    assert config_hash(key) == "49b0ac7ec6ac5cd0"
    data_key = synthesis_key(SynthesisConfig(duration_s=0.5, seed=3, probe=ProbeConfig(n_channels=16)))
    assert config_hash(data_key) == "76635a0a74fa09e7"
    xla = PipelineConfig(train=TrainConfig(kernel="xla"))
    assert config_hash(pretrain_key(xla, seed=0, data_key=data_key)) == "8fc402c240f703e1"


@needs_native
def test_auto_is_keyed_as_the_native_kernel_where_it_runs():
    def key(kernel):
        return pretrain_key(CONFIG.replace(train=dataclasses.replace(CONFIG.train, kernel=kernel)), seed=0,
                            data_key=DATA_KEY)

    assert key("auto")["train"]["kernel"] == "native" and key("auto") == key("native") != key("xla")


def test_auto_is_keyed_as_xla_without_a_compiler(monkeypatch):
    """A machine without a compiler trains 'auto' on XLA: its entry must not be the one a
    machine with the native kernel wrote (the float roundings differ)."""
    from esort_jax.fast import native

    monkeypatch.setattr(native, "unavailable_reason", lambda: "NativeBuildError: no C++ compiler")
    auto = CONFIG.replace(train=dataclasses.replace(CONFIG.train, kernel="auto"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert pretrain_key(auto, seed=0, data_key=DATA_KEY) == pretrain_key(CONFIG, seed=0, data_key=DATA_KEY)
    assert pretrain_key(CONFIG, seed=0, data_key=DATA_KEY)["train"]["kernel"] == "xla"


def test_pretrain_key_ignores_only_settings_that_change_no_number():
    key = config_hash(pretrain_key(CONFIG, seed=0, data_key=DATA_KEY))

    def changed(**train):
        config = CONFIG.replace(train=dataclasses.replace(CONFIG.train, **train))
        return config_hash(pretrain_key(config, seed=0, data_key=DATA_KEY)) != key

    assert not changed(progress=True) and not changed(log_every_steps=1)
    assert changed(epochs=2) and changed(learning_rate=1e-3)
    assert config_hash(pretrain_key(CONFIG, seed=1, data_key=DATA_KEY)) != key
    assert config_hash(pretrain_key(CONFIG, seed=0, data_key={"path": "other.h5"})) != key
    assert config_hash(pretrain_key(CONFIG.replace(windows=WindowConfig(jitter=4)), seed=0, data_key=DATA_KEY)) != key
    # the transfer and downstream settings are not the pretrained network's
    other = CONFIG.replace(transfer=TransferConfig(init="scratch", freeze="temporal"))
    assert pretrain_key(other, seed=0, data_key=DATA_KEY) == pretrain_key(CONFIG, seed=0, data_key=DATA_KEY)


def test_synthesis_key_is_the_generator_and_the_whole_config():
    from esort_jax.runtime.artifacts import _ADDED_SYNTHESIS_DEFAULTS

    config = to_dict(TINY_DATA)  # less the settings added later at their defaults (issue 17's harder preset)
    for section, added in _ADDED_SYNTHESIS_DEFAULTS.items():
        config[section] = {k: v for k, v in config[section].items() if k not in added}
    assert synthesis_key(TINY_DATA) == {"generator": GENERATOR, "generator_version": GENERATOR_VERSION,
                                        "config": config}
    harder = dataclasses.replace(TINY_DATA, firing=dataclasses.replace(TINY_DATA.firing, burst_fraction=0.3))
    assert synthesis_key(harder)["config"]["firing"]["burst_fraction"] == 0.3


# ----------------------------------------------------------------------------------------------
# Built once, then found


def test_synthesised_recording_is_built_once_then_found(tmp_path):
    folder, hit = synthesised_recording(TINY_DATA, tmp_path / "cache")
    assert not hit and folder == tmp_path / "cache" / "recordings" / config_hash(synthesis_key(TINY_DATA))
    recording, truth = read_recording_folder(folder)
    assert (recording.num_channels, recording.num_samples) == (8, round(0.2 * TINY_DATA.sampling_frequency))
    assert truth.num_units == 3
    written = (folder / "traces.npy").stat().st_mtime_ns
    again, hit = synthesised_recording(TINY_DATA, tmp_path / "cache")
    assert hit and again == folder and (folder / "traces.npy").stat().st_mtime_ns == written
    other, hit = synthesised_recording(dataclasses.replace(TINY_DATA, seed=2), tmp_path / "cache")
    assert not hit and other != folder
    rebuilt, hit = synthesised_recording(TINY_DATA, tmp_path / "cache", force=True)
    assert not hit and rebuilt == folder
    assert read_recording_folder(rebuilt)[0].read().tobytes() == recording.read().tobytes()  # same seed, same bytes


def _record_epochs():
    epochs = []
    return epochs, lambda epoch, metrics: epochs.append(epoch)


def test_pretrained_checkpoint_is_trained_once_then_found(tmp_path):
    source, truth = tiny_recording(duration_s=1.0)
    cache = tmp_path / "cache"
    epochs, callback = _record_epochs()
    # a transfer config is replaced: pretraining starts from scratch
    config = CONFIG.replace(transfer=TransferConfig(init="transfer", checkpoint="unused"))
    path, hit, summary = pretrained_checkpoint(source, truth, config, seed=0, cache_dir=cache, data_key=DATA_KEY,
                                               callback=callback)
    digest = config_hash(pretrain_key(CONFIG, seed=0, data_key=DATA_KEY))
    assert not hit and path == cache / "checkpoints" / digest and epochs == [0]
    assert summary["epochs"] == 1 and summary["num_units"] == 3 and summary["train_windows"] > 0
    metadata = ckpt.read_metadata(path)
    assert metadata.epoch == 1 and metadata.num_units == 3 and metadata.transfer["init"] == "scratch"
    assert metadata.extra["role"] == "pretrain" and metadata.extra["data"] == DATA_KEY
    model, _ = ckpt.load_model(path)
    assert model.num_units == 3
    assert not (cache / "pretrain_work" / digest).exists()  # the work folder is removed once copied
    again, hit, summary = pretrained_checkpoint(source, truth, config, seed=0, cache_dir=cache, data_key=DATA_KEY,
                                                callback=callback)
    assert hit and again == path and summary == {} and epochs == [0]  # nothing trained


def test_a_stopped_pretraining_resumes_from_its_work_folder(tmp_path):
    source, truth = tiny_recording(duration_s=1.0)
    cache = tmp_path / "cache"
    config = CONFIG.replace(train=dataclasses.replace(CONFIG.train, epochs=2))
    work = cache.resolve() / "pretrain_work" / config_hash(pretrain_key(config, seed=0, data_key=DATA_KEY))
    stopped = fit(source, truth, config.replace(train=dataclasses.replace(config.train, stop_after_epochs=1)),
                  seed=0, run_dir=work)  # as a killed pretraining leaves it: one epoch in the work folder
    assert not stopped.train_result.finished and ckpt.latest_checkpoint(work) is not None
    epochs, callback = _record_epochs()
    path, hit, summary = pretrained_checkpoint(source, truth, config, seed=0, cache_dir=cache, data_key=DATA_KEY,
                                               callback=callback)
    assert not hit and epochs == [1]  # only the second epoch was trained
    assert summary["epochs"] == 2 and ckpt.read_metadata(path).epoch == 2
    assert not work.exists()


# ----------------------------------------------------------------------------------------------
# Concurrent jobs (a sweep's jobs on one machine or on a cluster's shared file system)


def _make_both_artefacts(cache, barrier, results) -> None:
    """A job that needs the tiny recording and the network pretrained on it: both asked for at
    the moment the other job asks (the barrier)."""
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    barrier.wait(timeout=120)
    folder, recording_hit = synthesised_recording(TINY_DATA, cache)
    recording, truth = read_recording_folder(folder)
    barrier.wait(timeout=120)
    checkpoint, checkpoint_hit, _ = pretrained_checkpoint(recording, truth, CONFIG, seed=0, cache_dir=cache,
                                                          data_key=synthesis_key(TINY_DATA))
    results.put((str(folder), recording_hit, str(checkpoint), checkpoint_hit))


def test_two_concurrent_jobs_build_each_artefact_once(tmp_path):
    from esort_jax.runtime.cache import entry_problem

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    jobs = [context.Process(target=_make_both_artefacts, args=(tmp_path / "cache", barrier, results))
            for _ in range(2)]
    try:
        for job in jobs:
            job.start()
        outcomes = [results.get(timeout=300) for _ in jobs]
    finally:
        for job in jobs:
            job.join(timeout=30)
            if job.is_alive():
                job.kill()
    assert [job.exitcode for job in jobs] == [0, 0]
    (folder, *_), (other_folder, *_) = outcomes
    assert folder == other_folder and sorted(o[1] for o in outcomes) == [False, True]  # one built, one found
    assert outcomes[0][2] == outcomes[1][2] and sorted(o[3] for o in outcomes) == [False, True]
    for kind, path in (("recordings", folder), ("checkpoints", outcomes[0][2])):
        entries = [p.name for p in (tmp_path / "cache" / kind).iterdir() if not p.name.endswith(".lock")]
        assert entries == [Path(path).name], entries  # no second copy, no temporaries left
    assert entry_problem(folder, synthesis_key(TINY_DATA)) is None
    assert ckpt.is_checkpoint(outcomes[0][2])
