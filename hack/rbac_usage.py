"""What the operator's code really asks of the API server, derived statically from its source.

One concept in one module (the derivation: its resolver, its walkers and the comparison share one
model of the operator's source), so it is not split.

The RBAC rules in :mod:`grm_operator.rbac` must be exactly what the code uses: nothing missing
(a Forbidden at run time) and nothing extra (least privilege). This module reads the source with
:mod:`ast` (robust to formatting) and derives the set of (apiGroup, resource, verb) grants:

* **The adapter** (``grm_operator/kubeapi.py``): every :class:`KubeClient` method is traced to its
  ``self._request(verb, METHOD, <Kind>.path(namespace, name, subresource), ...)`` calls, through
  calls between methods (``patch_status`` → ``merge_patch(subresource="status")``). A path built
  from a parameter ``kind`` binds at the call site; one built from ``kind_of(manifest)`` (server-side
  apply) means every kind the builders produce (any module of :data:`BUILDERS_PACKAGE`); one that
  is not a ``.path()`` is a discovery URL (non-resource, open to every authenticated user through
  ``system:discovery``). Server-side apply of an object that does not exist yet creates it, so the
  API server checks ``create`` too.
* **Call sites**: every ``<x>.kube.<method>(...)`` call in the package, its kind argument resolved
  through constants, tuples, loops and defaults (an unresolvable one is an error naming the call).
* **kopf registrations**: ``kopf.on.<handler>(group, version, plural, ...)`` → list + watch (kopf
  lists, then watches); handlers that keep state on the object (create/update/delete/resume/
  field/timer/daemon) also patch it.
* **kopf itself**: what kopf does whatever the handlers are (:data:`KOPF_GRANTS`), declared here
  with its reason because kopf's source is not ours to derive from.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grm_operator.rbac import Rule

KUBE_MODULE = "grm_operator.kubeapi"
# The manifest builders: a package, every module of which may build a child manifest.
BUILDERS_PACKAGE = "grm_operator.control.builders"
CLIENT_CLASS = "KubeClient"
# Handlers that watch only (kopf keeps no state on the object) vs. those that patch it (progress,
# diff-base annotations, finalizers).
WATCH_ONLY_HANDLERS = frozenset({"event", "index"})
STATEFUL_HANDLERS = frozenset({"create", "update", "delete", "resume", "field", "timer", "daemon"})


@dataclass(frozen=True, order=True)
class Grant:
    """One (apiGroup, resource, verb) triple, the unit RBAC authorises."""

    group: str
    resource: str
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.group or 'core'}/{self.resource}"


@dataclass(frozen=True)
class Use:
    """A grant and where the code needs it (``file:line`` and the call)."""

    grant: Grant
    where: str


@dataclass(frozen=True)
class KindRef:
    """A ``Kind(group, version, plural, kind)`` constant as the source spells it."""

    group: str
    version: str
    plural: str
    kind: str


# kopf's own requests, whatever handlers are registered (kopf 1.3x: _core/reactor/observation.py
# watches namespaces and CRDs; _core/engines/posting.py posts Events). kopf runs standalone (leader
# election is the operator's own Lease, derived from its calls like any other): no peering grants.
KOPF_GRANTS: tuple[tuple[Grant, str], ...] = (
    (Grant("", "namespaces", "list"), "kopf observes namespaces before it watches in them"),
    (Grant("", "namespaces", "watch"), "kopf observes namespaces before it watches in them"),
    (
        Grant("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        "kopf notices resources served later",
    ),
    (
        Grant("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        "kopf notices resources served later",
    ),
    (Grant("", "events", "create"), "kopf posts its per-object log records as Events"),
)


class DerivationError(ValueError):
    """The source does something the derivation cannot resolve statically (names the call)."""


# --- sources ------------------------------------------------------------------------------------


@dataclass
class Module:
    name: str
    path: str
    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)  # local name -> "module" or "module:attr"
    constants: dict[str, ast.expr] = field(default_factory=dict)  # module-level NAME = expr


@functools.lru_cache(maxsize=256)
def _parse(name: str, path: str, text: str) -> Module:
    # Cached by text (Modules are never changed after parsing): a test deriving from a copy with one
    # module edited parses only that module again.
    tree = ast.parse(text, filename=path)
    module = Module(name, path, tree)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module.imports[alias.asname or alias.name] = f"{node.module}:{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                module.imports[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    module.constants[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            module.constants[node.target.id] = node.value
    return module


def package_sources(package_dir: Path) -> dict[str, tuple[str, str]]:
    """``module name -> (path, text)`` of every module of the package."""
    out: dict[str, tuple[str, str]] = {}
    root = package_dir.parent
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(root)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = (str(rel), path.read_text())
    return out


# --- resolving expressions to values -------------------------------------------------------------

Value = str | KindRef


class _Resolver:
    def __init__(self, modules: Mapping[str, Module]) -> None:
        self.modules = modules

    def _module_attr(self, ref: str) -> tuple[Module, str] | None:
        if ":" in ref:
            mod, attr = ref.split(":", 1)
            if f"{mod}.{attr}" in self.modules:
                return None  # a submodule, not an attribute
            if mod in self.modules:
                return self.modules[mod], attr
        return None

    def _module_of(self, module: Module, name: str) -> Module | None:
        ref = module.imports.get(name)
        if ref is None:
            return None
        full = ref.replace(":", ".")
        return self.modules.get(full)

    def name(self, module: Module, name: str, scopes: list[ast.AST], where: str) -> set[Value]:
        # Innermost function scopes first: assignments, loop targets, parameter defaults.
        for scope in reversed(scopes):
            found = self._local(module, name, scope, scopes, where)
            if found is not None:
                return found
        if name in module.constants:
            return self.expr(module, module.constants[name], [], where)
        ref = module.imports.get(name)
        if ref is not None:
            target = self._module_attr(ref)
            if target is not None:
                return self.name(target[0], target[1], [], where)
        raise DerivationError(f"{where}: cannot resolve {name!r} statically")

    def _local(
        self, module: Module, name: str, scope: ast.AST, scopes: list[ast.AST], where: str
    ) -> set[Value] | None:
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            return None
        args = scope.args
        positional = [*args.posonlyargs, *args.args]
        defaults: list[tuple[ast.arg, ast.expr | None]] = [
            *zip(
                positional, [None] * (len(positional) - len(args.defaults)) + list(args.defaults), strict=True
            ),
            *zip(args.kwonlyargs, args.kw_defaults, strict=True),
        ]
        outer = scopes[: scopes.index(scope)]
        values: set[Value] = set()
        bound = False
        for arg, default in defaults:
            if arg.arg == name:
                if default is None:
                    raise DerivationError(f"{where}: {name!r} is a parameter without a default")
                values |= self.expr(module, default, outer, where)
                bound = True
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                values |= self.expr(module, node.value, [*outer, scope], where)
                bound = True
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension) and (
                isinstance(node.target, ast.Name) and node.target.id == name
            ):
                values |= self.expr(module, node.iter, [*outer, scope], where)
                bound = True
        return values if bound else None

    def expr(self, module: Module, node: ast.expr, scopes: list[ast.AST], where: str) -> set[Value]:
        """Every value ``node`` can take (a collection is flattened: its elements)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Name):
            return self.name(module, node.id, scopes, where)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return set().union(*(self.expr(module, e, scopes, where) for e in node.elts))
        if isinstance(node, ast.Starred):
            return self.expr(module, node.value, scopes, where)
        if isinstance(node, ast.IfExp):
            return self.expr(module, node.body, scopes, where) | self.expr(module, node.orelse, scopes, where)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                other = self._module_of(module, node.value.id)
                if other is not None:
                    return self.name(other, node.attr, [], where)
            if node.attr in ("group", "version", "plural", "kind"):
                kinds = self.expr(module, node.value, scopes, where)
                return {getattr(k, node.attr) for k in kinds if isinstance(k, KindRef)}
        if isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if fname == "Kind":
                return {self.kind(module, node, scopes, where)}
            if fname in ("list", "tuple", "set", "sorted", "frozenset") and len(node.args) == 1:
                return self.expr(module, node.args[0], scopes, where)
        raise DerivationError(f"{where}: cannot resolve {ast.unparse(node)!r} statically")

    def kind(self, module: Module, call: ast.Call, scopes: list[ast.AST], where: str) -> KindRef:
        fields = ("group", "version", "plural", "kind")
        given: dict[str, ast.expr] = dict(zip(fields, call.args, strict=False))
        given.update({k.arg: k.value for k in call.keywords if k.arg in fields})
        values: list[str] = []
        for name in fields:
            got = self.expr(module, given[name], scopes, where) if name in given else set()
            if len(got) != 1 or not isinstance(next(iter(got)), str):
                raise DerivationError(f"{where}: Kind {name} is not one literal string")
            values.append(str(next(iter(got))))
        return KindRef(*values)

    def kinds(self, module: Module, node: ast.expr, scopes: list[ast.AST], where: str) -> set[KindRef]:
        values = self.expr(module, node, scopes, where)
        if not values or not all(isinstance(v, KindRef) for v in values):
            raise DerivationError(f"{where}: {ast.unparse(node)!r} is not a Kind")
        return {v for v in values if isinstance(v, KindRef)}


