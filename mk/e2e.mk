# End-to-end runs on kind + Istio + Bookinfo (issue 6). Included by the top Makefile:
#
#   make e2e-up E2E_SETUP=cni   kind cluster, Istio for one capture setup, Bookinfo, rollout waited for
#   make e2e                    the suite (tests/e2e, --e2e) against the CURRENT kubeconfig
#   make e2e-sa-kubeconfig      a kubeconfig for the ServiceAccount podnat (manifests/e2e/) at E2E_PODNAT_KUBECONFIG
#   make e2e-dump               pods, every container's log, istio-cni-node logs and podnat's JSON of bookinfo
#                               and the kept scratch namespaces into out/e2e/ (CI on failure)
#   make e2e-down               delete the kind cluster
#   make e2e-lab                the same suite against the podnat lab (no cluster, needs root);
#                               E2E_LAB_MODE=tproxy|nftables for the lab's other modes (make e2e-lab-modes: all)
#   make e2e-lab-agent          the node agent's e2e tests against the lab running the agent
#   make e2e-tools              fetch kind, kubectl and istioctl into .tools/ (done by e2e-up when missing)
#   make e2e-tools-sums         print the sha256 lines to pin below (network; ISTIO_RELEASE=older too)
#
# `make -n e2e-up` prints what would run. Tools are fetched at pinned versions into .tools/, one file
# per version, so changing a version fetches again and nothing on PATH is used or touched.

# Capture setups (manifests/istio/<setup>.yaml): redirect | cni | nftables | tproxy | native-sidecars
E2E_SETUPS := redirect cni nftables tproxy native-sidecars
E2E_SETUP ?= redirect

# Istio releases the nightly matrix covers, by role: the newest patch of 1.30 and of 1.29 confirmed
# from istio.io's release announcements (1.30.5; 1.29.9, which its note calls the last 1.29 release:
# 1.29 reached end of life on 2026-10-15). ISTIO_RELEASE picks one by role; ISTIO_VERSION=1.x.y
# overrides it. To refresh: the newest "Announcing Istio 1.N.x" of istio.io/latest/news/releases/.
ISTIO_VERSION_newest := 1.30.5
ISTIO_VERSION_older := 1.29.9
ISTIO_RELEASE ?= newest
ISTIO_VERSION ?= $(ISTIO_VERSION_$(ISTIO_RELEASE))

KIND_VERSION ?= v0.33.0
KUBECTL_VERSION ?= v1.35.8
# sha256 of each download (linux-amd64, what the nightly runs), pinned where known. No source
# readable when these pins were set published them, so they are empty: the fetch then checks the
# download against the checksum file the project publishes beside it (and says so). With network
# access, `make e2e-tools-sums` (and again with ISTIO_RELEASE=older) prints the lines to paste here.
KIND_SHA256 ?=
KUBECTL_SHA256 ?=
ISTIOCTL_SHA256_1.30.5 :=
ISTIOCTL_SHA256_1.29.9 :=
ISTIOCTL_SHA256 ?= $(ISTIOCTL_SHA256_$(ISTIO_VERSION))

KIND_CLUSTER ?= podnat-e2e
KIND_CONTEXT := kind-$(KIND_CLUSTER)
E2E_TIMEOUT ?= 300s
E2E_OUT ?= out/e2e
E2E_PYTEST_ARGS ?=
E2E_PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
E2E_TERMINATING_POLLS ?= 150
# podnat's own kubeconfig in the suite: empty = the current one (admin on kind, the lab's token); the
# nightly sets it to the ServiceAccount's (make e2e-sa-kubeconfig), kept outside out/e2e (a token).
E2E_PODNAT_KUBECONFIG ?=
E2E_SA_NAMESPACE := podnat-e2e-identity

TOOLS_DIR ?= .tools
TOOLS_OS := $(shell uname -s | tr '[:upper:]' '[:lower:]')
TOOLS_ARCH := $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(shell uname -m)))
# istioctl names macOS builds "osx" (amd64) and "osx-arm64"
ISTIO_PLATFORM := $(if $(filter darwin,$(TOOLS_OS)),osx$(if $(filter arm64,$(TOOLS_ARCH)),-arm64),$(TOOLS_OS)-$(TOOLS_ARCH))

