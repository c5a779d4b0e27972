# Silk: the commands a developer runs. Everything is installed from the package
# registries into .venv (Blender 5.0 as a Python module) and .venv-blender42 (the
# oldest supported LTS), so a fresh machine needs only Python 3.11 and make.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
BLENDER_VERSION ?= 5.0.1
BLENDER_LTS_VERSION ?= 4.2.23
VENV := .venv
VENV_LTS := .venv-blender42
PYTEST_ARGS ?=

.PHONY: all venv node demo test test-latest test-lts bench bench-animation bench-noise bench-latent-walk bench-overhead \
	bench-mini train-mini gpu-check bench-motion gpu-check-motion build clean

all: test

$(VENV)/.ready: requirements/test.txt requirements/worker.txt bridge/worker-requirements.txt Makefile
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Blender 4.2-5.0 as a module needs Python 3.11; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet bpy==$(BLENDER_VERSION) -r requirements/test.txt -r requirements/worker.txt
	touch $@

$(VENV_LTS)/.ready: requirements/test.txt Makefile
	$(PYTHON) -m venv $(VENV_LTS)
	$(VENV_LTS)/bin/python -m pip install --quiet bpy==$(BLENDER_LTS_VERSION) -r requirements/test.txt
	touch $@

venv: $(VENV)/.ready $(VENV_LTS)/.ready

