# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
PYTEST_FLAGS ?=

.PHONY: venv demo test test-slow bench bench-online clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# Make the repository importable (esort_jax, data_gen, experiments) without a build step.
	$(PY) -c "import site, pathlib; pathlib.Path(site.getsitepackages()[0], 'esort_jax_repo.pth').write_text('$(CURDIR)\n')"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: venv
	$(PY) experiments/transfer.py

test: venv
	$(PY) -m pytest $(PYTEST_FLAGS)

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_FLAGS)

bench: venv
	$(PY) benchmarks/bench_synthesis.py

# Online sorting: replay at real-time pace into the service, 64 and 384 channels (~35 min).
BENCH_ONLINE_OUT ?= runs/bench_online
bench-online: venv
	$(PY) benchmarks/bench_online.py --out $(BENCH_ONLINE_OUT)

clean-venv:
	rm -rf $(VENV)

# Optional: the baseline sorters (Kilosort4 on CPU torch, SpykingCircus2, Tridesclous2) on top of
# the core venv, for experiments/baselines.py and the tests marked `baselines`.
BASELINES_STAMP := $(VENV)/.baselines-installed-$(shell cksum requirements-baselines.txt | cut -d' ' -f1)

.PHONY: baselines-venv test-baselines

baselines-venv: $(BASELINES_STAMP)

$(BASELINES_STAMP): requirements-baselines.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-baselines.txt
	rm -f $(VENV)/.baselines-installed-*
	touch $(BASELINES_STAMP)

test-baselines: baselines-venv
	$(PY) -m pytest -m baselines $(PYTEST_FLAGS)
