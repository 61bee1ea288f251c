# The two commands a newcomer needs: `make demo` and `make test`.
# Everything they need is set up here, on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test venv system-deps controlplane lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# Debian packages the node tests and benchmarks use (iptables, network
# namespaces, wrk, nginx). Installed only when missing and when root.
system-deps:
	@bash scripts/system-deps.sh

# Builds (once, then cached) kube-apiserver, kube-controller-manager and etcd.
controlplane: venv
	$(PY) -m tests.controlplane build

# The proxy never imports the operator, the operator only the proxy's wire
# models (import-linter); both packages type-check under mypy --strict.
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy operator/podiam_operator metadata_proxy

test: venv system-deps controlplane lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv system-deps controlplane
	$(PY) -m demo

# Benchmarks (not tests): figures and the machine they ran on are in the README.
bench: venv system-deps controlplane
	$(PY) -m bench.proxy.run
	$(PY) -m bench.operator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .demo
