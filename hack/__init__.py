"""Build tooling run from the repository (``python -m hack.chartgen``), never shipped: the Helm
chart's generated parts and the derivation of the operator's RBAC from its code; beside it, the
Go modules and scripts that build the Kubernetes binaries for tests (``hack/k8s``, ``hack/etcd``).
"""
