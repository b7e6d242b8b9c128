#!/usr/bin/env bash
# Builds kube-apiserver, etcd, kubectl and kube-controller-manager (for its
# garbage collector) from the Go module proxy into a cache
# directory outside the repository, once, and prints the directory (usable as
# KUBEBUILDER_ASSETS). Later runs find the binaries and return at once.
#
# Why: setup-envtest downloads from the internet, which these machines cannot
# reach; the Go module proxy is reachable, so we compile the same release.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
STAGING_VERSION="v0${K8S_VERSION#v1}"   # v1.37.2 -> v0.37.2
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE_ROOT="${SIDEWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sidewatch}"
OUT="${CACHE_ROOT}/control-plane/${K8S_VERSION}-etcd${ETCD_VERSION}"

have_all() {
  [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" && -x "$OUT/kubectl" && -x "$OUT/kube-controller-manager" ]]
}

if have_all; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT"
# One builder at a time: parallel test packages may all ask for the binaries.
exec 9>"$OUT/.lock"
flock 9
if have_all; then
  echo "$OUT"
  exit 0
fi

log() { echo "control-plane: $*" >&2; }
export GOFLAGS=-mod=mod GOWORK=off
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# kube-apiserver and kubectl: a wrapper module that requires k8s.io/kubernetes
# and points each staging module (v0.0.0 in kubernetes' go.mod) at its
# published release.
if [[ ! -x "$OUT/kube-apiserver" || ! -x "$OUT/kubectl" || ! -x "$OUT/kube-controller-manager" ]]; then
  log "building kube-apiserver, kubectl and kube-controller-manager ${K8S_VERSION} (about 7 minutes the first time)"
  modfile="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  mkdir -p "$work/k8s"
  {
    echo "module local/kube-apiserver"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    echo "replace ("
    awk '/^[[:space:]]*k8s\.io\/[^ ]+ v0\.0\.0$/ {print $1}' "$modfile" \
      | grep -v -e sample-cli-plugin -e sample-controller \
      | while read -r m; do echo "	$m => $m ${STAGING_VERSION}"; done
    echo ")"
  } >"$work/k8s/go.mod"
  cat >"$work/k8s/tools.go" <<GO
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  ldflags="-s -w"
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
  done
  (
    cd "$work/k8s"
    go mod tidy -e >/dev/null 2>&1 || true
    for cmd in kube-apiserver kubectl kube-controller-manager; do
      [[ -x "$OUT/$cmd" ]] && continue
      go build -trimpath -ldflags "$ldflags" -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
      mv "$OUT/$cmd.tmp" "$OUT/$cmd"
    done
  )
fi

if [[ ! -x "$OUT/etcd" ]]; then
  log "building etcd ${ETCD_VERSION}"
  mkdir -p "$work/etcd"
  cat >"$work/etcd/go.mod" <<MOD
module local/etcd

go 1.26

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
MOD
  cat >"$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$work/etcd"
    go mod tidy >/dev/null
    go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" .
  )
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi

have_all
log "ready in $OUT"
echo "$OUT"
