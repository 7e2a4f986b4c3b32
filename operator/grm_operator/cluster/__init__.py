"""Test and local-cluster infrastructure: a real Kubernetes control plane (etcd, kube-apiserver and
optionally kube-controller-manager and kube-scheduler built from the official Go modules), the PKI
and kubeconfigs it needs, a fault-injecting proxy in front of it, and the kubectl/helm locators.

Nothing here is used by the operator at run time; it is what tests, benchmarks and the local
cluster start the operator against.
"""
