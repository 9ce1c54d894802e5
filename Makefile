# sio-cluster: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help deps build release run run-node test test-unit test-e2e test-manifests lint fmt clean images images-test images-test-short images-self-check

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-15s %s\n", $$1, $$2}'

deps: ## Install what a fresh Debian machine lacks (cmake, redis-server, promtool, npm packages)
	@deploy/local/deps.sh

build: deps ## Build every crate and binary (debug)
	$(CARGO) build --workspace --bins

release: deps ## Build the release binaries
	$(CARGO) build --workspace --release --bins

run: release ## Start a local cluster (redis, 3 nodes, proxy on 127.0.0.1:4000) in the foreground; Ctrl-C stops it
	@deploy/local/run.sh

test: build ## Run every test: unit, whole-process with real Redis and official clients, manifests, the images
	$(CARGO) nextest run --workspace --profile ci
	@if [ -x tests/manifests/check.sh ]; then tests/manifests/check.sh; fi
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory images IMAGES_PROFILE=debug && $(MAKE) --no-print-directory images-test-short; \
	  else echo "images: SKIPPED (debootstrap and buildah need root; run make images images-test as root)"; fi

test-unit: ## Unit tests only (fast)
	$(CARGO) nextest run --workspace --lib --bins

lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output and test logs
	$(CARGO) clean

.PHONY: fuzz
fuzz: build ## Fuzz a local cluster (2 nodes, proxy) for FUZZ_SECONDS (default 120); FUZZ_SEED=N replays a run's inputs
	FUZZ_SECONDS=$${FUZZ_SECONDS:-120} $(CARGO) test -p sio-tests --test fuzz -- --nocapture

.PHONY: bench
bench: ## Build, then benchmark against Node Socket.IO, HAProxy and nginx (< 30 min); writes bench/results/<date>.{json,md} and charts
	@bench/run.sh

IMAGES_PROFILE ?= release
images: ## Build the sio-node and sio-proxy images with buildah (local debian:bookworm-slim, host-built binaries; IMAGES_PROFILE=debug for debug binaries)
	@IMAGES_PROFILE=$(IMAGES_PROFILE) deploy/images/build.sh

IMAGES_PY = $$(python3 -c 'import yaml' 2>/dev/null && echo python3 || echo /usr/bin/python3)
images-test: images-test-short images-self-check ## Start Redis, 3 nodes and a proxy from the built images with k8s/overlays/dev's settings, check them with the official client; then the self-check

images-self-check: ## Check that the images test fails on four broken copies of the dev overlay
	@deploy/images/deps.sh
	@$(IMAGES_PY) deploy/images/test.py --overlay k8s/overlays/dev --self-check

images-test-short: ## images-test without the broken-overlay pass (part of make test)
	@deploy/images/deps.sh
	@$(IMAGES_PY) deploy/images/test.py --overlay k8s/overlays/dev
