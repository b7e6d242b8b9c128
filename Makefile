# sidewatch: `make demo` and `make test` are the two commands a new user runs.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/sidewatch/sidewatch/internal/version.Version=$(VERSION)
CONTROLLER_GEN := $(GO) tool controller-gen
# eBPF objects are built with Debian bookworm's clang 14 (packages clang-14,
# llvm-14, libbpf-dev); the output is committed, so only generate-bpf needs them.
BPF_CLANG ?= clang-14
BPF_STRIP ?= llvm-strip-14
# The whole suite must stay under 20 minutes once caches are warm.
TEST_TIMEOUT ?= 25m

.PHONY: all
all: build

##@ Main

.PHONY: demo
demo: control-plane ## Run the demo on an embedded local control plane (Ctrl-C stops it).
	$(GO) run ./hack/demo

.PHONY: test
test: control-plane lint verify-generated fuzz-short ## Run every test, building the control plane binaries if the cache is empty.
	KUBEBUILDER_ASSETS="$$(hack/control-plane.sh)" $(GO) test -timeout $(TEST_TIMEOUT) ./...

##@ Build

.PHONY: build
build: ## Build the operator, the agent and the CLI into bin/.
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/manager .
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sidewatch ./cmd/sidewatch
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/sidewatch-agent ./daemonset

.PHONY: control-plane
control-plane: ## Build kube-apiserver, etcd and kubectl once into the cache (~/.cache/sidewatch).
	@hack/control-plane.sh >/dev/null

##@ Generate

.PHONY: generate
generate: manifests generate-bpf ## Generate deepcopy code, CRDs, RBAC and the eBPF objects.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: generate-bpf
generate-bpf: ## Rebuild kernel/*.bpf.c into committed Go and .o files (needs clang-14, llvm-14, libbpf-dev).
	cd kernel && BPF2GO_CC=$(BPF_CLANG) BPF2GO_STRIP=$(BPF_STRIP) $(GO) generate ./
	cd kernel && { echo "# $$($(BPF_CLANG) --version | head -1); libbpf-dev $$(dpkg-query -W -f='$${Version}' libbpf-dev 2>/dev/null || echo unknown)"; \
	  sha256sum gen.go *.bpf.c include/*.h; } > bpf.sum

.PHONY: manifests
manifests: ## Generate the sidewatch CRDs into config/crd/bases (and the Helm chart's crds/) and the operator's RBAC into config/rbac.
	$(CONTROLLER_GEN) crd:allowDangerousTypes=true paths=./api/... output:crd:artifacts:config=config/crd/bases
	cp config/crd/bases/*.yaml charts/sidewatch/crds/
	$(CONTROLLER_GEN) rbac:roleName=sidewatch-operator paths=./controllers/... output:rbac:artifacts:config=config/rbac
	$(GO) run ./hack/prometheusrule config/monitoring/sidewatch.rules.yaml config/monitoring/prometheusrule.yaml
	cp config/monitoring/sidewatch.rules.yaml config/monitoring/grafana-dashboard.json charts/sidewatch/files/

.PHONY: kubevirt-crds
kubevirt-crds: ## Regenerate the KubeVirt VMI and VMIM CRDs used by tests and the demo.
	tmp="$$(mktemp -d)"; \
	  $(CONTROLLER_GEN) crd:allowDangerousTypes=true,maxDescLen=0 paths=kubevirt.io/api/core/v1 output:crd:dir="$$tmp" >/dev/null 2>&1 || true; \
	  $(GO) run ./hack/kubevirt-crds "$$tmp" config/crd/external; rm -rf "$$tmp"

.PHONY: verify-generated
verify-generated: ## Fail when generated code or CRDs are stale.
	tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	  $(CONTROLLER_GEN) crd:allowDangerousTypes=true paths=./api/... output:crd:artifacts:config="$$tmp/crd"; \
	  $(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/... output:object:dir="$$tmp/object"; \
	  $(CONTROLLER_GEN) rbac:roleName=sidewatch-operator paths=./controllers/... output:rbac:artifacts:config="$$tmp/rbac"; \
	  diff -r "$$tmp/crd" config/crd/bases || { echo "config/crd/bases is stale: run make generate"; exit 1; }; \
	  diff "$$tmp/rbac/role.yaml" config/rbac/role.yaml || { echo "config/rbac/role.yaml is stale: run make generate"; exit 1; }; \
	  diff "$$tmp/object/zz_generated.deepcopy.go" api/v1alpha1/zz_generated.deepcopy.go || { echo "deepcopy is stale: run make generate"; exit 1; }

##@ Check

.PHONY: lint
lint: ## gofmt and go vet.
	@out="$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*'))"; \
	  if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every parser of guest memory, trace files and other untrusted input has a
# fuzz target. `make test` runs each target of the repository for FUZZTIME
# (seed corpus first); go test runs one fuzz target per invocation.
# Longer: `make fuzz-short FUZZTIME=1m`, or for the guest-memory parsers
# alone `make fuzz-introspect FUZZTIME=30m`.
FUZZTIME ?= 3s
.PHONY: fuzz-short
fuzz-short: ## Run each fuzz target for FUZZTIME (default 3s; part of make test).
	@$(GO) list -f '{{.ImportPath}} {{.Dir}}' ./... | while read -r pkg dir; do \
	  for fn in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do \
	    echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
	    log="$$(mktemp)"; \
	    if ! $(GO) test "$$pkg" -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) >"$$log" 2>&1; then \
	      cat "$$log"; \
	      echo "fuzz $$fn failed; running it again: a crashing input the fuzzer saved under testdata/fuzz fails again, a fuzzing-engine hiccup does not"; \
	      $(GO) test "$$pkg" -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) || { rm -f "$$log"; exit 1; }; \
	    fi; \
	    rm -f "$$log"; \
	  done; \
	done

INTROSPECT_FUZZ := FuzzBTFFromMemory FuzzKallsyms FuzzPageWalk FuzzTaskList FuzzVMAWalk FuzzELFSymbols FuzzMonitorParse

.PHONY: fuzz-introspect
fuzz-introspect: ## Fuzz each guest-memory parser for FUZZTIME.
	for f in $(INTROSPECT_FUZZ); do \
	  $(GO) test ./node-agent/introspect -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200ms || exit 1; \
	done

.PHONY: help
help: ## Show targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
