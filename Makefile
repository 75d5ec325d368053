# Every target bootstraps .venv if missing. torch is installed first with an exact pin: that pin
# resolves to a local CPU wheel here, while an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: venv demo test test-slow bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[all]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

demo: venv
	OMP_NUM_THREADS=1 $(PY) -m cfdg_aug.experiments.demo --out demo_out

# Two pytest workers of one torch thread each, a test file per worker (its module fixtures are made
# once): on the 2-core machine the suite took 5m19s this way against 9m58s in one process at 2
# threads (685 tests both times), whose small ops leave the second core mostly idle.
test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -x -n 2 --dist loadfile --timeout=600 tests

test-slow: venv
	$(PY) -m pytest -q -m slow --timeout=3600 tests

# The SynthER peer of the generator benchmark: --no-deps, since its requirements would replace the
# CPU torch with a CUDA build (and its package __init__ needs torchvision; we load one file of it).
bench: venv
	$(PIP) install -q --no-deps "denoising-diffusion-pytorch==2.3.4"
	OMP_NUM_THREADS=2 $(PY) -m benchmarks.run_all

lint: venv
	$(PY) -m ruff check cfdg_aug integrations tests benchmarks examples
	$(PY) -m mypy cfdg_aug integrations

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache demo_out
