"""Least privilege: the RBAC rules in grm_operator/rbac.py are exactly the grants the code uses.

:mod:`hack.rbac_usage` derives (apiGroup, resource, verb) from the source with ``ast``:
the adapter's requests (handlers/kube.py), the call sites of its client, and kopf's
registrations. The mutation tests feed modified copies of the source (edited as syntax trees, so
formatting never matters) and prove that a new API call without a rule, a rule nobody uses, or a
call the derivation cannot follow each fail with a message naming the call.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hack import rbac_usage
from hack.rbac_usage import DerivationError, Grant

from grm_operator import rbac

PACKAGE = Path(rbac.__file__).resolve().parent
KUBE = "grm_operator.kubeapi"
AUTOSCALE = "grm_operator.handlers.autoscale"
RECONCILE = "grm_operator.handlers.reconcile"
Sources = dict[str, tuple[str, str]]


@pytest.fixture(scope="module")
def sources() -> Sources:
    return rbac_usage.package_sources(PACKAGE)


def grants(sources: Sources) -> set[Grant]:
    return {use.grant for use in rbac_usage.derive(sources)}


def edited(sources: Sources, module: str, edit: Callable[[ast.Module], None]) -> Sources:
    """A copy of ``sources`` with ``module``'s syntax tree changed by ``edit``."""
    path, text = sources[module]
    tree = ast.parse(text)
    edit(tree)
    return {**sources, module: (path, ast.unparse(ast.fix_missing_locations(tree)))}


def append(code: str) -> Callable[[ast.Module], None]:
    """An edit adding ``code`` (module-level statements) at the end of the module."""

    def edit(tree: ast.Module) -> None:
        tree.body.extend(ast.parse(code).body)

    return edit


def add_method(code: str) -> Callable[[ast.Module], None]:
    """An edit adding a method to the adapter's KubeClient."""

    def edit(tree: ast.Module) -> None:
        (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeClient"]
        cls.body.extend(ast.parse(code).body)

    return edit


def line_of(sources: Sources, module: str, needle: str) -> int:
    """The line (1-based) of ``needle`` in the (edited) source of ``module``."""
    lines = sources[module][1].splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --- the shipped rules ---------------------------------------------------------------------------


def test_rules_are_exactly_what_the_code_uses(sources: Sources) -> None:
    comparison = rbac_usage.compare(rbac_usage.derive(sources), rbac.rules())
    assert comparison.exact, "\n" + comparison.message()


def test_derivation_sees_each_kind_of_use(sources: Sources) -> None:
    used = grants(sources)
    # Server-side apply of the builders' manifests: patch, and create for an object not there yet.
    for group, plural in [
        ("apps", "deployments"),
        ("", "configmaps"),
        ("monitoring.coreos.com", "podmonitors"),
    ]:
        assert {Grant(group, plural, "patch"), Grant(group, plural, "create")} <= used
    # patch_status -> merge_patch(subresource="status"): the subresource, not the object.
    assert Grant("grm.dev", "grmdeployments/status", "patch") in used
    assert Grant("grm.dev", "grmdeployments", "patch") not in used
    # The prune loop over PRUNED_KINDS deletes Deployments and ConfigMaps; the quality gate its
    # stale Jobs; nothing else.
    assert {g.resource for g in used if g.verb == "delete"} == {"deployments", "configmaps", "jobs"}
    # kopf's pod watch (autoscale) and the child watches (a loop over CHILD_KINDS).
    assert {
        Grant("", "pods", "list"),
        Grant("", "pods", "watch"),
        Grant("policy", "poddisruptionbudgets", "watch"),
    } <= used
    # Discovery (has_kind) is a non-resource URL: no grant; and nothing reads single objects but
    # the leader-election Lease, which is also created and renewed (PUT: update).
    assert {g for g in used if g.verb == "get"} == {
        Grant("coordination.k8s.io", "leases", "get"),
        Grant("", "configmaps", "get"),  # the quality gate's evaluation set
        Grant("batch", "jobs", "get"),  # the quality gate's Job after a 409 on create
        Grant("", "secrets", "get"),  # each GRMDeployment's admin token, by its name
    }
    # The admin token Secret is created, never applied: no patch on Secrets.
    assert Grant("", "secrets", "create") in used and Grant("", "secrets", "patch") not in used
    assert {Grant("coordination.k8s.io", "leases", v) for v in ("create", "update")} <= used


def test_uses_name_the_calls(sources: Sources) -> None:
    uses = rbac_usage.derive(sources)
    where = {u.where for u in uses if u.grant == Grant("apps", "deployments", "delete")}
    line = line_of(sources, RECONCILE, "await self.kube.delete(")
    assert where == {f"grm_operator/handlers/reconcile.py:{line} self.kube.delete(...)"}


# --- mutations: the comparison fails, naming the call ------------------------------------------------


def test_a_new_adapter_call_without_a_rule_fails(sources: Sources) -> None:
    mutated = edited(
        sources,
        KUBE,
        add_method(
            "async def evict(self, kind: Kind, namespace: str, name: str) -> Body:\n"
            "    path = kind.path(namespace, name, 'eviction')\n"
            "    return await self._request('create', 'POST', path, 'Eviction')\n"
        ),
    )
    mutated = edited(
        mutated,
        AUTOSCALE,
        append("async def evict_stale(ctx: Any) -> None:\n    await ctx.kube.evict(PODS, 'ns', 'p')\n"),
    )
    comparison = rbac_usage.compare(rbac_usage.derive(mutated), rbac.rules())
    line = line_of(mutated, AUTOSCALE, "ctx.kube.evict(")
    assert comparison.missing.keys() == {Grant("", "pods/eviction", "create")}
    assert not comparison.extra
    assert (
        "missing rule: create core/pods/eviction"
        f" (used by grm_operator/handlers/autoscale.py:{line} ctx.kube.evict(...))" in comparison.message()
    )


def test_a_subresource_bound_through_a_helper_is_followed(sources: Sources) -> None:
    def scale_via_subresource(tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef) and node.name == "scale":
                (call,) = [
                    c
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call) and ast.unparse(c.func) == "self.merge_patch"
                ]
                call.keywords.append(ast.keyword("subresource", ast.Constant("scale")))

    mutated = edited(sources, KUBE, scale_via_subresource)
    mutated = edited(
        mutated,
        AUTOSCALE,
        append(
            "async def resize(ctx: Any) -> None:\n"
            "    await ctx.kube.scale(kubeapi.DEPLOYMENTS, 'ns', 'd', 2)\n"
        ),
    )
    comparison = rbac_usage.compare(rbac_usage.derive(mutated), rbac.rules())
    assert comparison.missing.keys() == {Grant("apps", "deployments/scale", "patch")}


