# podnat: the verbs a newcomer looks for. Everything runs from a fresh clone as root:
#   make demo    the lab (real pods on this machine), then podnat against it
#   make test    unit + integration (root: netns, iptables, Envoy) + the e2e suite on the lab
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
APT_PACKAGES := iptables ipset iproute2 nftables procps util-linux chromium chromium-driver librsvg2-bin fonts-dejavu-core prometheus
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test unit integration lint bench soak clean conformance workflows corpus pictures

install: system-deps $(STAMP)

# System packages the lab and the integration tests need (root only; a no-op when present).
system-deps:
	@missing=""; for b in iptables-restore iptables-legacy-restore ipset ip nft setpriv pkill chromium chromedriver rsvg-convert promtool nsenter; do \
	  command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (apt: $(APT_PACKAGES))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else echo "missing$$missing: install $(APT_PACKAGES) (as root) for the lab and integration tests"; fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>/dev/null || true
	# compat: a plain path in a .pth (the default editable finder is imported at every start, ~20 ms);
	# setuptools calls the mode transitional, hence the fallback
	$(PY) -m pip install -q -e '.[lab,dev,agent]' --config-settings editable_mode=compat 2>/dev/null \
	  || $(PY) -m pip install -q -e '.[lab,dev,agent]'
	touch $(STAMP)

demo: install
	@mkdir -p out
	$(BIN)/podnat lab up --agent-interval 5
	export KUBECONFIG=$$($(BIN)/podnat lab kubeconfig); \
	pp=$$(kubectl get pods -n bookinfo -l app=productpage -o name); \
	kubectl exec -n bookinfo $$pp -c productpage -- curl -s -o /dev/null -w 'productpage: HTTP %{http_code}\n' 127.0.0.1:9080/; \
	agent=/api/v1/namespaces/podnat-system/pods/$$(kubectl get pods -n podnat-system -o name | cut -d/ -f2):9477/proxy; \
	$(BIN)/podnat verify -n bookinfo; \
	$(BIN)/podnat inspect deploy/reviews-v1 -n bookinfo --source debug --probe --diagram out/reviews-v1.svg; \
	$(BIN)/podnat lab break reviews-v1 no-prerouting-jump; \
	echo "fault injected; podnat's node agent (sweeping every 5 s) notices it without anyone running podnat:"; \
	for i in $$(seq 30); do kubectl get --raw $$agent/metrics | grep -q 'reviews-v1.*status="drift"' && break; sleep 1; done; \
	kubectl get --raw $$agent/metrics | grep '^podnat_pod_status{.*reviews-v1'; \
	rv=$$(kubectl get pods -n bookinfo -l app=reviews,version=v1 -o name); \
	for i in $$(seq 10); do kubectl describe -n bookinfo $$rv | grep -q CaptureDrift && break; sleep 1; done; \
	echo "kubectl describe -n bookinfo $$rv (its Events: the agent's):"; \
	kubectl describe -n bookinfo $$rv | sed -n '/^Events:/,$$p'; \
	$(BIN)/podnat verify -n bookinfo --html out/verify.html; rc=$$?; \
	$(BIN)/podnat lab down; \
	echo "verify (through the agent: no exec, no debug container) exited $$rc after the fault (1: drift found, as expected); see out/reviews-v1.svg and out/verify.html"

test: install workflows
	$(PY) -m pytest tests/unit tests/integration tests/e2e/test_manifests.py tests/e2e/test_capture_setup.py
	$(MAKE) --no-print-directory e2e-lab
	$(MAKE) --no-print-directory e2e-lab-agent

# The GitHub workflows against the schema check-jsonschema ships (offline: no download).
workflows: $(STAMP)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: install
	$(PY) -m pytest tests/integration

# The gate CI runs before the tests: the layering (.importlinter), the formatter, the linter, the types.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff format --check podnat tests tools bench
	$(BIN)/ruff check podnat tests tools bench
	$(BIN)/mypy podnat tools bench

conformance: $(STAMP)
	$(PY) tools/conformance.py

corpus: $(STAMP)
	$(PY) tools/corpus.py

# The README's pictures (docs/pictures/*.png) from real tables: rsvg-convert and Chromium (Selenium).
pictures: install
	$(PY) -m tools.pictures

bench: install
	$(PY) bench/run.py

# The agent over 1,000 sweeps of 200 pods, 20 deleted and 20 created before each: RSS and open fds
# flat (bench/agent_soak.py; about an hour on 2 cores). CI runs a short version (test_agent_soak.py).
soak: install
	$(PY) bench/agent_soak.py --pods 200 --sweeps 1000 --churn 20

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache out

include mk/e2e.mk