# The Flamenco job type's tests run it under Node.js: installed from Debian's packages when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
node:
	@command -v node >/dev/null || command -v nodejs >/dev/null || { \
		echo "Installing Node.js (nodejs) from Debian's packages for the farm job type tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs; }

## Render the demo scene to out/: guides, then a short animation painted twice (independent
## frames, and with feedback) side by side as out/demo.gif, and the contact sheet.
## Default model: SD 1.5 (downloaded); offline it says so once and paints with `mini` where
## its weights are in models/mini (make train-mini), else with `tiny` (random weights).
## MOTION_MODULE=tiny (or a hub id, folder or file) adds a third column painted in a motion module's windows.
MODEL ?=
MOTION_MODULE ?=
demo: $(VENV)/.ready
	MODEL=$(MODEL) MOTION_MODULE=$(MOTION_MODULE) $(VENV)/bin/python tools/demo.py

## The whole test suite on Blender $(BLENDER_VERSION), then on $(BLENDER_LTS_VERSION) LTS.
test: test-latest test-lts

test-latest: $(VENV)/.ready node
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

# The bridge (no bpy) is tested once, above; its worker runs in $(VENV) in both runs.
test-lts: $(VENV_LTS)/.ready $(VENV)/.ready node
	$(VENV_LTS)/bin/python -m pytest tests --ignore=tests/bridge $(PYTEST_ARGS)

## Guides against Cycles on a 200k-triangle scene at 512x512, and the worker bridge
## (frame round trips, generation overhead); see docs/benchmarks.md.
bench: $(VENV)/.ready
	$(VENV)/bin/python tools/bench_guides.py
	$(VENV)/bin/python tools/bench_bridge.py

## Silk's per-frame overhead against a plain diffusers call on the full-size sd15-random
## (256x256, 4 steps, two ControlNets, peak memory of both); see docs/benchmarks.md.
bench-overhead: $(VENV)/.ready
	$(VENV)/bin/python tools/bench_overhead.py

## On a machine with an NVIDIA GPU: fp16/bf16, CPU offload, attention slicing, VAE tiling,
## out-of-memory recovery, time and VRAM per frame of sd15-random (offline); see docs/worker.md.
gpu-check: $(VENV)/.ready
	$(VENV)/bin/python tools/gpu_check.py
	$(VENV)/bin/python tools/gpu_check_motion.py

## What the `mini` model does with Silk's guides (edges, seeds, image-to-image); see docs/benchmarks.md.
bench-mini: $(VENV)/.ready
	$(VENV)/bin/python tools/bench_mini.py

## Train `mini` from scratch into models/mini, as the shipped weights were made: each stage
## bounded by steps, so it is the same work on any machine (measured on 2 idle cores: 48 min,
## 7.6 of them rendering the data); see tools/mini/README.md and docs/benchmarks.md.
## MINI_DATA, MINI_WORK and MINI_OUT say where the data, the work and the model go.
MINI_DATA ?= out/mini-data
MINI_WORK ?= out/mini-work
MINI_OUT ?= models/mini
train-mini: $(VENV)/.ready $(MINI_DATA)/.done
	$(VENV)/bin/python tools/mini/train.py vae --data $(MINI_DATA) --work $(MINI_WORK) --steps 3841
	$(VENV)/bin/python tools/mini/train.py decoder --data $(MINI_DATA) --work $(MINI_WORK) --steps 2539 & \
	$(VENV)/bin/python tools/mini/train.py diffusion --data $(MINI_DATA) --work $(MINI_WORK) --steps 600 \
		--noise-schedule sd15 --timestep-power 1; \
	wait
	$(VENV)/bin/python tools/mini/train.py diffusion --data $(MINI_DATA) --work $(MINI_WORK) --steps 5550 \
		--noise-schedule sd15 --init-from $(MINI_WORK) --threads 2
	$(VENV)/bin/python tools/mini/train.py diffusion --data $(MINI_DATA) --work $(MINI_WORK) --steps 6301 \
		--init-from $(MINI_WORK) --threads 2
	$(VENV)/bin/python tools/mini/train.py export --work $(MINI_WORK) --out $(MINI_OUT) --controlnet-scale 1.5

## The training pictures: 800 procedural scenes rendered by Blender, two processes side by side.
$(MINI_DATA)/.done: | $(VENV)/.ready
	$(VENV)/bin/python tools/mini/make_data.py --out $(MINI_DATA) --scenes 400 --per-shard 25 & \
	$(VENV)/bin/python tools/mini/make_data.py --out $(MINI_DATA) --scenes 400 --first-scene 400 --per-shard 25; \
	wait
	touch $@

## Temporal coherence and speed of animation modes on the demo scene (tiny by default;
## MODEL=<repo id or folder> with a GPU); see docs/benchmarks.md.
bench-animation: $(VENV)/.ready
	MODEL=$(MODEL) $(VENV)/bin/python tools/bench_temporal.py

## Warped latent noise after 16 frames of a slow pan and a 1.3x zoom: Gaussian, white, travelling
## with the surface (no Blender, no model); see docs/benchmarks.md.
bench-noise: $(VENV)/.ready
	$(VENV)/bin/python tools/bench_noise.py

## DRIFT's frame-to-frame noise correlation against cos(angle) and LOOP's last-to-first step
## against its median step (engine/latent_walk.py); see docs/benchmarks.md.
bench-latent-walk: $(VENV)/.ready
	$(VENV)/bin/python tools/bench_latent_walk.py

## Motion-module windows joined by exact motion against per-frame feedback, blind joins and
## diffusers' FreeNoise (tiny by default; MODEL=... MOTION_MODULE=... with a GPU).
bench-motion: $(VENV)/.ready
	MODEL=$(MODEL) MOTION_MODULE=$(MOTION_MODULE) $(VENV)/bin/python tools/bench_motion.py

## On a GPU: time and peak memory of one 16-frame 512x512 window with SD 1.5-shaped random models.
gpu-check-motion: $(VENV)/.ready
	$(VENV)/bin/python tools/gpu_check_motion.py

## dist/silk-<version>-<platform>.zip, one per platform (linux_x64, windows_x64, macos_arm64,
## macos_x64), each with its own numba wheels, built and validated with Blender's extension tooling.
build: $(VENV)/.ready
	$(VENV)/bin/python tools/build_extension.py --output-dir dist

clean:
	rm -rf dist out .pytest_cache
