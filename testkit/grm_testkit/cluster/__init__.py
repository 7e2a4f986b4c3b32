"""Kubernetes for tests, benchmarks and the demo: real control-plane processes run from binaries
the repository builds, and the local cluster made of them. Nothing here is used by the operator at
run time; it is what tests, benchmarks and the local cluster start the operator against.

* The control plane: `controlplane` (etcd, kube-apiserver and optionally kube-controller-manager
  and kube-scheduler, started and stopped), `credentials` (its PKI and the kubeconfigs, tokens
  and certificates it hands out; keys from `pki`, documents from `kubeconfig`), `ports` (free
  ports and the race for them), `lifetime` (children that die with their parent), `tools` (where
  the control-plane binaries, kubectl and helm are).
* In front of it: `faultproxy` (a fault-injecting proxy) run by a `faultplan`.
* The local cluster (docs/local-cluster.md): `localcluster` (the `LocalCluster` handle),
  `supervisor` (what runs inside its network namespace), `clusteroptions` (options, addresses,
  state directory), `connectsocket` (the way in from the host), `localcluster_cli`
  (`grm-local-cluster`), `netns`, the real node (`realnode`: the kubelet with containerd; images
  built here by `pyimages`, host paths for pods in `hostmounts`), the real kube-proxy
  (`kubeproxy`), Prometheus (`promsd`) and their API client (`kubeclient`).
* `realcluster`: the same handle's methods on an existing cluster, for the e2e tests'
  `--real-cluster` mode.
"""
