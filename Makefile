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
# `make train` on your own frames and GPUs, e.g.:
#   make train DATA=~/sm64_frames SHARDS=data/sm64_shards SIZE=88x66 VAL=2000 CONFIG=configs/gc7m.toml NPROC=8 RUN=sm64
SIZE ?= 64x48
VAL ?= 256
DEMO_FRAMES := data/demo_frames
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: venv test test-fast train bench soak clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,video,tensorboard,fid]'
	touch $@

venv: $(STAMP)

# Everything a CPU can run (GPU tests skip themselves without CUDA); soak runs are `make soak`.
test: $(STAMP)
	$(PY) -m pytest -q

# The edit loop: no slow or multi-process tests, well under 2 minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not multiproc and not soak"

# Demo frames (only when DATA is the default), pack, train; each step is cached, so running it
# again resumes the same run (RUN) from its newest checkpoint.
train: $(STAMP) $(DEMO_STAMP)
	$(if $(filter $(DEMO_FRAMES),$(DATA)),$(PY) tools/make_demo_frames.py $(DATA))
	$(PY) -m shardgan.cli pack $(DATA) $(SHARDS) --size $(SIZE) --val $(VAL)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m shardgan.train --config $(CONFIG) data.shards=$(SHARDS) run.name=$(RUN) $(ARGS)

$(DEMO_STAMP): pyproject.toml constraints.txt $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]' || echo "warning: vizdoom did not install; the demo frames will be procedural stand-ins"
	touch $@

soak: $(STAMP)
	$(PY) -m pytest -q -m soak

# litdata (the `bench` extra) is the peer the benchmarks compare against.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) tools/bench_pack.py
	$(PY) tools/bench_loader.py
	$(PY) tools/bench_train.py

clean:
	rm -rf $(VENV) data
