# `make test` and `make train` are all the set-up a fresh clone needs: they build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

DATA ?= data/demo_frames
# Your frames pack into a folder of their own (data/<frames folder>_shards), never into the demo's.
SHARDS ?= $(if $(filter data/demo_frames,$(DATA)),data/demo_shards,data/$(notdir $(abspath $(DATA)))_shards)
CONFIG ?= configs/demo.toml
NPROC ?= 1
RUN ?= demo
ARGS ?=
# `make train` on your own frames and GPUs, e.g.:
#   make train DATA=~/sm64_frames SIZE=88x66 VAL=2000 CONFIG=configs/gc7m.toml NPROC=8 RUN=sm64
SIZE ?= 64x48
VAL ?= 256
DEMO_FRAMES := data/demo_frames
DEMO_STAMP := $(VENV)/.demo-installed
FFCV_VENV := .venv-ffcv
FFCV_PY := $(FFCV_VENV)/bin/python
FFCV_STAMP := $(FFCV_VENV)/.installed
FFCV_APT := pkg-config libturbojpeg0-dev libopencv-dev

.PHONY: venv ffcv-venv test test-fast train bench soak clean

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

# Demo frames and their extra (only when DATA is the default), pack, train; each step is cached,
# so running it again resumes the same run (RUN) from its newest checkpoint. shardgan.launch is
# torchrun ending as the workers did: after Ctrl-C one line, "run `make train ...` again to resume".
DEMO := $(filter $(DEMO_FRAMES),$(DATA))
RESUME := make train$(if $(MAKEOVERRIDES), $(MAKEOVERRIDES))
train: $(STAMP) $(if $(DEMO),$(DEMO_STAMP))
	$(if $(DEMO),$(PY) tools/make_demo_frames.py $(DATA))
	$(PY) -m shardgan.cli pack $(DATA) $(SHARDS) --size $(SIZE) --val $(VAL)
	SHARDGAN_RESUME_COMMAND='$(RESUME)' $(PY) -m shardgan.launch --standalone --nproc_per_node=$(NPROC) -m shardgan.train --config $(CONFIG) data.shards=$(SHARDS) run.name=$(RUN) $(ARGS)

$(DEMO_STAMP): pyproject.toml constraints.txt $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[demo]' || echo "warning: vizdoom did not install; the demo frames will be procedural stand-ins"
	touch $@

soak: $(STAMP)
	$(PY) -m pytest -q -m soak

# litdata (the `bench` extra) and FFCV (ffcv-venv; bench_loader says so if it could not be built) are the peers.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	-$(MAKE) ffcv-venv
	$(PY) tools/bench_pack.py
	$(PY) tools/bench_loader.py
	$(PY) tools/bench_peers.py
	$(PY) tools/bench_train.py

# FFCV (tools/bench_loader.py's peer) needs numpy<2: its own venv, seeing $(VENV)'s torch through a .pth after its own site-packages.
$(FFCV_STAMP): | $(STAMP)
	dpkg -s $(FFCV_APT) >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends $(FFCV_APT); } \
		|| { echo "ffcv-venv: could not install $(FFCV_APT) (needs root and apt); FFCV's C extension builds against them" >&2; exit 1; }
	test -x $(FFCV_PY) || $(PYTHON) -m venv $(FFCV_VENV)
	rm -f $(FFCV_VENV)/lib/python*/site-packages/zz-main-venv-torch.pth
	$(FFCV_PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(FFCV_PY) -m pip install --quiet 'numpy==1.26.4' 'opencv-python-headless==4.10.0.84' 'numba==0.60.0' \
		terminaltables fastargs assertpy psutil tqdm Pillow
	$(FFCV_PY) -m pip install --quiet --no-deps pytorch_pfn_extras
	$(FFCV_PY) -m pip install --quiet --no-deps --no-build-isolation 'ffcv==1.0.2' \
		|| { echo "ffcv-venv: ffcv 1.0.2 did not build (check pkg-config --libs opencv4 libturbojpeg)" >&2; exit 1; }
	$(FFCV_PY) -c "import os, sys, sysconfig; own = sysconfig.get_path('purelib'); main = os.path.join(os.path.abspath('$(VENV)'), os.path.relpath(own, sys.prefix)); \
		print(os.path.relpath(main, own), file=open(os.path.join(own, 'zz-main-venv-torch.pth'), 'w'))"
	$(FFCV_PY) -c "import importlib.metadata as m, numpy, torch, ffcv, cv2; assert numpy.__version__ < '2', numpy.__version__; torch.from_numpy(numpy.arange(3)).sum().item(); print('ffcv', m.version('ffcv'), 'numpy', numpy.__version__, 'torch', torch.__version__)" \
		|| { echo "ffcv-venv: import numpy, torch, ffcv failed in $(FFCV_VENV) (torch comes from $(VENV); make venv first)" >&2; exit 1; }
	touch $@

ffcv-venv: $(FFCV_STAMP)

clean:
	rm -rf $(VENV) $(FFCV_VENV) data
