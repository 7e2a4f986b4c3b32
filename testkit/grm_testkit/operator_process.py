"""Running the real operator process against a test control plane, and counting its requests.

Used by the integration tests and the reconcile benchmark (never by the operator itself):

* :func:`audit_apiserver_args` — kube-apiserver flags for an audit log of every request at
  ``Metadata`` level, the ground truth for "the operator wrote nothing" (it also sees kopf's own
  requests, which the operator's metrics cannot).
* :func:`read_audit` — the completed requests of the log, optionally of one user.
* :func:`crd_manifest` / :func:`install_crd` — the GRMDeployment CRD: ``crds/`` when committed,
  else ``grm_operator.api.crd.build_crd()``.
* :class:`OperatorProcess` — ``grm-operator run`` as a subprocess with its own KUBECONFIG, ports
  and log file; waits for the liveness endpoint; reads the ``/metrics`` counters. When another
  process takes its liveness or metrics port before it binds it (``grm_testkit.cluster.ports``),
  it starts again on fresh ports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from grm_testkit.cluster import ports
from grm_testkit.cluster.ports import PortClash as PortClash
from grm_testkit.cluster.ports import free_port as free_port

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class Requester(Protocol):
    """What these helpers need from a control plane (``ControlPlane.request``)."""

    def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, *, timeout_s: float = 30.0
    ) -> tuple[int, Any]: ...


def audit_apiserver_args(directory: Path) -> tuple[tuple[str, ...], Path]:
    """kube-apiserver flags logging every request (Metadata level, JSON lines) and the log path.

    The log backend's default mode is blocking: an event is in the file before the response is
    sent, so a test can read the log as soon as its request returned.
    """
    directory.mkdir(parents=True, exist_ok=True)
    policy = directory / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    log_path = directory / "audit.log"
    args = (
        f"--audit-policy-file={policy}",
        f"--audit-log-path={log_path}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",
        "--audit-log-maxsize=0",
    )
    return args, log_path


@dataclass(frozen=True)
class AuditRecord:
    """One completed API request."""

    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    stage_timestamp: str

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS


def read_audit(path: Path, *, user: str | None = None, offset: int = 0) -> tuple[list[AuditRecord], int]:
    """Completed requests (ResponseComplete; watches also when they end) after byte ``offset``,
    and the offset to continue from."""
    records: list[AuditRecord] = []
    if not path.exists():
        return records, offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete":
            continue
        who = str((event.get("user") or {}).get("username", ""))
        if user is not None and who != user:
            continue
        ref = event.get("objectRef") or {}
        records.append(
            AuditRecord(
                user=who,
                verb=str(event.get("verb", "")),
                resource=str(ref.get("resource", "")),
                subresource=str(ref.get("subresource", "")),
                namespace=str(ref.get("namespace", "")),
                name=str(ref.get("name", "")),
                code=int((event.get("responseStatus") or {}).get("code", 0)),
                stage_timestamp=str(event.get("stageTimestamp", "")),
            )
        )
    return records, offset + end


# --- the CRD --------------------------------------------------------------------------------------


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def crd_manifest() -> tuple[dict[str, Any], str]:
    """The GRMDeployment CRD and where it came from (the committed ``crds/``, else ``build_crd``)."""
    crd_dir = repo_root() / "crds"
    for path in sorted(crd_dir.glob("*.yaml")) if crd_dir.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                return doc, str(path.relative_to(repo_root()))
    from grm_operator.api.crd import build_crd

    return build_crd(), "build_crd"


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; TimeoutError after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def install_crd(plane: Requester, crd: Mapping[str, Any] | None = None, timeout_s: float = 30.0) -> str:
    """Create (or replace) the CRD and wait until it is Established and served; its source."""
    source = "given"
    if crd is None:
        crd, source = crd_manifest()
    name = crd["metadata"]["name"]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    status, body = plane.request("POST", path, crd)
    if status == 409:
        status, current = plane.request("GET", f"{path}/{name}")
        replacement = json.loads(json.dumps(crd))
        replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        status, body = plane.request("PUT", f"{path}/{name}", replacement)
    if status not in (200, 201):
        raise RuntimeError(f"installing CRD {name}: {status} {body}")

    def established() -> bool:
        _, got = plane.request("GET", f"{path}/{name}")
        conditions = (got.get("status") or {}).get("conditions") or [] if isinstance(got, dict) else []
        return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

    wait_for(established, timeout_s, f"CRD {name} Established")
    group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
    plural = crd["spec"]["names"]["plural"]
    wait_for(
        lambda: plane.request("GET", f"/apis/{group}/{version}/{plural}")[0] == 200,
        timeout_s,
        f"{plural} served",
    )
    return source


# --- the operator process ---------------------------------------------------------------------


def operator_command() -> list[str]:
    """``grm-operator run``: the console script beside this interpreter, else the CLI module."""
    script = Path(sys.executable).with_name("grm-operator")
    if script.exists():
        return [str(script), "run"]
    return [sys.executable, "-m", "grm_operator.cli", "run"]


class OperatorProcess:
    """One ``grm-operator run`` subprocess (or ``command``); its log goes to ``log_path``.

    `choose_port` picks the liveness and metrics ports, again for each of up to `port_attempts`
    starts when the process lost one of them to another process (tests inject a chooser that
    returns a taken port first).
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        command: list[str] | None = None,
        choose_port: Callable[[], int] = free_port,
        port_attempts: int = ports.PORT_ATTEMPTS,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.command = command
        self.log_path = log_path
        self.choose_port = choose_port
        self.port_attempts = port_attempts
        self.health_port = choose_port()
        self.metrics_port = choose_port()
        self.extra_env = dict(env or {})
        self.args = args
        self.popen: subprocess.Popen[bytes] | None = None
        self._fresh_ports = False

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the process and wait (up to `timeout_s` per attempt) for its liveness endpoint.

        RuntimeError when it exits first; PortClash when it lost its ports on every attempt."""
        ports.retry_on_clash(lambda: self._start_once(timeout_s), "grm-operator", self.port_attempts)

    def _start_once(self, timeout_s: float) -> None:
        if self._fresh_ports:
            self.health_port = self.choose_port()
            self.metrics_port = self.choose_port()
        # Whatever happens below, a later attempt needs ports this one has not tried.
        self._fresh_ports = True
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRM_")}
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "GRM_HEALTH_HOST": "127.0.0.1",
                "GRM_HEALTH_PORT": str(self.health_port),
                "GRM_METRICS_HOST": "127.0.0.1",
                "GRM_METRICS_PORT": str(self.metrics_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            # Only this attempt's lines can tell why this attempt failed.
            log_offset = log_file.tell()
            self.popen = subprocess.Popen(
                [*(self.command or operator_command()), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=repo_root(),
            )
        wait_for(lambda: self._healthy() or self._died(), timeout_s, "operator liveness endpoint")
        # The ports the process was told to bind (`env` may have turned the metrics server off).
        chosen = [
            int(env[k]) for k in ("GRM_HEALTH_PORT", "GRM_METRICS_PORT") if env[k].isdigit() and int(env[k])
        ]
        if self.popen.poll() is None:
            try:
                # The liveness endpoint may have been another process's on the same port; the
                # metrics server is bound before the liveness endpoint starts, so both are checked.
                ports.check_holder(self.popen.pid, chosen, "grm-operator")
            except PortClash:
                self.stop()
                raise
        # Checked after the holder too: a child that died meanwhile has no sockets to show.
        if self.popen.poll() is not None:
            text = self._log_since(log_offset)
            if (line := ports.clash_line(text, chosen)) is not None:
                raise PortClash(f"grm-operator exited with {self.popen.returncode}: {line}")
            raise RuntimeError(f"operator exited with {self.popen.returncode}:\n{self.tail()}")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _died(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout_s: float = 20.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout_s)
        return self.popen.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def metrics(self) -> dict[str, float]:
        """The operator's ``grm_operator_*`` samples, keyed ``name{labels}`` as exposed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("grm_operator_"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for key, value in self.metrics().items():
            sample, _, rest = key.partition("{")
            if sample != name:
                continue
            have = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
            if all(have.get(k, "").strip('"') == v for k, v in labels.items()):
                total += value
        return total

    def rss_kib(self) -> int:
        """Resident set size of the operator process (VmRSS), KiB; peak is VmHWM."""
        return _proc_status_kib(self.popen, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _proc_status_kib(self.popen, "VmHWM")

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _proc_status_kib(popen: subprocess.Popen[bytes] | None, field: str) -> int:
    if popen is None:
        return 0
    for line in Path(f"/proc/{popen.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