KIND := $(TOOLS_DIR)/kind-$(KIND_VERSION)
KUBECTL := $(TOOLS_DIR)/kubectl-$(KUBECTL_VERSION)
ISTIOCTL := $(TOOLS_DIR)/istioctl-$(ISTIO_VERSION)
E2E_KUBECTL := $(KUBECTL) --context $(KIND_CONTEXT)

KIND_URL := https://kind.sigs.k8s.io/dl/$(KIND_VERSION)/kind-$(TOOLS_OS)-$(TOOLS_ARCH)
KUBECTL_URL := https://dl.k8s.io/release/$(KUBECTL_VERSION)/bin/$(TOOLS_OS)/$(TOOLS_ARCH)/kubectl
ISTIOCTL_URL := https://github.com/istio/istio/releases/download/$(ISTIO_VERSION)/istioctl-$(ISTIO_VERSION)-$(ISTIO_PLATFORM).tar.gz

ifeq ($(filter $(E2E_SETUP),$(E2E_SETUPS)),)
$(error E2E_SETUP=$(E2E_SETUP) is not a capture setup; pick one of: $(E2E_SETUPS))
endif
ifeq ($(strip $(ISTIO_VERSION)),)
$(error ISTIO_RELEASE=$(ISTIO_RELEASE) is unknown; use newest or older, or set ISTIO_VERSION=1.x.y)
endif

# $(call e2e_fetch,URL,PINNED_SHA256,SUMS_URL,DEST): download URL to DEST.download and check its sha256
# against the pinned value, or else against the first field of SUMS_URL; nothing lands at DEST unless
# the check passed.
define e2e_fetch
	@mkdir -p $(TOOLS_DIR)
	curl -fsSL --retry 3 -o $(4).download $(1)
	@want='$(2)'; \
	if [ -z "$$want" ]; then \
	  echo "e2e: no sha256 pinned for $(notdir $(4)); checking against $(3)" >&2; \
	  want=$$(curl -fsSL --retry 3 $(3) | awk '{print $$1}'); \
	fi; \
	echo "$$want  $(4).download" | sha256sum -c - || { rm -f $(4).download; exit 1; }
endef

$(KIND):
	$(call e2e_fetch,$(KIND_URL),$(KIND_SHA256),$(KIND_URL).sha256sum,$@)
	chmod +x $@.download && mv $@.download $@

$(KUBECTL):
	$(call e2e_fetch,$(KUBECTL_URL),$(KUBECTL_SHA256),$(KUBECTL_URL).sha256,$@)
	chmod +x $@.download && mv $@.download $@

$(ISTIOCTL):
	$(call e2e_fetch,$(ISTIOCTL_URL),$(ISTIOCTL_SHA256),$(ISTIOCTL_URL).sha256,$@)
	tar -xzf $@.download -C $(TOOLS_DIR) istioctl && mv $(TOOLS_DIR)/istioctl $@ && rm -f $@.download

.PHONY: e2e-tools e2e-tools-sums e2e-up e2e e2e-dump e2e-down e2e-lab e2e-sa-kubeconfig e2e-lab-modes e2e-agent-up \
	e2e-lab-agent

e2e-tools: $(KIND) $(KUBECTL) $(ISTIOCTL)

# The values to pin above, as lines to paste into this file (needs network access): each sha256 as the
# project's checksum file beside the download gives it.
e2e-tools-sums:
	@printf 'KIND_SHA256 ?= %s\n' "$$(curl -fsSL --retry 3 $(KIND_URL).sha256sum | awk '{print $$1}')"
	@printf 'KUBECTL_SHA256 ?= %s\n' "$$(curl -fsSL --retry 3 $(KUBECTL_URL).sha256 | awk '{print $$1}')"
	@printf 'ISTIOCTL_SHA256_$(ISTIO_VERSION) := %s\n' "$$(curl -fsSL --retry 3 $(ISTIOCTL_URL).sha256 | awk '{print $$1}')"

e2e-up: $(KIND) $(KUBECTL) $(ISTIOCTL)
	@echo "e2e: kind $(KIND_VERSION), Istio $(ISTIO_VERSION), capture setup $(E2E_SETUP)"
	$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config manifests/kind/cluster.yaml --wait $(E2E_TIMEOUT)
	$(ISTIOCTL) install --context $(KIND_CONTEXT) -y -f manifests/istio/$(E2E_SETUP).yaml
	$(E2E_KUBECTL) -n istio-system wait --for=condition=Available deployment --all --timeout=$(E2E_TIMEOUT)
	$(E2E_KUBECTL) apply -f manifests/bookinfo/