# --- the adapter: what each KubeClient method requests -------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request a client method makes: ``kind`` is ``param:<name>``, ``manifest:<name>``,
    ``const:<NAME>`` or ``discovery``; ``subresource`` is a literal, ``param:<name>`` or ''."""

    verb: str
    kind: str
    subresource: str


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]][1:]  # no self


def _bind(fn: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call) -> dict[str, ast.expr]:
    """Which expression of ``call`` each parameter of ``fn`` receives (self excluded)."""
    positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]][1:]
    bound: dict[str, ast.expr] = dict(zip(positional, call.args, strict=False))
    bound.update({k.arg: k.value for k in call.keywords if k.arg})
    return bound


class _Adapter:
    def __init__(self, module: Module) -> None:
        self.module = module
        classes = [n for n in module.tree.body if isinstance(n, ast.ClassDef) and n.name == CLIENT_CLASS]
        if not classes:
            raise DerivationError(f"{module.path}: no class {CLIENT_CLASS}")
        self.methods = {
            n.name: n for n in classes[0].body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self._memo: dict[str, list[Request]] = {}

    def requests(self, method: str) -> list[Request]:
        if method not in self._memo:
            self._memo[method] = list(self._derive(self.methods[method]))
        return self._memo[method]

    def _derive(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[Request]:
        params = set(_params(fn))
        kind_of: dict[str, str] = {}  # local = kind_of(param)
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "kind_of"
                and node.value.args
                and isinstance(node.value.args[0], ast.Name)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        kind_of[target.id] = node.value.args[0].id
        where = f"{self.module.path}:{fn.lineno} {CLIENT_CLASS}.{fn.name}"
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if not (isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
                continue
            callee = node.func.attr
            if callee == "_request":
                yield self._request(fn, node, params, kind_of, f"{where} line {node.lineno}")
            elif callee in self.methods and not callee.startswith("_"):
                bound = _bind(self.methods[callee], node)
                for req in self.requests(callee):
                    yield Request(
                        req.verb,
                        self._rebind(req.kind, bound, params, where),
                        self._rebind(req.subresource, bound, params, where),
                    )

    @staticmethod
    def _rebind(ref: str, bound: Mapping[str, ast.expr], params: set[str], where: str) -> str:
        prefix, _, name = ref.partition(":")
        if prefix not in ("param", "manifest"):
            return ref
        arg = bound.get(name)
        if arg is None:
            return ""  # a defaulted parameter (subresource=None)
        if isinstance(arg, ast.Constant):
            return "" if arg.value is None else str(arg.value)
        if isinstance(arg, ast.Name) and arg.id in params:
            return f"{prefix}:{arg.id}"
        if isinstance(arg, ast.Name) and prefix == "param":
            return f"const:{arg.id}"
        raise DerivationError(f"{where}: cannot follow {ast.unparse(arg)!r} into {ref}")

    def _request(
        self,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        call: ast.Call,
        params: set[str],
        kind_of: Mapping[str, str],
        where: str,
    ) -> Request:
        if len(call.args) < 3 or not (
            isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
        ):
            raise DerivationError(f"{where}: _request(verb, method, path, ...) needs a literal verb")
        verb = call.args[0].value
        path = call.args[2]
        if isinstance(path, ast.Name):  # path = kind.path(...) first: follow the local
            assigned = [
                n.value
                for n in ast.walk(fn)
                if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == path.id for t in n.targets)
            ]
            if len(assigned) == 1:
                path = assigned[0]
        if not (
            isinstance(path, ast.Call)
            and isinstance(path.func, ast.Attribute)
            and path.func.attr == "path"
            and isinstance(path.func.value, ast.Name)
        ):
            if verb != "get":
                raise DerivationError(f"{where}: {verb} on a path that is not <Kind>.path(...)")
            return Request(verb, "discovery", "")
        receiver = path.func.value.id
        if receiver in kind_of:
            kind = f"manifest:{kind_of[receiver]}"
        elif receiver in params:
            kind = f"param:{receiver}"
        else:
            kind = f"const:{receiver}"
        sub_node = path.args[2] if len(path.args) > 2 else None
        for kw in path.keywords:
            if kw.arg == "subresource":
                sub_node = kw.value
        if sub_node is None or (isinstance(sub_node, ast.Constant) and sub_node.value is None):
            sub = ""
        elif isinstance(sub_node, ast.Constant) and isinstance(sub_node.value, str):
            sub = sub_node.value
        elif isinstance(sub_node, ast.Name) and sub_node.id in params:
            sub = f"param:{sub_node.id}"
        else:
            raise DerivationError(f"{where}: subresource {ast.unparse(sub_node)!r} is not resolvable")
        return Request(verb, kind, sub)


# --- the derivation ------------------------------------------------------------------------------


def _manifest_kinds(builders: Iterable[Module], kube: Module, resolver: _Resolver) -> set[KindRef]:
    """The kinds of the manifests the builders produce: dict literals with a literal ``apiVersion``
    and ``kind`` in any of the ``builders`` modules, mapped to the adapter's Kind constants of that
    kind."""
    by_kind: dict[str, KindRef] = {}
    for name, value in kube.constants.items():
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Kind":
            ref = resolver.kind(kube, value, [], f"{kube.path} {name}")
            by_kind[ref.kind] = ref
    out: set[KindRef] = set()
    for module in builders:
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Dict):
                continue
            keys = {
                k.value: v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant)
            }
            api, kind = keys.get("apiVersion"), keys.get("kind")
            if (
                isinstance(api, ast.Constant)
                and isinstance(kind, ast.Constant)
                and isinstance(kind.value, str)
            ):
                if kind.value not in by_kind:
                    raise DerivationError(
                        f"{module.path}:{node.lineno}: builds a {kind.value} the adapter has no Kind for"
                    )
                out.add(by_kind[kind.value])
    return out


def _builder_modules(modules: Mapping[str, Module]) -> list[Module]:
    """Every module of :data:`BUILDERS_PACKAGE` (its ``__init__`` and submodules)."""
    found = [
        m
        for name, m in modules.items()
        if name == BUILDERS_PACKAGE or name.startswith(BUILDERS_PACKAGE + ".")
    ]
    if not found:
        raise DerivationError(f"no module of the builders package {BUILDERS_PACKAGE} in the sources")
    return found


def _resource(kind: KindRef, subresource: str) -> str:
    return f"{kind.plural}/{subresource}" if subresource else kind.plural


def _enclosing(tree: ast.AST) -> dict[ast.AST, list[ast.AST]]:
    """Each node's enclosing function scopes, outermost first."""
    out: dict[ast.AST, list[ast.AST]] = {}

    def visit(node: ast.AST, scopes: list[ast.AST]) -> None:
        out[node] = scopes
        inner = [*scopes, node] if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else scopes
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, [])
    return out


