"""The local cluster's kubelet and container runtime: Nodes whose Pods are local processes.

Like kwok's fake nodes, but the containers really run. One `NodeAgent` per Node:

* registers the Node (cpu, memory, pods and `nvidia.com/gpu` capacity — the GPU count is the
  local cluster's budget, so the real scheduler leaves Pods `Pending` once it is spent), keeps
  its Lease in `kube-node-lease` renewed and its `Ready` condition fresh;
* watches the Pods bound to it (`spec.nodeName`); for each: a pod IP from the node's pod CIDR
  (10.244.<node>.0/24, routed to `lo` inside the network namespace), a pod directory with its
  volumes (ConfigMap, Secret, projected service-account token, downward API, emptyDir; PVCs are
  directories shared per claim), a kubeconfig with a TokenRequest token bound to the pod
  (`KUBECONFIG`), then each container as a process group of its own (`podspec` maps the image to
  a command and mount paths to pod directories);
* runs startup, readiness and liveness probes (httpGet, tcpSocket, exec), writes phase,
  conditions and container statuses through the status subresource (only when they changed),
  restarts exited containers per restartPolicy with exponential backoff;
* on deletion: preStop (exec, httpGet or sleep), SIGTERM, the rest of the grace period, SIGKILL,
  then deletes the Pod with grace 0 — the kubelet's sequence;
* serves the kubelet API's container logs (`kubeletapi`), so `kubectl logs` works.

It acts with the node's own identity (`system:node:<name>`), so the Node authorizer and
NodeRestriction admission confine it as they confine a kubelet.

Not done (documented in docs/local-cluster.md): sidecar (restartPolicy Always) init containers,
`kubectl exec`, ConfigMap refresh in mounted volumes, token rotation, resource limits.

One concept over ~400 lines, kept whole: a stand-in for the kubelet and its runtime, which the
issue "The local cluster becomes a real Kubernetes node" replaces with the real kubelet.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from grm_testkit.cluster import lifetime, podspec
from grm_testkit.cluster.kubeclient import Json, KubeClient, KubeError, retrying
from grm_testkit.cluster.kubeconfig import render_kubeconfig, write_kubeconfig
from grm_testkit.cluster.kubeletapi import serve
from grm_testkit.cluster.podspec import ContainerView, ImageRule, PodSpecError

log = logging.getLogger(__name__)

KUBELET_PORT = 10250
_LEASE_DURATION_S = 40
_LEASE_RENEW_S = 10.0
_NODE_STATUS_S = 20.0
# The kubelet gives at least 2 s between the preStop hook and SIGKILL.
_MIN_GRACE_AFTER_HOOK_S = 2.0
# Variables handed to every container from the agent's own environment (a container's env wins).
_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "GRM_VLLM_PYTHON")


@dataclass(frozen=True)
class NodeConfig:
    """One node of the local cluster."""

    name: str = "local-node-0"
    pod_cidr: str = "10.244.0.0/24"
    gpus: int = 8
    cpu: str = "64"
    memory: str = "256Gi"
    max_pods: int = 110
    # Crash-loop backoff: the kubelet's 10 s → 300 s would make a restart test wait minutes.
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0
    # A container that ran this long before exiting starts a fresh backoff (kubelet: 10 min).
    backoff_reset_s: float = 60.0
    token_expiration_s: int = 86400


@dataclass(frozen=True)
class AgentContext:
    """What every pod of every node shares."""

    workdir: Path
    api_url: str
    ca_pem: bytes
    images: Mapping[str, ImageRule]
    bin_dirs: tuple[Path, ...]
    # The `kubernetes` Service as pods see it (KUBERNETES_SERVICE_HOST/PORT).
    service_host: str = "10.96.0.1"
    service_port: int = 443


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Container:
    """One container of a pod: its process (restarted per policy), probes and state."""

    def __init__(
        self, pod: PodWorker, spec: Json, *, init: bool = False, waiting: str = "ContainerCreating"
    ) -> None:
        """`init`: an init container (runs to completion; restarted only after a failure)."""
        self.pod = pod
        self.spec = spec
        self.init = init
        self.name: str = spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.view = ContainerView(
            name=self.name, image=spec.get("image", ""), state={"waiting": {"reason": waiting}}
        )
        self.stopping = False
        self.failures = 0
        self.log_path = pod.dir / "logs" / f"{self.name}.log"
        # Where each run's output starts in the log file (the kubelet API serves the current or
        # the previous run, as `kubectl logs [--previous]` asks).
        self.log_starts: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._probes: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"container {self.pod.key}/{self.name}")

    async def completed(self) -> bool:
        """Init containers: runs it and waits; True when it exited 0 (after any retries)."""
        self.start()
        assert self._task is not None
        await self._task
        return bool(self.view.state.get("terminated", {}).get("exitCode") == 0)

    async def _run(self) -> None:
        policy = self.pod.spec.get("restartPolicy", "Always")
        if self.init and policy == "Always":
            policy = "OnFailure"  # an init container that succeeded is done
        while not self.stopping:
            try:
                await self._start_process()
            except PodSpecError as exc:
                self.view.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
                self.pod.changed()
                self.pod.event("Warning", "Failed", str(exc))
                return
            assert self.proc is not None
            started = time.monotonic()
            code = await self.proc.wait()
            _killpg(self.proc.pid, signal.SIGKILL)  # anything it left in its group
            for task in self._probes:
                task.cancel()
            self._probes.clear()
            ran = time.monotonic() - started
            finished = now_rfc3339()
            running = self.view.state.get("running", {})
            self.view.state = {
                "terminated": {
                    "exitCode": code if code >= 0 else 128 - code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": running.get("startedAt", finished),
                    "finishedAt": finished,
                    "containerID": self.view.container_id,
                }
            }
            message = self._termination_message(code)
            if message:
                self.view.state["terminated"]["message"] = message
            self.view.ready = False
            self.view.started = False
            self.pod.changed()
            if self.stopping or not podspec.restart_wanted(policy, code):
                return
            self.failures = 1 if ran >= self.pod.node.backoff_reset_s else self.failures + 1
            delay = podspec.crash_backoff(
                self.failures, self.pod.node.backoff_base_s, self.pod.node.backoff_cap_s
            )
            log.info(
                "%s/%s exited with %d after %.1f s; restarting in %.1f s",
                self.pod.key,
                self.name,
                code,
                ran,
                delay,
            )
            self.view.last_state = self.view.state
            self.view.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:.0f}s restarting failed container={self.name}",
                }
            }
            self.pod.changed()
            self.pod.event("Warning", "BackOff", f"Back-off restarting failed container {self.name}")
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self.view.restart_count += 1

    def _termination_message(self, code: int) -> str:
        """What the kubelet reports as the terminated state's message: the container's
        terminationMessagePath file (at most 4096 bytes), else with FallbackToLogsOnError and a
        failure the log's last 80 lines (at most 2048 bytes)."""
        if self.init:
            return ""
        path = self.spec.get("terminationMessagePath", podspec.TERMINATION_MESSAGE_PATH)
        with contextlib.suppress(OSError):
            data = Path(self.pod.paths.path(path)).read_bytes()[:4096]
            if data.strip():
                return data.decode(errors="replace")
        if code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = self.log_path.read_bytes().splitlines()[-80:]
                return b"\n".join(lines)[-2048:].decode(errors="replace")
        return ""

    async def _start_process(self) -> None:
        pod = self.pod
        rule = podspec.rule_for(self.spec.get("image", ""), pod.ctx.images)
        raw, env = podspec.container_env_views(pod.obj, self.spec, pod.lookups, pod.base_env(), pod.paths)
        env.update(rule.env(pod.ip))
        # `$(VAR)` expands from the container's view, then the mount paths are mapped once.
        argv = podspec.command_line(self.spec, rule, raw, pod.ip, _free_loopback_port())
        argv = [pod.paths.arg(a) for a in argv]
        argv[0] = podspec.resolve_executable(argv[0], pod.ctx.bin_dirs)
        cwd = pod.paths.path(self.spec["workingDir"]) if self.spec.get("workingDir") else str(pod.dir)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.log_starts.append(out.tell())
            out.write(f"--- {now_rfc3339()} start: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: signals reach its children too
                preexec_fn=lifetime.killed_with_parent,
            )
        pod.pids.add(self.proc.pid)
        self.view.container_id = f"grm://{self.proc.pid}"
        self.view.state = {"running": {"startedAt": now_rfc3339()}}
        self.view.started = "startupProbe" not in self.spec
        self.view.ready = self.view.started and "readinessProbe" not in self.spec
        pod.changed()
        pod.event("Normal", "Started", f"Started container {self.name} (pid {self.proc.pid})")
        self._probes = [asyncio.create_task(self._probe_loop())]

    # --- probes ------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        startup = self.spec.get("startupProbe")
        if startup is not None:
            if not await self._until_threshold(startup, want=True):
                await self._kill_for("Startup probe failed")
                return
            self.view.started = True
            self.view.ready = "readinessProbe" not in self.spec
            self.pod.changed()
        tasks = []
        if "readinessProbe" in self.spec:
            tasks.append(asyncio.create_task(self._readiness(self.spec["readinessProbe"])))
        if "livenessProbe" in self.spec:
            tasks.append(asyncio.create_task(self._liveness(self.spec["livenessProbe"])))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _until_threshold(self, probe: Json, *, want: bool) -> bool:
        """Probes until `successThreshold` successes (True) or `failureThreshold` failures."""
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while True:
            if await self._probe(probe) == want:
                return True
            failures += 1
            if failures >= int(probe.get("failureThreshold", 3)):
                return False
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _readiness(self, probe: Json) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            ok = await self._probe(probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and not self.view.ready and successes >= int(probe.get("successThreshold", 1)):
                self.view.ready = True
                self.pod.changed()
            elif not ok and self.view.ready and failures >= int(probe.get("failureThreshold", 3)):
                self.view.ready = False
                self.pod.changed()
                self.pod.event("Warning", "Unhealthy", f"Readiness probe failed ({self.name})")
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    async def _liveness(self, probe: Json) -> None:
        await asyncio.sleep(float(probe.get("periodSeconds", 10)))
        if not await self._until_threshold({**probe, "initialDelaySeconds": 0}, want=False):
            return  # unreachable: _until_threshold(want=False) returns only on a failure
        await self._kill_for("Liveness probe failed")

    async def _kill_for(self, why: str) -> None:
        log.info("%s/%s: %s; killing it", self.pod.key, self.name, why)
        self.pod.event("Warning", "Unhealthy", f"{why}: container {self.name} will be restarted")
        await self.terminate(float(self.pod.spec.get("terminationGracePeriodSeconds", 30)), hook=False)

    async def _probe(self, probe: Json) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            return await asyncio.wait_for(self._handler(probe), timeout)
        except (TimeoutError, OSError, aiohttp.ClientError, PodSpecError):
            return False

    async def _handler(self, action: Json) -> bool:
        """Runs one probe or hook action (httpGet, tcpSocket, exec, sleep); True on success."""
        pod = self.pod
        if "httpGet" in action:
            get = action["httpGet"]
            port = podspec.named_port(pod.obj, get["port"])
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{get.get('host') or pod.ip}:{port}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            async with pod.http.get(url, headers=headers, ssl=False) as resp:
                await resp.read()
                return 200 <= resp.status < 400
        if "tcpSocket" in action:
            port = podspec.named_port(pod.obj, action["tcpSocket"]["port"])
            _, writer = await asyncio.open_connection(action["tcpSocket"].get("host") or pod.ip, port)
            writer.close()
            return True
        if "exec" in action:
            argv = [pod.paths.arg(a) for a in action["exec"]["command"]]
            argv[0] = podspec.resolve_executable(argv[0], pod.ctx.bin_dirs)
            env = podspec.container_env(pod.obj, self.spec, pod.lookups, pod.base_env(), pod.paths)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
                cwd=str(pod.dir),
                start_new_session=True,
                preexec_fn=lifetime.killed_with_parent,
            )
            try:
                return await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    _killpg(proc.pid, signal.SIGKILL)
        if "sleep" in action:
            await asyncio.sleep(float(action["sleep"]["seconds"]))
            return True
        log.warning("%s/%s: unsupported probe/hook %s counts as success", pod.key, self.name, sorted(action))
        return True

    # --- termination -------------------------------------------------------------------------
    async def terminate(self, grace_s: float, *, hook: bool = True) -> None:
        """preStop (when `hook`), SIGTERM, wait out the grace period, SIGKILL."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        deadline = time.monotonic() + grace_s
        pre_stop = (self.spec.get("lifecycle") or {}).get("preStop")
        if hook and pre_stop:
            self.pod.event("Normal", "Killing", f"Running preStop hook of {self.name}")
            try:
                await asyncio.wait_for(self._handler(pre_stop), max(0.0, grace_s))
            except (TimeoutError, OSError, aiohttp.ClientError, PodSpecError) as exc:
                log.info("%s/%s preStop failed: %s", self.pod.key, self.name, exc)
            deadline = max(deadline, time.monotonic() + _MIN_GRACE_AFTER_HOOK_S)
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.info("%s/%s did not stop within the grace period; SIGKILL", self.pod.key, self.name)
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self, grace_s: float, *, hook: bool = True) -> None:
        """Ends the container for good (no restart)."""
        self.stopping = True
        await self.terminate(grace_s, hook=hook)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class PodWorker:
    """Runs one pod: sandbox (IP, dirs, volumes, credentials), containers, status, deletion."""

    def __init__(self, agent: NodeAgent, obj: Json) -> None:
        self.agent = agent
        self.node = agent.node
        self.ctx = agent.ctx
        self.obj = obj
        meta = obj["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.key = f"{self.namespace}/{self.name}"
        self.spec: Json = obj["spec"]
        self.dir = self.ctx.workdir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        # TMPDIR stays short, outside the pod dir: unix socket paths are limited to 107 bytes, and
        # vLLM binds its ZMQ IPC sockets at $TMPDIR/<uuid4> (37 more); under a pod dir with a
        # Deployment's pod name that came to 122 bytes and vLLM could not start. Here: ~36 + 37.
        self.tmpdir = self.ctx.workdir / "tmp" / self.uid[:8]
        self.ip = ""
        self.lookups = podspec.Lookups()
        self.paths = podspec.PathMap()
        self.kubeconfig: Path | None = None
        inits = self.spec.get("initContainers") or []
        self.init_containers = [Container(self, c, init=True) for c in inits]
        waiting = "PodInitializing" if inits else "ContainerCreating"
        self.containers = [Container(self, c, waiting=waiting) for c in self.spec.get("containers") or []]
        self.pids: set[int] = set()
        self.http = agent.http
        self.start_time = now_rfc3339()
        self.config_error: PodSpecError | None = None
        self._transitions: dict[str, str] = {}
        self._dirty = asyncio.Event()
        self._last_status: Json | None = None
        self._deleting = False
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._deletion: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._writer = asyncio.create_task(self._status_writer(), name=f"status {self.key}")
        self._task = asyncio.create_task(self._run(), name=f"pod {self.key}")

    def update(self, obj: Json) -> None:
        self.obj = obj
        if obj["metadata"].get("deletionTimestamp") and not self._deleting:
            self._deleting = True
            self._deletion = asyncio.create_task(self._delete(), name=f"delete {self.key}")

    async def _run(self) -> None:
        self.ip = self.agent.ips.allocate(self.uid)
        self.obj.setdefault("status", {})["podIP"] = self.ip
        self.changed()
        try:
            await self._prepare()
        except PodSpecError as exc:
            self.config_error = exc
            for c in self.containers:
                c.view.state = {"waiting": {"reason": exc.reason, "message": str(exc)}}
            self.changed()
            self.event("Warning", "Failed", str(exc))
            return
        # Init containers one after another, each to completion, as the kubelet runs them.
        for init in self.init_containers:
            if self._deleting or not await init.completed():
                return
        if self._deleting:
            return
        for c in self.containers:
            c.start()

    async def _prepare(self) -> None:
        """Pod directory, ConfigMaps/Secrets, volumes, credentials."""
        (self.dir / "volumes").mkdir(parents=True, exist_ok=True)
        await self._fetch_lookups()
        mounts_by_volume = await self._volumes()
        mounts: dict[str, str] = {}
        for c in [*(self.spec.get("initContainers") or []), *(self.spec.get("containers") or [])]:
            for m in c.get("volumeMounts") or []:
                host = mounts_by_volume.get(m["name"])
                if host is None:
                    raise PodSpecError("CreateContainerConfigError", f"volume {m['name']!r} is not defined")
                mounts[m["mountPath"]] = str(Path(host) / m["subPath"]) if m.get("subPath") else host
        # Each container's terminationMessagePath is a file of the pod (the kubelet bind-mounts
        # one per container); its content becomes the terminated state's message on exit.
        for c in self.spec.get("containers") or []:
            path = c.get("terminationMessagePath", podspec.TERMINATION_MESSAGE_PATH)
            host = self.dir / "termination" / c["name"]
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(b"")
            mounts.setdefault(path, str(host))
        self.paths = podspec.PathMap.of(mounts)
        if self.spec.get("automountServiceAccountToken", True):
            self.kubeconfig = await self._service_account_kubeconfig()

    async def _fetch_lookups(self) -> None:
        cms, secrets = podspec.referenced(self.obj)
        client = self.agent.client
        ns = quote(self.namespace)
        for name in cms:
            # The Node authorizer admits reads of what a bound pod refers to; its graph may lag
            # the binding by a moment, so a 403 is retried.
            obj = await _read_allowing_lag(client, f"/api/v1/namespaces/{ns}/configmaps/{quote(name)}")
            if obj:
                data = dict(obj.get("data") or {})
                data.update(
                    {
                        k: base64.b64decode(v).decode("latin-1")
                        for k, v in (obj.get("binaryData") or {}).items()
                    }
                )
                self.lookups.config_maps[name] = data
        for name in secrets:
            obj = await _read_allowing_lag(client, f"/api/v1/namespaces/{ns}/secrets/{quote(name)}")
            if obj:
                self.lookups.secrets[name] = {
                    k: base64.b64decode(v).decode("latin-1") for k, v in (obj.get("data") or {}).items()
                }

    async def _volumes(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for vol in self.spec.get("volumes") or []:
            name = vol["name"]
            target = self.dir / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol or "secret" in vol:
                kind, ref = (
                    ("configMap", vol["configMap"]) if "configMap" in vol else ("secret", vol["secret"])
                )
                self._project(target, kind, ref.get("name") or ref.get("secretName", ""), ref)
            elif "projected" in vol:
                for src in vol["projected"].get("sources") or []:
                    await self._projected_source(target, src)
            elif "downwardAPI" in vol:
                self._downward(target, vol["downwardAPI"].get("items") or [])
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                shared = self.ctx.workdir / "claims" / self.namespace / claim
                shared.mkdir(parents=True, exist_ok=True)
                target.rmdir()
                target = shared
            elif "hostPath" in vol:
                target.rmdir()
                target = Path(vol["hostPath"]["path"])
            # emptyDir (any medium) and anything else: the empty directory made above.
            out[name] = str(target)
        return out

    def _project(self, target: Path, kind: str, name: str, ref: Json) -> None:
        source = self.lookups.config_maps if kind == "configMap" else self.lookups.secrets
        data = source.get(name)
        if data is None:
            if ref.get("optional"):
                return
            raise PodSpecError("CreateContainerConfigError", f"{kind} {name!r} not found")
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                raise PodSpecError(
                    "CreateContainerConfigError", f"{kind} {name!r} has no key {item['key']!r}"
                )
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]].encode("latin-1"))

    def _downward(self, target: Path, items: list[Json]) -> None:
        for item in items:
            if "fieldRef" in item:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(podspec.field_value(self.obj, item["fieldRef"]["fieldPath"]))

    async def _projected_source(self, target: Path, src: Json) -> None:
        if "configMap" in src:
            self._project(target, "configMap", src["configMap"]["name"], src["configMap"])
        elif "secret" in src:
            self._project(target, "secret", src["secret"]["name"], src["secret"])
        elif "downwardAPI" in src:
            self._downward(target, src["downwardAPI"].get("items") or [])
        elif "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            token = await self._token(int(sat.get("expirationSeconds", 3600)), sat.get("audience"))
            (target / sat["path"]).write_text(token)

    async def _token(self, expiration_s: int, audience: str | None = None) -> str:
        sa = self.spec.get("serviceAccountName") or "default"
        body: Json = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiration_s,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        path = f"/api/v1/namespaces/{quote(self.namespace)}/serviceaccounts/{quote(sa)}/token"
        answer = await _with_lag(lambda: self.agent.client.create(path, body))
        token: str = answer["status"]["token"]
        return token

    async def _service_account_kubeconfig(self) -> Path:
        sa = self.spec.get("serviceAccountName") or "default"
        token = await self._token(self.node.token_expiration_s)
        config = render_kubeconfig(
            self.ctx.api_url,
            ca_pem=self.ctx.ca_pem,
            user=f"system:serviceaccount:{self.namespace}:{sa}",
            token=token,
            namespace=self.namespace,
        )
        return write_kubeconfig(self.dir / "kubeconfig.yaml", config)

    def base_env(self) -> dict[str, str]:
        """What the agent gives every container before the spec's own env."""
        env = {k: os.environ[k] for k in _PASSTHROUGH if k in os.environ}
        env.update(
            {
                "HOSTNAME": self.name,
                "HOME": str(self.dir),
                "TMPDIR": str(self.tmpdir),
                "GRM_POD_ROOT": str(self.dir),
                "POD_IP": self.ip,
                "GRM_BIND_HOST": self.ip,
                "KUBERNETES_SERVICE_HOST": self.ctx.service_host,
                "KUBERNETES_SERVICE_PORT": str(self.ctx.service_port),
            }
        )
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    async def _delete(self) -> None:
        """Graceful deletion: every container's preStop + SIGTERM + grace, then the final DELETE."""
        meta = self.obj["metadata"]
        grace = float(
            meta.get("deletionGracePeriodSeconds", self.spec.get("terminationGracePeriodSeconds", 30))
        )
        log.info("%s: deleting (grace %.0f s)", self.key, grace)
        await asyncio.gather(*(c.stop(grace) for c in [*self.init_containers, *self.containers]))
        path = f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.name)}"
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        with contextlib.suppress(KubeError):
            await retrying(f"delete {self.key}", lambda: self.agent.client.delete(path, body))

    async def close(self, grace_s: float) -> None:
        """Stops everything of this pod without touching the API (the pod is gone or the node
        is shutting down) and frees its IP and directory."""
        self._deleting = True
        await asyncio.gather(
            *(c.stop(grace_s, hook=False) for c in [*self.init_containers, *self.containers])
        )
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for pid in self.pids:
            _killpg(pid, signal.SIGKILL)
        self.agent.ips.release(self.uid)
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # --- status ------------------------------------------------------------------------------
    def changed(self) -> None:
        self._dirty.set()

    def status(self) -> Json:
        return podspec.pod_status(
            pod_ip=self.ip,
            host_ip=self.agent.ips.node_ip,
            start_time=self.start_time,
            restart_policy=self.spec.get("restartPolicy", "Always"),
            containers=[c.view for c in self.containers],
            init_containers=[c.view for c in self.init_containers],
            transitions=self._transitions,
            now=now_rfc3339(),
            config_error=self.config_error,
        )

    async def _status_writer(self) -> None:
        path = f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.name)}/status"
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status = self.status()
            if status == self._last_status:
                continue
            try:
                await retrying(f"status {self.key}", self._status_patch(path, status))
                self._last_status = status
            except KubeError as exc:
                if exc.status == 404:
                    return
                log.warning("%s: status write failed: %s", self.key, exc)
                self._dirty.set()
                await asyncio.sleep(1.0)

    def _status_patch(self, path: str, status: Json) -> Callable[[], Awaitable[Json]]:
        body = {"metadata": {"uid": self.uid}, "status": status}
        return lambda: self.agent.client.merge_patch(path, body)

    def event(self, kind: str, reason: str, message: str) -> None:
        self.agent.event(self.obj, kind, reason, message)


