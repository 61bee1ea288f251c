# The two commands a newcomer needs: `make demo` and `make test`.
# Everything they need is set up here, on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test venv system-deps controlplane images lint bench clean

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

# Builds (once, then cached) kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd and kubelet (one binary) for the local cluster
# (localcluster/: what make demo, the benchmarks and the tests run on).
controlplane: venv
	$(PY) -m localcluster.controlplane build

# Builds (once, then cached) the images real nodes run: a Debian base, the
# pause image, podiam's two Dockerfiles and the guide's AWS CLI image; as
# root (buildah), else the real-node tiers cannot run anyway.
images: venv system-deps controlplane
	@if [ "$$(id -u)" -eq 0 ]; then $(PY) -m localcluster.images build; else echo "images: not root, skipped (real nodes need root)"; fi

# The proxy never imports the operator, the operator only the proxy's wire
# models, and the operator's layers (handlers, assembly, engine, toolkits,
# core) import only downwards; the product never imports the local cluster
# (localcluster/), which never imports the tests, nor do demo/ and bench/
# (import-linter). Both packages and the local cluster type-check under mypy
# --strict; no dead code in the product (vulture, [tool.vulture] in pyproject.toml).
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy operator/podiam_operator metadata_proxy
	$(VENV)/bin/mypy localcluster
	$(VENV)/bin/vulture

test: venv system-deps controlplane images lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Real nodes as root (the images they run come from `images`), else the stand-in; `python -m demo --help`.
demo: venv system-deps controlplane images
	$(PY) -m demo

# Benchmarks (not tests): figures and the machine they ran on are in the README.
bench: venv system-deps controlplane
	$(PY) -m bench.proxy.run
	$(PY) -m bench.operator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .demo