def _kopf_handler(call: ast.Call) -> str | None:
    """``x`` for a call of ``kopf.on.x(...)``, or of ``kopf.timer``/``kopf.daemon``/``kopf.index``."""
    fn = call.func
    if not isinstance(fn, ast.Attribute):
        return None
    if (
        isinstance(fn.value, ast.Attribute)
        and fn.value.attr == "on"
        and isinstance(fn.value.value, ast.Name)
        and fn.value.value.id == "kopf"
    ):
        return fn.attr
    if isinstance(fn.value, ast.Name) and fn.value.id == "kopf" and fn.attr in ("timer", "daemon", "index"):
        return fn.attr
    return None


def derive(sources: Mapping[str, tuple[str, str]]) -> list[Use]:
    """Every grant the code in ``sources`` (``module -> (path, text)``) needs, with where."""
    modules = {name: _parse(name, path, text) for name, (path, text) in sources.items()}
    resolver = _Resolver(modules)
    kube = modules[KUBE_MODULE]
    adapter = _Adapter(kube)
    manifest_kinds = _manifest_kinds(_builder_modules(modules), kube, resolver)
    for method in adapter.methods:
        if not method.startswith("_"):
            adapter.requests(method)  # every request traceable, called yet or not
    uses: list[Use] = [Use(g, f"kopf: {why}") for g, why in KOPF_GRANTS]
    for module in modules.values():
        if module.name == KUBE_MODULE or not (
            "kube" in sources[module.name][1] or "kopf" in sources[module.name][1]
        ):
            continue  # neither the client (reached as <x>.kube) nor kopf is named: no calls to trace
        scopes_of = _enclosing(module.tree)
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Call):
                continue
            scopes = scopes_of[node]
            where = f"{module.path}:{node.lineno} {ast.unparse(node.func)}(...)"
            handler = _kopf_handler(node)
            if handler is not None:
                uses += _kopf_uses(resolver, module, node, handler, scopes, where)
                continue
            fn = node.func
            if not (
                isinstance(fn, ast.Attribute)
                and isinstance(fn.value, ast.Attribute)
                and fn.value.attr == "kube"
                and fn.attr in adapter.methods
                and not fn.attr.startswith("_")
            ):
                continue
            bound = _bind(adapter.methods[fn.attr], node)
            for req in adapter.requests(fn.attr):
                uses += _call_uses(resolver, module, kube, req, bound, manifest_kinds, scopes, where)
    return uses