ifeq ($(E2E_SETUP),tproxy)
	for d in $$($(E2E_KUBECTL) -n bookinfo get deployment -o name); do \
	  $(E2E_KUBECTL) -n bookinfo patch $$d --type strategic --patch-file manifests/istio/tproxy-bookinfo-patch.yaml || exit 1; \
	done
endif
	for d in $$($(E2E_KUBECTL) -n bookinfo get deployment -o name); do \
	  $(E2E_KUBECTL) -n bookinfo rollout status $$d --timeout=$(E2E_TIMEOUT) || exit 1; \
	done
	@# rollout status does not wait for the old ReplicaSet's pods: wait until none has a deletionTimestamp,
	@# so the Ready wait cannot fail on a pod that disappears and podnat's pod list is the suite's.
	for i in $$(seq 1 $(E2E_TERMINATING_POLLS)); do \
	  left=$$($(E2E_KUBECTL) -n bookinfo get pods -o jsonpath='{range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name} {end}'); \
	  [ -z "$$left" ] && break; \
	  [ $$i = $(E2E_TERMINATING_POLLS) ] && { echo "e2e: pods still terminating: $$left" >&2; exit 1; }; \
	  sleep 2; \
	done
	$(E2E_KUBECTL) -n bookinfo wait --for=condition=Ready pod --all --timeout=$(E2E_TIMEOUT)
	$(E2E_KUBECTL) -n bookinfo get pods -o wide
	@# podnat's roles, and the ServiceAccount the nightly runs podnat as (bound to exactly those roles)
	$(E2E_KUBECTL) apply -f manifests/rbac/ -f manifests/e2e/

# The suite uses whatever the current kubeconfig points at (kind after e2e-up; the lab for e2e-lab).
# E2E_SETUP tells the suite which capture setup to assert first (tests/e2e/capture_setup.py).
e2e:
	E2E_SETUP=$(E2E_SETUP) PODNAT_E2E_KUBECONFIG=$(E2E_PODNAT_KUBECONFIG) PODNAT_E2E_OUT=$(E2E_OUT) $(E2E_PYTHON) -m pytest tests/e2e --e2e -m e2e $(E2E_PYTEST_ARGS)

# A kubeconfig for the ServiceAccount podnat (manifests/e2e/), with a token valid for 2 hours: podnat in
# the suite then has exactly the rights of manifests/rbac/.
e2e-sa-kubeconfig: $(KUBECTL)
	@test -n '$(E2E_PODNAT_KUBECONFIG)' || { echo "set E2E_PODNAT_KUBECONFIG=PATH (where to write it)" >&2; exit 2; }
	mkdir -p $(dir $(E2E_PODNAT_KUBECONFIG))
	$(E2E_KUBECTL) config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
	  | base64 -d > $(E2E_PODNAT_KUBECONFIG).ca
	$(KUBECTL) --kubeconfig $(E2E_PODNAT_KUBECONFIG) config set-cluster $(KIND_CONTEXT) --embed-certs \
	  --certificate-authority $(E2E_PODNAT_KUBECONFIG).ca \
	  --server "$$($(E2E_KUBECTL) config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
	$(KUBECTL) --kubeconfig $(E2E_PODNAT_KUBECONFIG) config set-credentials podnat \
	  --token "$$($(E2E_KUBECTL) -n $(E2E_SA_NAMESPACE) create token podnat --duration 2h)"
	$(KUBECTL) --kubeconfig $(E2E_PODNAT_KUBECONFIG) config set-context podnat --cluster $(KIND_CONTEXT) \
	  --user podnat --namespace bookinfo
	$(KUBECTL) --kubeconfig $(E2E_PODNAT_KUBECONFIG) config use-context podnat
	rm -f $(E2E_PODNAT_KUBECONFIG).ca

