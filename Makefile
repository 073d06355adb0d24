# vlm-trainer-operator: every set-up step lives here, so a fresh machine needs nothing by hand.
#   make test          everything (venv, control-plane binaries, lint, all tests)
#   make demo          the whole flow on an embedded local cluster
#   make cluster-up    local control plane + pod runner + S3 server; KUBECONFIG=.devcluster/kubeconfig,
#                      S3 endpoint and credentials in .devcluster/s3.env
#   make cluster-down  stop it (no process left behind)
#   make crds          regenerate crds/ and the chart's copy from the pydantic models
#   make reference     regenerate docs/reference.md and the README's troubleshooting table
#   make lint          ruff check + format check
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR):$(CURDIR)/operator:$(CURDIR)/trainer_image

.PHONY: venv k8s-bins kueue-bin seaweedfs-bin test test-unit test-trainer test-integration lint format crds crds-check reference \
        cluster-up cluster-down demo clean

venv:
	@./hack/venv.sh

k8s-bins:
	@./hack/k8s/build.sh >/dev/null

# Kueue's controller and CRDs from its Go module (cached by version; the Kueue tests need it).
kueue-bin:
	@./hack/kueue/build.sh >/dev/null

# SeaweedFS's weed (the local S3 server) from its Go module (cached by version).
seaweedfs-bin:
	@./hack/seaweedfs/build.sh >/dev/null

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

crds: venv
	$(PY) -m vlm_operator.crdgen --out crds --chart-out charts/vlm-trainer-operator/crds

reference: venv
	$(PY) hack/gen_reference.py

crds-check: venv
	$(PY) -m vlm_operator.crdgen --out crds --chart-out charts/vlm-trainer-operator/crds --check

# Fast tests first: a unit failure stops the run before the slow parts start.
test: venv k8s-bins kueue-bin seaweedfs-bin lint
	$(PY) -m pytest -m "unit" -q
	$(PY) -m pytest -m "not unit" -q

test-unit: venv
	$(PY) -m pytest -m unit -q

test-trainer: venv
	$(PY) -m pytest -m trainer -q

test-integration: venv k8s-bins kueue-bin seaweedfs-bin
	$(PY) -m pytest -m integration -q

cluster-up: venv k8s-bins seaweedfs-bin
	@$(PY) -m tests.cluster up

cluster-down: venv
	@$(PY) -m tests.cluster down

demo: venv k8s-bins seaweedfs-bin
	@./hack/demo.sh

clean: cluster-down
	rm -rf .devcluster .pytest_cache .ruff_cache
