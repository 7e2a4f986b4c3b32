"""Test and local-cluster infrastructure: a real Kubernetes control plane (etcd, kube-apiserver and
optionally kube-controller-manager and kube-scheduler built from the official Go modules), the PKI
and kubeconfigs it needs, a fault-injecting proxy in front of it, the kubectl/helm locators, and
the local cluster built on them (`localcluster`: a network namespace of its own, our node agent
and Service front, Prometheus; docs/local-cluster.md).

Nothing here is used by the operator at run time; it is what tests, benchmarks and the local
cluster start the operator against.
"""
