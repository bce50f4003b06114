# wgrelay: every target sets up what it needs (.venv, and Debian packages when root).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all demo nat-matrix test test-slow lint bench sysdeps venv clean

all: test

# sysdeps first: the batched-I/O extension builds against python3-dev
$(STAMP): pyproject.toml setup.py | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

sysdeps:
	@scripts/install-sysdeps.sh

## make demo: a relayed WireGuard tunnel coming up by itself: in network namespaces
## as root, told by the network simulator otherwise (wgrelay demo --simulated)
demo: sysdeps venv
	$(BIN)/wgrelay demo

## make nat-matrix: docs/NAT_MATRIX.md, the path the agents take for each pair of NATs
nat-matrix: venv
	$(BIN)/wgrelay demo --simulated --matrix > docs/NAT_MATRIX.md.tmp
	mv docs/NAT_MATRIX.md.tmp docs/NAT_MATRIX.md

## make test: unit, loopback, simulation and (as root) namespace system tests
test: sysdeps venv
	$(BIN)/pytest

## make test-slow: the long-running property tests (100k+ examples)
test-slow: venv
	$(BIN)/pytest -m slow -p no:cacheprovider

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src tests bench

## make bench: relay throughput/latency vs direct and a plain forwarder (loopback),
## 1,000 agents and 200 relays in the simulator (unfederated, then federated),
## then relayed vs direct WireGuard iperf3 on the namespace testbed, and
## multi-hop (two relays) vs one relay (as root)
bench: sysdeps venv
	$(MAKE) -C bench
	$(BIN)/python bench/relay_bench.py
	$(BIN)/python bench/sim_scale.py
	$(BIN)/python bench/federation_scale.py
	$(BIN)/python bench/testbed_iperf.py
	$(BIN)/python bench/multihop_iperf.py

clean:
	rm -rf $(VENV) bench/build .pytest_cache .mypy_cache .ruff_cache
