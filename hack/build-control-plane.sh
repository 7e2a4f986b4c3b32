#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the node's
# kube-proxy and kubelet from the pinned Go modules in hack/etcd and hack/k8s into $1 (default
# .cache/k8s/bin): one k8s.io/kubernetes version for the whole cluster. Go's build cache makes a
# rebuild after the first one take seconds; the first one on 2 cores takes many minutes
# (kube-proxy, kubelet, pause and agnhost add ~80 s once the control plane's modules are built).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../.cache/k8s/bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)
k8s_version=$(cd "$here/k8s" && go list -m -f "{{.Version}}" k8s.io/kubernetes)
minor=$(echo "$k8s_version" | cut -d. -f2)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
step() { echo "[control-plane] $(( $(date +%s) - start ))s: $*"; }
step "building etcd (go.etcd.io/etcd/server/v3) -> $out/etcd"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
for bin in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet; do
  step "building $bin ($k8s_version) -> $out/$bin (first build: many minutes on 2 cores)"
  (cd "$here/k8s" && go build -trimpath -ldflags "$ldflags" -o "$out/$bin" "./cmd/$bin")
done
# The real node's images (testkit/grm_testkit/cluster/realnode.py packs them with umoci): the
# sandbox container, and upstream's e2e test server agnhost from the same module.
step "building pause -> $out/pause"
(cd "$here/k8s" && go build -trimpath -ldflags "-s -w" -o "$out/pause" ./cmd/pause)
step "building agnhost ($k8s_version, k8s.io/kubernetes/test/images/agnhost) -> $out/agnhost"
(cd "$here/k8s" && go build -trimpath -ldflags "-s -w" -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost)
# Prometheus for the local cluster, with Kubernetes SD only (upstream's build tags): Debian's
# package is built without Kubernetes SD, and all of upstream's SD plugins (cloud SDKs) would
# triple the build. `go install pkg@version` checks the module against the checksum database.
prometheus_version=v0.316.0   # Prometheus 3.16.0
step "building prometheus ($prometheus_version, Kubernetes SD only) -> $out/prometheus"
GOFLAGS= GOBIN="$out" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd -ldflags "-s -w" \
  "github.com/prometheus/prometheus/cmd/prometheus@$prometheus_version"
step "done: $(ls "$out" | tr '\n' ' ')"