def _call_uses(
    resolver: _Resolver,
    module: Module,
    kube: Module,
    req: Request,
    bound: Mapping[str, ast.expr],
    manifest_kinds: set[KindRef],
    scopes: list[ast.AST],
    where: str,
) -> list[Use]:
    prefix, _, name = req.kind.partition(":")
    if prefix == "discovery":
        return []  # non-resource URL: system:discovery grants it to every authenticated user
    if prefix == "const":
        kinds = resolver.kinds(kube, ast.Name(name), [], where)
    elif prefix == "manifest":
        kinds = manifest_kinds
    else:
        if name not in bound:
            raise DerivationError(f"{where}: no argument for the kind parameter {name!r}")
        kinds = resolver.kinds(module, bound[name], scopes, where)
    sub_prefix, _, sub_name = req.subresource.partition(":")
    if sub_prefix == "param":
        arg = bound.get(sub_name)
        subs = {""} if arg is None else {str(v) for v in resolver.expr(module, arg, scopes, where)}
    else:
        subs = {req.subresource}
    verbs = [req.verb]
    if prefix == "manifest" and req.verb == "patch":
        verbs.append("create")  # server-side apply of a missing object creates it
    return [
        Use(Grant(k.group, _resource(k, s), v), where)
        for k in sorted(kinds, key=lambda k: k.plural)
        for s in sorted(subs)
        for v in verbs
    ]