def test_an_existing_method_on_a_new_kind_fails(sources: Sources) -> None:
    mutated = edited(
        sources,
        RECONCILE,
        append(
            "EXTRA = (kubeapi.SERVICES,)\n"
            "async def sweep(ctx: Any) -> None:\n"
            "    for k in [*EXTRA]:\n"
            "        await ctx.kube.delete(k, 'ns', 'svc')\n"
        ),
    )
    comparison = rbac_usage.compare(rbac_usage.derive(mutated), rbac.rules())
    assert comparison.missing.keys() == {Grant("", "services", "delete")}
    assert "reconcile.py:" in comparison.message() and "ctx.kube.delete(...)" in comparison.message()


def test_a_new_kopf_watch_without_a_rule_fails(sources: Sources) -> None:
    mutated = edited(
        sources,
        AUTOSCALE,
        append("kopf.on.event('', 'v1', 'secrets', id='peek')(lambda **_: None)\n"),
    )
    comparison = rbac_usage.compare(rbac_usage.derive(mutated), rbac.rules())
    assert comparison.missing.keys() == {Grant("", "secrets", "list"), Grant("", "secrets", "watch")}
    # A stateful handler (kopf stores progress on the object) needs patch as well.
    stateful = edited(
        sources, AUTOSCALE, append("kopf.on.create(GROUP, VERSION, PLURAL)(lambda **_: None)\n")
    )
    assert rbac_usage.compare(rbac_usage.derive(stateful), rbac.rules()).missing.keys() == {
        Grant("grm.dev", "grmdeployments", "patch")
    }


def test_a_rule_nobody_uses_fails(sources: Sources) -> None:
    extra = rbac.Rule(("",), ("secrets",), ("list",), "read credentials")
    comparison = rbac_usage.compare(rbac_usage.derive(sources), (*rbac.rules(), extra))
    assert not comparison.missing
    assert comparison.extra == {Grant("", "secrets", "list"): "read credentials"}
    assert "unused rule: list core/secrets (rule 'read credentials'" in comparison.message()


def test_removing_a_call_leaves_its_rule_unused(sources: Sources) -> None:
    def drop_delete(tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef) and node.name == "_prune":
                node.body = [ast.Pass()]

    comparison = rbac_usage.compare(rbac_usage.derive(edited(sources, RECONCILE, drop_delete)), rbac.rules())
    assert comparison.extra.keys() == {
        Grant("apps", "deployments", "delete"),
        Grant("", "configmaps", "delete"),
    }


@pytest.mark.parametrize("module", ["grm_operator.control.builders", "grm_operator.control.builders.service"])
def test_a_new_manifest_kind_in_the_builders_fails(sources: Sources, module: str) -> None:
    # In the package's __init__ or in any of its modules: every module of the package is read.
    mutated = edited(
        sources,
        module,
        append(
            "def build_hpa() -> Manifest:\n"
            "    return {'apiVersion': 'autoscaling/v2', 'kind': 'HorizontalPodAutoscaler'}\n"
        ),
    )
    path = sources[module][0]
    with pytest.raises(DerivationError, match=rf"{re.escape(path)}:\d+: builds a HorizontalPodAutoscaler"):
        rbac_usage.derive(mutated)


def test_a_missing_builders_package_is_an_error(sources: Sources) -> None:
    # Renamed or moved, the builders would otherwise add no kind and apply's grants would vanish.
    mutated = {
        name: source for name, source in sources.items() if not name.startswith(rbac_usage.BUILDERS_PACKAGE)
    }
    with pytest.raises(DerivationError, match="no module of the builders package"):
        rbac_usage.derive(mutated)


def test_an_unresolvable_kind_is_an_error_naming_the_call(sources: Sources) -> None:
    mutated = edited(
        sources,
        AUTOSCALE,
        append("async def dynamic(ctx: Any) -> None:\n    await ctx.kube.list(pick_kind(), 'ns')\n"),
    )
    line = line_of(mutated, AUTOSCALE, "ctx.kube.list(pick_kind()")
    with pytest.raises(DerivationError, match=re.escape(f"autoscale.py:{line} ctx.kube.list(...)")):
        rbac_usage.derive(mutated)


def test_a_write_to_a_raw_path_is_an_error(sources: Sources) -> None:
    mutated = edited(
        sources,
        KUBE,
        add_method(
            "async def raw(self) -> Body:\n"
            "    return await self._request('delete', 'DELETE', '/api/v1/x', 'X')\n"
        ),
    )
    mutated = edited(
        mutated, AUTOSCALE, append("async def wipe(ctx: Any) -> None:\n    await ctx.kube.raw()\n")
    )
    with pytest.raises(DerivationError, match=r"KubeClient\.raw.*delete on a path that is not <Kind>\.path"):
        rbac_usage.derive(mutated)
