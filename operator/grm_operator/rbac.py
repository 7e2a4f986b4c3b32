"""The operator's RBAC rules, as data: the one place that says what the operator may do.

The Helm chart renders :data:`OPERATOR_RULES` into its ClusterRole (or per-namespace Roles) and
:data:`LEADER_ELECTION_RULES` into a Role in the operator's own namespace; the integration tests
bind exactly these rules to a ServiceAccount and run the operator under it against the real
authoriser, so a missing verb fails a test rather than a user's install. Each rule names its reason.

Least privilege: the rules are exactly the (group, resource, verb) grants the code uses, which
:mod:`hack.rbac_usage` derives from the source (tests/unit/hack/test_rbac_derived.py compares).
No ``get`` on what it manages: kopf lists then watches, and the reconciler reads its children from
that cache; the objects read singly are the leader-election Lease, a user's evaluation-set
ConfigMap and each GRMDeployment's admin token Secret (get and create, never list or watch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule and why the operator needs it."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def to_manifest(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


OPERATOR_RULES: tuple[Rule, ...] = (
    Rule(("grm.dev",), ("grmdeployments",), ("list", "watch"), "watch the custom resources"),
    Rule(
        ("grm.dev",),
        ("grmdeployments/status",),
        ("patch",),
        "write status: conditions, replicas, decisions",
    ),
    Rule(
        ("apps",),
        ("deployments",),
        ("list", "watch", "create", "patch", "delete"),
        "apply worker Deployments (server-side apply), scale them, delete removed variants",
    ),
    Rule(
        ("",),
        ("configmaps",),
        ("list", "watch", "create", "patch", "delete"),
        "apply the worker configs, delete those of removed variants",
    ),
    Rule(
        ("",),
        ("configmaps",),
        ("get",),
        "read a user's evaluation set (precision.evaluationSet.configMapRef) to hash its content",
    ),
    Rule(
        ("",),
        ("secrets",),
        ("get", "create"),
        "create each GRMDeployment's worker admin token Secret once and read it to authenticate "
        "the sample-budget pushes (no list/watch: the cluster's other Secrets are never cached)",
    ),
    Rule(
        ("batch",),
        ("jobs",),
        ("get", "list", "watch", "create", "delete"),
        "run the quality gate's build and evaluation Jobs, delete those whose inputs changed",
    ),
    Rule(("",), ("services",), ("list", "watch", "create", "patch"), "apply the Service"),
    Rule(
        ("policy",),
        ("poddisruptionbudgets",),
        ("list", "watch", "create", "patch"),
        "apply the PodDisruptionBudget",
    ),
    Rule(
        ("monitoring.coreos.com",),
        ("podmonitors",),
        ("list", "create", "patch"),
        "apply the PodMonitor when the Prometheus Operator is installed",
    ),
    Rule(("",), ("events",), ("create",), "post an Event per condition transition"),
    Rule(
        ("",),
        ("pods",),
        ("list", "watch"),
        "watch worker pods (metrics source Direct scrapes Ready pods; Pending pods mean no GPUs)",
    ),
    Rule(
        ("",),
        ("namespaces",),
        ("list", "watch"),
        "kopf observes namespaces (even for a fixed list) before it starts watching in them",
    ),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf discovers served resources and notices CRDs installed later",
    ),
)

LEADER_ELECTION_RULES: tuple[Rule, ...] = (
    Rule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "create", "update"),
        "leader election (HA): read, create and renew the Lease in the operator's own namespace",
    ),
)


def rules() -> tuple[Rule, ...]:
    """The operator's rules with leader election's (granted in the operator's own namespace only)."""
    return OPERATOR_RULES + LEADER_ELECTION_RULES


def without(rule_set: Iterable[Rule], resource: str, verb: str) -> tuple[Rule, ...]:
    """``rule_set`` with ``verb`` taken away on ``resource`` (for tests that prove it is needed)."""
    result = []
    found = False
    for rule in rule_set:
        if resource in rule.resources and verb in rule.verbs:
            found = True
            rest = tuple(r for r in rule.resources if r != resource)
            if rest:
                result.append(Rule(rule.api_groups, rest, rule.verbs, rule.why))
            verbs = tuple(v for v in rule.verbs if v != verb)
            if verbs:
                result.append(Rule(rule.api_groups, (resource,), verbs, rule.why))
        else:
            result.append(rule)
    if not found:
        raise ValueError(f"no rule grants {verb} on {resource}")
    return tuple(result)


def cluster_role(name: str, rule_set: Sequence[Rule] = OPERATOR_RULES) -> dict[str, Any]:
    """A ClusterRole manifest holding ``rule_set``."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "grm-operator"}},
        "rules": [rule.to_manifest() for rule in rule_set],
    }


def cluster_role_binding(name: str, role: str, namespace: str, service_account: str) -> dict[str, Any]:
    """A ClusterRoleBinding of ``role`` to the operator's ServiceAccount."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "grm-operator"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
