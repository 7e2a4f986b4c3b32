"""How the local cluster's node agent turns a Pod spec into local processes: pure functions only.

* **Images → commands.** There is no container runtime: an `ImageRule` says what an image's
  entrypoint is as a local program (`ghcr.io/grm-elastic/grm-worker` → `grm-worker serve`) and
  which arguments bind it to its pod (`--host {pod_ip}`, a free loopback port for an internal
  child such as vLLM's). Kubernetes' rules apply on top: `command` replaces the entrypoint,
  `args` are appended, `$(VAR)` expands from the container's env. Images without a rule are
  refused (the pod reports `ErrImagePull`), so nothing runs by accident.
* **Paths.** Every volume is materialised as a directory of the pod (`<pod dir>/volumes/<name>`);
  a `mountPath` is a *known path* that the agent rewrites wherever a command argument, an
  `--flag=value` argument's value or an env value starts with it. So `--config
  /etc/grm/worker.json` reads `<pod dir>/volumes/config/worker.json`, and `HOME=/tmp` becomes the
  pod's `tmp` emptyDir. Processes also get `GRM_POD_ROOT` (the pod dir).
* **Env.** Literal values, `$(VAR)` references to earlier variables, `valueFrom` field, resource,
  ConfigMap and Secret references, `envFrom`; resolution failures are errors the pod reports as
  `CreateContainerConfigError`, as the kubelet does.
* **Status.** The Pod status the agent writes, built from its containers' states.

One concept kept whole (the node agent's reading of a Pod spec): it goes with the node agent when
the issue "The local cluster becomes a real Kubernetes node" replaces both with a real kubelet.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Json = dict[str, Any]

WORKER_IMAGE = "ghcr.io/grm-elastic/grm-worker"
OPERATOR_IMAGE = "ghcr.io/grm-elastic/grm-operator"
# The kubelet's default terminationMessagePath.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# A stand-in image for tests and demos: runs the pod's own command with this Python.
PYTHON_IMAGE = "local/python"


class PodSpecError(ValueError):
    """The pod cannot be run as asked (unknown image, missing ConfigMap key, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageRule:
    """An image as local processes.

    `entrypoint`: the image's ENTRYPOINT+CMD as a local command; None means the pod must give
    `command` itself ("use pod command"). `bind_args` are appended to every command line of the
    image; `{pod_ip}` becomes the pod's address and `{free_port}` a loopback port free at start.
    `bind_env` is set over the container's env (`{pod_ip}` too).
    """

    entrypoint: tuple[str, ...] | None
    bind_args: tuple[str, ...] = ()
    # Env that binds the image's servers to the pod IP; it wins over the pod's own env, as
    # `bind_args` win over its config. (A 0.0.0.0 listener would clash with every other pod and
    # every Service ClusterIP on the same port: they all share one namespace.)
    bind_env: tuple[tuple[str, str], ...] = ()

    def env(self, pod_ip: str) -> dict[str, str]:
        return {name: value.format(pod_ip=pod_ip) for name, value in self.bind_env}


DEFAULT_IMAGES: Mapping[str, ImageRule] = {
    # The worker binds its front to the pod IP; its vLLM child listens on a Unix socket in a
    # directory of the worker's own, so workers sharing the namespace's loopback never clash on the
    # config's engine_port (8100). A port picked free here could be taken in the 40-100 s before
    # vLLM binds it, and another pod's vLLM on it would then answer this worker's health checks.
    WORKER_IMAGE: ImageRule(("grm-worker", "serve"), ("--host", "{pod_ip}", "--engine-transport", "unix")),
    # The operator's liveness and metrics servers (GRM_HEALTH_HOST/GRM_METRICS_HOST, 0.0.0.0 by
    # default) on its pod IP: the chart's metrics Service listens on ClusterIP:9090 too.
    OPERATOR_IMAGE: ImageRule(
        ("grm-operator", "run"), bind_env=(("GRM_HEALTH_HOST", "{pod_ip}"), ("GRM_METRICS_HOST", "{pod_ip}"))
    ),
    PYTHON_IMAGE: ImageRule(None),
}


def image_repository(image: str) -> str:
    """`ghcr.io/x/y:1.0@sha256:..` → `ghcr.io/x/y` (a registry port's colon is kept)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def rule_for(image: str, images: Mapping[str, ImageRule]) -> ImageRule:
    """The rule of `image`: an exact `repo:tag` key wins over the repository's key."""
    rule = images.get(image) or images.get(image_repository(image))
    if rule is None:
        raise PodSpecError("ErrImagePull", f"image {image!r} is not in the local cluster's image map")
    return rule


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` escapes a `$`,
    undefined references stay as written."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(sub, text)


def command_line(
    container: Mapping[str, Any], rule: ImageRule, env: Mapping[str, str], pod_ip: str, free_port: int
) -> list[str]:
    """The argv of `container`: entrypoint or `command`, then `args`, `$(VAR)`-expanded, then the
    image's bind arguments."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if not command:
        if rule.entrypoint is None:
            raise PodSpecError(
                "CreateContainerError", f"container {container['name']}: image needs a command"
            )
        command = list(rule.entrypoint)
    argv = [expand(a, env) for a in (*command, *args)]
    argv += [a.format(pod_ip=pod_ip, free_port=free_port) for a in rule.bind_args]
    return argv


def resolve_executable(name: str, bin_dirs: Sequence[Path]) -> str:
    """`python` is this interpreter; a bare name is looked up in `bin_dirs` (the venv's bin
    first), then $PATH; a path stays as it is."""
    if "/" in name:
        return name
    if name in ("python", "python3"):
        return sys.executable
    for directory in bin_dirs:
        candidate = directory / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise PodSpecError("CreateContainerError", f"executable {name!r} not found")
    return found


@dataclass(frozen=True)
class PathMap:
    """Mount paths of a container → directories of the pod, longest mount path first."""

    mounts: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, mounts: Mapping[str, str]) -> PathMap:
        ordered = sorted(((m.rstrip("/") or "/", h) for m, h in mounts.items()), key=lambda x: -len(x[0]))
        return cls(tuple(ordered))

    def path(self, value: str) -> str:
        """`value` rewritten when it is a mount path or lies under one, else unchanged.

        Except an executable file of this machine that a mount would hide and the pod does not
        have (an interpreter in a checkout under /tmp, where a pod mounts its /tmp emptyDir): the
        node agent runs host processes, which use this machine's executables as they use its
        PATH, wherever the checkout lies."""
        for mount, host in self.mounts:
            if value == mount or value.startswith(mount + "/"):
                mapped = host + value[len(mount) :]
                if not os.path.exists(mapped) and os.path.isfile(value) and os.access(value, os.X_OK):
                    return value
                return mapped
        return value

    def arg(self, value: str) -> str:
        """A command-line argument: a path, or `--flag=path`."""
        mapped = self.path(value)
        if mapped != value:
            return mapped
        flag, sep, rest = value.partition("=")
        if sep and flag.startswith("-"):
            return f"{flag}={self.path(rest)}"
        return value


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """A downward-API `fieldRef` of the pod."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodSpecError("CreateContainerConfigError", f"unsupported fieldRef {field_path!r}")


def _resource_value(container: Mapping[str, Any], resource: str) -> str:
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    return str(value) if value is not None else "0"


@dataclass
class Lookups:
    """The ConfigMaps and Secrets a pod refers to, by name (Secret values base64-decoded)."""

    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)

    def key(self, kind: str, name: str, key: str | None, optional: bool) -> str | None:
        source = self.config_maps if kind == "configMap" else self.secrets
        data = source.get(name)
        if data is None or (key is not None and key not in data):
            if optional:
                return None
            what = f"{kind} {name!r}" + (f" key {key!r}" if key is not None else "")
            raise PodSpecError("CreateContainerConfigError", f"{what} not found")
        return data[key] if key is not None else ""


def referenced(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """Names of the ConfigMaps and Secrets the pod's env and volumes use."""
    cms: set[str] = set()
    secrets: set[str] = set()
    spec = pod.get("spec", {})
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for e in c.get("env") or []:
            ref = e.get("valueFrom") or {}
            if "configMapKeyRef" in ref:
                cms.add(ref["configMapKeyRef"]["name"])
            if "secretKeyRef" in ref:
                secrets.add(ref["secretKeyRef"]["name"])
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                cms.add(src["configMapRef"]["name"])
            if "secretRef" in src:
                secrets.add(src["secretRef"]["name"])
    for vol in spec.get("volumes") or []:
        if "configMap" in vol:
            cms.add(vol["configMap"]["name"])
        if "secret" in vol:
            secrets.add(vol["secret"]["secretName"])
        for src in (vol.get("projected") or {}).get("sources") or []:
            if "configMap" in src:
                cms.add(src["configMap"]["name"])
            if "secret" in src:
                secrets.add(src["secret"]["name"])
    return cms, secrets


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookups: Lookups,
    base: Mapping[str, str],
    paths: PathMap | None = None,
) -> dict[str, str]:
    """The environment the process gets (see :func:`container_env_views`)."""
    return container_env_views(pod, container, lookups, base, paths)[1]


def container_env_views(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookups: Lookups,
    base: Mapping[str, str],
    paths: PathMap | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """`base` (what the agent provides), then `envFrom`, then `env` in order (later wins), with
    `$(VAR)` expanded from what is defined so far, as the kubelet does. Values from the pod
    spec that are mount paths are rewritten by `paths`; `base` values are host paths already
    (the pod directory may itself lie under a mount path such as /tmp)."""
    # `raw` is the container's own view (mount paths as written), which `$(VAR)` expands from;
    # `env` is what the process gets.
    raw = dict(base)
    env = dict(base)
    mapping = paths or PathMap()

    def put(name: str, value: str) -> None:
        raw[name] = value
        env[name] = mapping.path(value)

    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        kind, ref = (
            ("configMap", src["configMapRef"]) if "configMapRef" in src else ("secret", src["secretRef"])
        )
        source = lookups.config_maps if kind == "configMap" else lookups.secrets
        if ref["name"] not in source:
            if ref.get("optional"):
                continue
            raise PodSpecError("CreateContainerConfigError", f"{kind} {ref['name']!r} not found")
        for key, data in source[ref["name"]].items():
            put(prefix + key, data)
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            put(name, expand(item.get("value", ""), raw))
            continue
        ref = item["valueFrom"]
        value: str | None
        if "fieldRef" in ref:
            value = field_value(pod, ref["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in ref:
            value = _resource_value(container, ref["resourceFieldRef"]["resource"])
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            value = lookups.key("configMap", r["name"], r["key"], bool(r.get("optional")))
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            value = lookups.key("secret", r["name"], r["key"], bool(r.get("optional")))
        else:
            raise PodSpecError("CreateContainerConfigError", f"env {name}: unsupported valueFrom {ref}")
        if value is not None:
            put(name, value)
    return raw, env


def named_port(pod: Mapping[str, Any], port: int | str) -> int:
    """A probe's or lifecycle hook's port: a number, or a container port's name."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for c in pod.get("spec", {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise PodSpecError("CreateContainerConfigError", f"no container port named {port!r}")


def restart_wanted(policy: str, exit_code: int) -> bool:
    """Whether a container that exited with `exit_code` restarts under the pod's restartPolicy."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def crash_backoff(failures: int, base_s: float, cap_s: float) -> float:
    """Delay before restart number `failures` (1, 2, ...): base × 2^(n-1), at most `cap_s` (the
    kubelet's are 10 s and 300 s; the local cluster uses shorter ones so tests see restarts)."""
    return float(min(cap_s, base_s * 2.0 ** max(0, failures - 1)))


class PodIPs:
    """Pod IP allocation from a node's pod CIDR (e.g. 10.244.0.0/24): .2 upward, round-robin, so
    a released address is reused last (a stale endpoint never points at a new pod at once)."""

    def __init__(self, cidr: str) -> None:
        hosts = list(ipaddress.ip_network(cidr).hosts())
        # .1 is kept for the node itself (its kubelet API): fixed here, not derived from the free
        # list, which moves as pods take addresses (after 9 pods it read .10, and the API server
        # dialled a kubelet port nobody listened on).
        self._node_ip = str(hosts[0])
        self._free = [str(ip) for ip in hosts[1:]]
        self._used: dict[str, str] = {}

    @property
    def node_ip(self) -> str:
        return self._node_ip

    def allocate(self, uid: str) -> str:
        if uid in self._used:
            return self._used[uid]
        if not self._free:
            raise PodSpecError("PodIPExhausted", "no pod IP left on this node")
        ip = self._free.pop(0)
        self._used[uid] = ip
        return ip

    def release(self, uid: str) -> None:
        ip = self._used.pop(uid, None)
        if ip is not None:
            self._free.append(ip)


@dataclass
class ContainerView:
    """What the status needs of one container."""

    name: str
    image: str
    state: Json
    last_state: Json = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str = ""


def _condition(kind: str, ok: bool, since: Mapping[str, str], now: str, reason: str | None = None) -> Json:
    cond: Json = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastTransitionTime": since.get(kind, now),
    }
    if reason and not ok:
        cond["reason"] = reason
    return cond


def init_done(init_containers: Sequence[ContainerView]) -> bool:
    """Every init container ran to completion (exit 0)."""
    return all(c.state.get("terminated", {}).get("exitCode") == 0 for c in init_containers)


def init_failed(restart_policy: str, init_containers: Sequence[ContainerView]) -> bool:
    """An init container failed and will not be retried (restartPolicy Never): the pod failed."""
    return restart_policy == "Never" and any(
        c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in init_containers
    )


def pod_phase(
    restart_policy: str, containers: Sequence[ContainerView], init_containers: Sequence[ContainerView] = ()
) -> str:
    """Pending while initialising and until every container has started once; Succeeded/Failed
    when all terminated and none will restart (or an init container failed for good); Running
    otherwise."""
    if init_failed(restart_policy, init_containers):
        return "Failed"
    if not init_done(init_containers):
        return "Pending"
    if any("waiting" in c.state and not c.last_state for c in containers):
        return "Pending"
    terminated = [c.state["terminated"] for c in containers if "terminated" in c.state]
    if len(terminated) == len(containers) and restart_policy != "Always":
        codes = [t.get("exitCode", 1) for t in terminated]
        if restart_policy == "Never" or all(code == 0 for code in codes):
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
    return "Running"


def pod_status(
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    restart_policy: str,
    containers: Sequence[ContainerView],
    transitions: dict[str, str],
    now: str,
    config_error: PodSpecError | None = None,
    init_containers: Sequence[ContainerView] = (),
) -> Json:
    """The `status` the agent writes for a pod. `transitions` remembers each condition's last
    transition time (updated here when its value changes)."""
    all_ready = bool(containers) and all(c.ready for c in containers)
    phase = pod_phase(restart_policy, containers, init_containers)
    values = {
        "PodReadyToStartContainers": bool(pod_ip),
        "Initialized": init_done(init_containers),
        "ContainersReady": all_ready,
        "Ready": all_ready,
    }
    conditions = []
    for kind, ok in values.items():
        key = f"{kind}={ok}"
        if key not in transitions:
            transitions[key] = now
        transitions.pop(f"{kind}={not ok}", None)
        reason = {
            "ContainersReady": "ContainersNotReady",
            "Ready": "ContainersNotReady",
            "Initialized": "ContainersNotInitialized",
        }.get(kind)
        conditions.append(_condition(kind, ok, {kind: transitions[key]}, now, reason))
    statuses = _container_statuses(containers)
    status: Json = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": statuses,
    }
    if init_containers:
        status["initContainerStatuses"] = _container_statuses(init_containers)
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if config_error is not None:
        status["message"] = str(config_error)
        status["reason"] = config_error.reason
    return status


def _container_statuses(containers: Sequence[ContainerView]) -> list[Json]:
    statuses = []
    for c in containers:
        entry: Json = {
            "name": c.name,
            "image": c.image,
            "imageID": "",
            "ready": c.ready,
            "started": c.started,
            "restartCount": c.restart_count,
            "state": c.state,
        }
        if c.last_state:
            entry["lastState"] = c.last_state
        if c.container_id:
            entry["containerID"] = c.container_id
        statuses.append(entry)
    return statuses