async def _with_lag(call: Callable[[], Any], timeout_s: float = 10.0) -> Json:
    """`call` retried on 403 for `timeout_s`: the Node authorizer learns of a pod's binding a
    moment after the agent sees it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: Json = await retrying("request", call)
            return result
        except KubeError as exc:
            if exc.status != 403 or time.monotonic() > deadline:
                raise PodSpecError("CreateContainerConfigError", str(exc)) from exc
        await asyncio.sleep(0.2)


async def _read_allowing_lag(client: KubeClient, path: str) -> Json:
    try:
        return await _with_lag(lambda: client.get(path))
    except PodSpecError as exc:
        if "404" in str(exc):
            return {}
        raise


class NodeAgent:
    """One Node of the local cluster and the pods bound to it."""

    def __init__(
        self,
        client: KubeClient,
        node: NodeConfig,
        ctx: AgentContext,
        serving_cert: tuple[Path, Path] | None = None,
    ) -> None:
        """`serving_cert` (certificate and key files for the node IP): serve the kubelet API's
        container logs on <node IP>:10250, so `kubectl logs` works."""
        self.client = client
        self.node = node
        self.ctx = ctx
        self.serving_cert = serving_cert
        self._api: Callable[[], Awaitable[None]] | None = None
        self.ips = podspec.PodIPs(node.pod_cidr)
        self.pods: dict[str, PodWorker] = {}
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._tasks: list[asyncio.Task[None]] = []
        self._events: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Registers the Node and starts its heartbeats, its pod watch and its kubelet API."""
        if self.serving_cert is not None:
            self._api = await serve(self, self.ips.node_ip, KUBELET_PORT, *self.serving_cert)
        await self._register()
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name=f"lease {self.node.name}"),
            asyncio.create_task(self._status_loop(), name=f"node status {self.node.name}"),
            asyncio.create_task(self._watch_pods(), name=f"pods of {self.node.name}"),
        ]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ends every pod's processes (SIGTERM, `grace_s`, SIGKILL) and the agent's own tasks."""
        for task in self._tasks:
            task.cancel()
        if self._api is not None:
            await self._api()
        await asyncio.gather(*(p.close(grace_s) for p in list(self.pods.values())), return_exceptions=True)
        self.pods.clear()
        for task in [*self._tasks, *self._events]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.http.close()

    def pids(self) -> set[int]:
        return {pid for p in self.pods.values() for pid in p.pids}

    def find(self, namespace: str, name: str) -> PodWorker | None:
        return next((p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)), None)

    # --- node --------------------------------------------------------------------------------
    def _node_status(self) -> Json:
        n = self.node
        capacity = {"cpu": n.cpu, "memory": n.memory, "pods": str(n.max_pods), "nvidia.com/gpu": str(n.gpus)}
        now = now_rfc3339()
        return {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "grm local node agent",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self._ready_since,
                },
                *[
                    {
                        "type": t,
                        "status": "False",
                        "reason": f"KubeletHasNo{t}",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": self._ready_since,
                    }
                    for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
                ],
            ],
            # InternalIP only: the API server reaches the kubelet API (`kubectl logs`) by the first
            # address of its preferred types, and a Hostname would need DNS.
            "addresses": [{"type": "InternalIP", "address": self.ips.node_ip}],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v1.35.4-grm-local",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "grm-local://1",
                "osImage": "grm local cluster",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT if self.serving_cert else 0}},
        }

    async def _register(self) -> None:
        self._ready_since = now_rfc3339()
        n = self.node
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": {
                    "kubernetes.io/hostname": n.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "grm.dev/local-cluster": "true",
                },
            },
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            "status": self._node_status(),
        }
        try:
            await retrying("register node", lambda: self.client.create("/api/v1/nodes", body))
        except KubeError as exc:
            if exc.status != 409:
                raise
        await retrying(
            "node status",
            lambda: self.client.merge_patch(
                f"/api/v1/nodes/{quote(n.name)}/status", {"status": self._node_status()}
            ),
        )
        log.info("node %s registered: %d GPUs, pod CIDR %s", n.name, n.gpus, n.pod_cidr)

    async def _lease_loop(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{quote(self.node.name)}"
        while True:
            spec = {
                "holderIdentity": self.node.name,
                "leaseDurationSeconds": _LEASE_DURATION_S,
                "renewTime": _micro_time(),
            }
            try:
                found = await self.client.get(path, ok_missing=True)
                if found:
                    await self.client.merge_patch(path, {"spec": spec})
                else:
                    await self.client.create(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": self.node.name},
                            "spec": spec,
                        },
                    )
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("lease renewal of %s failed: %s", self.node.name, exc)
            await asyncio.sleep(_LEASE_RENEW_S)

    async def _status_loop(self) -> None:
        path = f"/api/v1/nodes/{quote(self.node.name)}/status"
        while True:
            await asyncio.sleep(_NODE_STATUS_S)
            try:
                await self.client.merge_patch(path, {"status": self._node_status()})
            except (KubeError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("node status of %s failed: %s", self.node.name, exc)

    # --- pods --------------------------------------------------------------------------------
    async def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node.name}"
        async for kind, obj in self.client.watch("/api/v1/pods", fieldSelector=selector):
            if kind == "SYNC":
                alive = {item["metadata"]["uid"] for item in obj["items"]}
                for uid in [u for u in self.pods if u not in alive]:
                    await self._forget(uid)
                continue
            uid = obj["metadata"]["uid"]
            if kind == "DELETED":
                await self._forget(uid)
                continue
            worker = self.pods.get(uid)
            if worker is None:
                phase = (obj.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    continue
                worker = PodWorker(self, obj)
                self.pods[uid] = worker
                log.info("pod %s bound to %s", worker.key, self.node.name)
                worker.start()
            worker.update(obj)

    async def _forget(self, uid: str) -> None:
        worker = self.pods.pop(uid, None)
        if worker is not None:
            log.info("pod %s is gone; stopping its processes", worker.key)
            await worker.close(grace_s=2.0)

    def event(self, pod: Json, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about `pod` from this kubelet (best effort, never awaited by callers)."""
        meta = pod["metadata"]
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.node.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node.name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

        async def send() -> None:
            with contextlib.suppress(KubeError, aiohttp.ClientError, TimeoutError):
                await self.client.create(f"/api/v1/namespaces/{quote(meta['namespace'])}/events", body)

        task = asyncio.create_task(send())
        self._events.add(task)
        task.add_done_callback(self._events.discard)


def default_bin_dirs() -> tuple[Path, ...]:
    """Where container commands are looked up first: this interpreter's bin (the venv)."""
    return (Path(sys.executable).parent,)
