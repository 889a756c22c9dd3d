# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench gpu-check clean

setup: $(STAMP)

# Older releases of NVIDIA's pure-Python tensorrt.plugin package, which the plugin tests run
# our decorator plugins under (tests/nvidia_qdp.py); only their Python files are used.
NVIDIA_PLUGIN_VERSIONS := 10.9.0.34 11.1.0.106

$(STAMP): requirements.txt pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	for v in $(NVIDIA_PLUGIN_VERSIONS); do \
	  $(BIN)/pip download --quiet --no-deps --dest $(VENV)/nvidia-wheels \
	    tensorrt-cu12-bindings==$$v && \
	  $(BIN)/python -m zipfile -e $(VENV)/nvidia-wheels/tensorrt_cu12_bindings-$$v-*.whl \
	    $(VENV)/nvidia-plugin/$$v || exit 1; \
	done
	touch $(STAMP)

DEFAULT := vim_digits
DEFAULT_WEIGHTS := ssmprune/assets/vim_digits.safetensors
DEMO_OUT := out/demo

# The whole pipeline on the embedded default, from scratch into $(DEMO_OUT): what the models
# are, pruning, export, parity, int8 calibration, a TensorRT-RTX engine (built on the CPU),
# measured latency, a keep-ratio sweep with its plot, and a closing table of the files.
demo: setup
	rm -rf $(DEMO_OUT)
	$(BIN)/ssmprune info
	$(BIN)/ssmprune info $(DEFAULT) --prune $(DEFAULT)_top
	$(BIN)/ssmprune visualize vim_s --prune vim_s_paper -o $(DEMO_OUT)/pruning_vim_s.png
	$(BIN)/ssmprune export $(DEFAULT) --checkpoint $(DEFAULT_WEIGHTS) --prune $(DEFAULT)_top --batch dynamic:32 -o $(DEMO_OUT)/$(DEFAULT)
	$(BIN)/ssmprune parity $(DEMO_OUT)/$(DEFAULT) --batch 8
	$(BIN)/ssmprune calibrate $(DEMO_OUT)/$(DEFAULT) --data digits:train --samples 256 -o $(DEMO_OUT)/$(DEFAULT)_int8
	$(BIN)/ssmprune build $(DEMO_OUT)/$(DEFAULT) --no-plugins --target sm_86 -o $(DEMO_OUT)/$(DEFAULT).engine
	$(BIN)/ssmprune bench $(DEFAULT) $(DEFAULT)_top $(DEMO_OUT)/$(DEFAULT) $(DEMO_OUT)/$(DEFAULT)_int8 --batch 1 --iterations 20 --threads 1 --plot $(DEMO_OUT)/bench.png
	$(BIN)/ssmprune sweep $(DEFAULT) --keep-ratios 1.0,0.9,0.8 --data digits:held_out --iterations 10 -o $(DEMO_OUT)/sweep
	$(BIN)/python demo/summary.py $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -n 2 --dist worksteal -q

bench: setup
	$(BIN)/python benchmarks/bench_scan.py
	$(BIN)/python benchmarks/bench_forward.py

# The prepared GPU check (README, "GPU check"); without a GPU every item is skipped.
# PYTHON_RUN=python3 runs it with another interpreter (a lent GPU machine's), no setup.
OUT ?= out/gpu-check
PYTHON_RUN ?= $(BIN)/python

gpu-check: $(if $(filter $(BIN)/python,$(PYTHON_RUN)),setup)
	PYTHONPATH=. $(PYTHON_RUN) benchmarks/gpu_check.py -o $(OUT)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
