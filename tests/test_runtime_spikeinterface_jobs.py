"""spikeinterface_jobs: SpikeInterface's global job settings for a block, restored afterwards
(also when the block raises)."""

import pytest
from spikeinterface.core import get_global_job_kwargs

from esort_jax.runtime.spikeinterface_jobs import spikeinterface_jobs


def test_settings_hold_inside_and_are_restored_even_on_error():
    before = dict(get_global_job_kwargs())
    with spikeinterface_jobs(n_jobs=3, pool_engine="thread", progress_bar=False):
        inside = get_global_job_kwargs()
        assert inside["n_jobs"] == 3 and inside["pool_engine"] == "thread" and inside["progress_bar"] is False
    assert dict(get_global_job_kwargs()) == before
    with pytest.raises(RuntimeError, match="boom"):
        with spikeinterface_jobs(n_jobs=2):
            raise RuntimeError("boom")
    assert dict(get_global_job_kwargs()) == before