def _kopf_uses(
    resolver: _Resolver, module: Module, call: ast.Call, handler: str, scopes: list[ast.AST], where: str
) -> list[Use]:
    if handler not in WATCH_ONLY_HANDLERS | STATEFUL_HANDLERS:
        return []  # startup, cleanup, login, probe: no resource
    args = call.args
    if len(args) == 3:
        group, plural = args[0], args[2]
    elif len(args) == 2:
        group, plural = args[0], args[1]
    else:
        raise DerivationError(f"{where}: kopf handler without (group, version, plural)")
    if (
        isinstance(group, ast.Attribute)
        and isinstance(plural, ast.Attribute)
        and (group.attr, plural.attr) == ("group", "plural")
        and ast.dump(group.value) == ast.dump(plural.value)
    ):
        pairs = {(k.group, k.plural) for k in resolver.kinds(module, group.value, scopes, where)}
    else:
        groups = resolver.expr(module, group, scopes, where)
        plurals = resolver.expr(module, plural, scopes, where)
        pairs = {(str(g), str(p)) for g in groups for p in plurals}
    verbs = ["list", "watch"] + (["patch"] if handler in STATEFUL_HANDLERS else [])
    return [Use(Grant(g, p, v), where) for g, p in sorted(pairs) for v in verbs]


# --- comparing with the rules --------------------------------------------------------------------


def granted(rule_set: Iterable[Rule]) -> dict[Grant, str]:
    """Every grant of ``rule_set``, with the reason of the rule that grants it."""
    return {
        Grant(g, r, v): rule.why
        for rule in rule_set
        for g in rule.api_groups
        for r in rule.resources
        for v in rule.verbs
    }


@dataclass(frozen=True)
class Comparison:
    """Grants the code uses that no rule gives, and grants rules give that nothing uses."""

    missing: dict[Grant, list[str]]
    extra: dict[Grant, str]

    @property
    def exact(self) -> bool:
        return not self.missing and not self.extra

    def message(self) -> str:
        lines = []
        for grant, wheres in sorted(self.missing.items()):
            lines.append(f"missing rule: {grant} (used by {'; '.join(sorted(set(wheres)))})")
        for grant, why in sorted(self.extra.items()):
            lines.append(f"unused rule: {grant} (rule {why!r}: no call in the code needs it)")
        return "\n".join(lines)


def compare(uses: Iterable[Use], rule_set: Iterable[Rule]) -> Comparison:
    rules = granted(rule_set)
    used: dict[Grant, list[str]] = {}
    for use in uses:
        used.setdefault(use.grant, []).append(use.where)
    return Comparison(
        missing={g: w for g, w in used.items() if g not in rules},
        extra={g: why for g, why in rules.items() if g not in used},
    )
