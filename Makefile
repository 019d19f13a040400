# `make test` and `make train` are all the set-up a fresh clone needs: they build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?= data/demo_frames
SHARDS ?= data/demo_shards
CONFIG ?= configs/demo.toml
NPROC ?= 2
RUN ?= demo
ARGS ?=

.PHONY: venv test train bench soak clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,video]'
	touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

soak: $(STAMP)
	$(PY) -m pytest -q -m soak

bench: $(STAMP)
	$(PY) tools/bench_pack.py
	$(PY) tools/bench_loader.py
	$(PY) tools/bench_train.py

clean:
	rm -rf $(VENV) data
