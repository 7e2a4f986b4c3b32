"""Leader election: exactly one operator replica acts, the holder of a coordination.k8s.io/v1 Lease.

The scheme is client-go's (``k8s.io/client-go/tools/leaderelection``, what controller-runtime
managers use), so it behaves as platform engineers know it:

* **Acquire.** A candidate reads the Lease every ``retry_period_s`` (2 s). It takes the Lease when
  none exists (create), when it was released (empty ``holderIdentity``), or when the holder has
  not renewed it for ``lease_duration_s`` (15 s). Expiry is judged by this process's own
  monotonic clock from the moment it *observed* the record change, never by comparing the
  holder's ``renewTime`` with our wall clock, so clock skew between nodes cannot hand the Lease
  over early. Every write is a PUT carrying the resourceVersion read: of two candidates racing
  for an expired Lease, one gets 409 Conflict and stays a candidate.
* **Hold.** The leader renews every ``retry_period_s``. When no renewal succeeded for
  ``renew_deadline_s`` (10 s), or the Lease names someone else, leadership is lost. Because
  renew_deadline < lease_duration, the old leader has given up at least 5 s before anyone else
  may take the Lease.
* **Release.** A leader stopping gracefully (SIGTERM) empties ``holderIdentity``, so a standby
  takes over on its next try (2 s) rather than after the lease duration.

Identities get a random suffix per process start: a restarted replica is a new candidate and
never mistakes its predecessor's Lease for its own — the split brain kopf's peering had (a new
random priority at each start, so a restarted replica outranked the leader half of the time).
What a replica does with leadership (start kopf only once elected, exit when it is lost) is in
:mod:`grm_operator.handlers.runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from grm_operator import kubeapi
from grm_operator.kubeapi import Body, Conflict, KubeClient, KubeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's defaults: a dead leader is replaced within 15 s + one retry period."""

    duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


def unique_identity(base: str | None) -> str:
    """``base`` (the pod name; else the host name) with a random suffix for this process start."""
    return f"{base or socket.gethostname()}_{secrets.token_hex(4)}"


def _micro_time(epoch_s: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires, renews and releases one Lease on behalf of this process."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.monotonic = monotonic
        self.wall = wall
        self.leading = False
        # The Lease spec last read and when (monotonic) it last changed: expiry is measured from
        # that local observation.
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0

    # --- one attempt ------------------------------------------------------------------------------
    async def try_acquire_or_renew(self) -> bool:
        """One read and, where allowed, one write: True when this process holds the Lease now."""
        now_wall = self.wall()
        current = await self.kube.get(kubeapi.LEASES, self.namespace, self.name)
        if current is None:
            try:
                await self.kube.create(kubeapi.LEASES, self.namespace, self._lease(None, now_wall, 0))
            except Conflict:
                return False  # another candidate created it first
            return self._became(True)
        spec: dict[str, Any] = dict(current.get("spec") or {})
        if spec != self._observed:
            self._observed, self._observed_at = spec, self.monotonic()
        holder = spec.get("holderIdentity") or ""
        mine = holder == self.identity
        expired = self._observed_at + float(spec.get("leaseDurationSeconds") or 0) <= self.monotonic()
        if holder and not mine and not expired:
            return self._became(False)
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        body = self._lease(current, now_wall, transitions)
        if mine:
            body["spec"]["acquireTime"] = spec.get("acquireTime") or body["spec"]["acquireTime"]
        try:
            updated = await self.kube.replace(kubeapi.LEASES, self.namespace, self.name, body)
        except Conflict:
            return self._became(False)  # someone else wrote first: read again next time
        self._observed, self._observed_at = dict(updated.get("spec") or {}), self.monotonic()
        return self._became(True)

    def _became(self, leading: bool) -> bool:
        if leading != self.leading:
            log.info(
                "%s leadership of Lease %s/%s as %s",
                "acquired" if leading else "lost",
                self.namespace,
                self.name,
                self.identity,
            )
        self.leading = leading
        return leading

    def _lease(self, current: Body | None, now_wall: float, transitions: int) -> Body:
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            meta = current.get("metadata") or {}
            # The precondition of the PUT: fails with 409 if the Lease changed since we read it.
            metadata["resourceVersion"] = meta.get("resourceVersion")
            if meta.get("labels"):
                metadata["labels"] = meta["labels"]
        stamp = _micro_time(now_wall)
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.timing.duration_s)),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": transitions,
            },
        }

    # --- the loops --------------------------------------------------------------------------------
    async def acquire(self) -> None:
        """Return once this process holds the Lease (tries every retry period)."""
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except KubeError as exc:
                log.warning("could not read or acquire Lease %s/%s: %s", self.namespace, self.name, exc)
            await asyncio.sleep(self.timing.retry_period_s)  # client-go's retry period

    async def hold(self) -> None:
        """Renew until leadership is lost, then return: the Lease names another holder, or no
        renewal succeeded for the renew deadline."""
        last_renewed = self.monotonic()
        while True:
            await asyncio.sleep(self.timing.retry_period_s)  # client-go's retry period
            try:
                renewed = await asyncio.wait_for(
                    self.try_acquire_or_renew(),
                    timeout=max(0.1, last_renewed + self.timing.renew_deadline_s - self.monotonic()),
                )
            except (KubeError, TimeoutError) as exc:
                log.warning("could not renew Lease %s/%s: %s", self.namespace, self.name, exc)
                renewed = None
            if renewed is False:
                self._became(False)
                return
            if renewed:
                last_renewed = self.monotonic()
            elif self.monotonic() - last_renewed >= self.timing.renew_deadline_s:
                log.error(
                    "Lease %s/%s not renewed for %.0f s (renew deadline)",
                    self.namespace,
                    self.name,
                    self.timing.renew_deadline_s,
                )
                self._became(False)
                return

    async def release(self) -> None:
        """Hand the Lease back (empty holder), so a standby acquires it on its next try."""
        if not self.leading:
            return
        try:
            current = await self.kube.get(kubeapi.LEASES, self.namespace, self.name)
            spec = (current or {}).get("spec") or {}
            if current is None or spec.get("holderIdentity") != self.identity:
                return
            body = self._lease(current, self.wall(), int(spec.get("leaseTransitions") or 0))
            body["spec"].update(holderIdentity=None, leaseDurationSeconds=1)
            await self.kube.replace(kubeapi.LEASES, self.namespace, self.name, body)
            log.info("released Lease %s/%s", self.namespace, self.name)
        except KubeError as exc:
            log.warning("could not release Lease %s/%s: %s", self.namespace, self.name, exc)
        finally:
            self.leading = False