# Evidence for a failed nightly: kept as a CI artifact. Every step runs even if one fails. Namespaces:
# bookinfo and every scratch namespace the suite kept (label podnat-e2e=true: a failed test keeps its
# own); each container's log, init containers included (istio-init, or the cni job's istio-validation).
e2e-dump: $(KUBECTL)
	mkdir -p $(E2E_OUT)/pods $(E2E_OUT)/podnat
	-$(E2E_KUBECTL) get pods -A -o wide > $(E2E_OUT)/pods/pods.txt 2>&1
	-$(E2E_KUBECTL) get pods -A -o yaml > $(E2E_OUT)/pods/pods.yaml 2>&1
	-$(E2E_KUBECTL) get events -A --sort-by=.lastTimestamp > $(E2E_OUT)/pods/events.txt 2>&1
	-for ns in bookinfo $$($(E2E_KUBECTL) get namespaces -l podnat-e2e=true -o jsonpath='{.items[*].metadata.name}'); do \
	  mkdir -p $(E2E_OUT)/pods/$$ns; \
	  for p in $$($(E2E_KUBECTL) -n $$ns get pods -o name); do \
	    n=$${p#pod/}; \
	    for c in $$($(E2E_KUBECTL) -n $$ns get pod $$n -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}'); do \
	      $(E2E_KUBECTL) -n $$ns logs $$n -c $$c --tail=2000 > $(E2E_OUT)/pods/$$ns/$$n.$$c.log 2>&1; \
	    done; \
	  done; \
	  $(E2E_PYTHON) -m podnat verify --context $(KIND_CONTEXT) --namespace $$ns -o json \
	    > $(E2E_OUT)/podnat/verify-$$ns.json 2> $(E2E_OUT)/podnat/verify-$$ns.stderr; \
	done
	-$(E2E_KUBECTL) -n istio-system logs -l k8s-app=istio-cni-node --all-containers --prefix --tail=-1 \
	  > $(E2E_OUT)/pods/istio-cni-node.log 2>&1

e2e-down: $(KIND)
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# The lab (podnat lab, issue 4) serves Bookinfo pods behind a small API server on this machine (root).
# E2E_LAB_MODE: the lab's capture mode, and the setup the suite asserts (redirect | tproxy | nftables).
E2E_LAB_MODE ?= redirect
# The node agent on the kind cluster (the nightly `agent` job): its image built from
# manifests/agent/Dockerfile, loaded into kind, manifests/agent applied, the DaemonSet rolled out.
E2E_AGENT_IMAGE ?= ghcr.io/podnat/podnat-agent:0.1.0
e2e-agent-up: $(KIND) $(KUBECTL)
	docker build -f manifests/agent/Dockerfile -t $(E2E_AGENT_IMAGE) .
	$(KIND) load docker-image $(E2E_AGENT_IMAGE) --name $(KIND_CLUSTER)
	$(E2E_KUBECTL) apply -k manifests/agent
	$(E2E_KUBECTL) -n podnat-system rollout status daemonset/podnat-agent --timeout=$(E2E_TIMEOUT)

# The suite on the lab (the lab's own agent stays off: tests/integration/test_agent_lab.py covers it,
# and this suite checks the exec, debug-container and init-log paths).
e2e-lab:
	$(E2E_PYTHON) -m podnat lab up --mode $(E2E_LAB_MODE) --no-agent
	KUBECONFIG=$$($(E2E_PYTHON) -m podnat lab kubeconfig) PODNAT_E2E_OUT=$(E2E_OUT) E2E_SETUP=$(E2E_LAB_MODE) \
	  $(E2E_PYTHON) -m pytest tests/e2e --e2e -m e2e $(E2E_PYTEST_ARGS); \
	  rc=$$?; $(E2E_PYTHON) -m podnat lab down; exit $$rc

# The node agent's e2e tests (tests/e2e/test_agent_e2e.py) on a lab running the agent as a pod of
# podnat-system; E2E_AGENT=1: a missing agent fails them instead of skipping (part of make test: ~1 minute).
e2e-lab-agent:
	$(E2E_PYTHON) -m podnat lab up --mode $(E2E_LAB_MODE) --agent
	KUBECONFIG=$$($(E2E_PYTHON) -m podnat lab kubeconfig) PODNAT_E2E_OUT=$(E2E_OUT) E2E_SETUP=$(E2E_LAB_MODE) E2E_AGENT=1 \
	  $(E2E_PYTHON) -m pytest tests/e2e/test_agent_e2e.py --e2e -m e2e $(E2E_PYTEST_ARGS); \
	  rc=$$?; $(E2E_PYTHON) -m podnat lab down; exit $$rc

# The suite on the lab in each capture mode the lab has (not part of make test: ~2 minutes more).
e2e-lab-modes:
	for m in redirect tproxy nftables; do $(MAKE) --no-print-directory e2e-lab E2E_LAB_MODE=$$m || exit 1; done
