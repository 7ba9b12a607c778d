# Two commands on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAISS ?= cpu
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; a bare `torch` would pull CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(FAISS),dev]"
	# the static embedding model (model2vec distillation of the packaged MiniLM), built once, offline
	$(BIN)/python -m prefcli.models.embed
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on sample_data/ (pipelines/default.toml): unchanged stages are skipped on a re-run.
demo: $(STAMP)
	$(BIN)/prefcli run pipelines/default.toml --workdir demo_out/run

test: $(STAMP)
	$(BIN)/python -m pytest

# everything but the tests marked slow (a fresh static-model build, long real-data runs)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf demo_out .pytest_cache
