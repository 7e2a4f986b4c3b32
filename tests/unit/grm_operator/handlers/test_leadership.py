"""The Lease elector's rules, against an in-memory Lease store with the API server's optimistic
concurrency (a PUT with a stale resourceVersion is a 409 Conflict)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from grm_operator import kubeapi
from grm_operator.handlers.leadership import LeaderElector, LeaseTiming, unique_identity
from grm_operator.kubeapi import Body, Conflict, KubeError

TIMING = LeaseTiming(duration_s=15.0, renew_deadline_s=10.0, retry_period_s=2.0)


class LeaseStore:
    """get / create / replace of Leases, as the API server answers them."""

    def __init__(self) -> None:
        self.objects: dict[str, Body] = {}
        self.version = 0
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise KubeError(0, "ConnectionError", "connection refused")

    async def get(self, kind: kubeapi.Kind, namespace: str | None, name: str) -> Body | None:
        self._check()
        found = self.objects.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def create(self, kind: kubeapi.Kind, namespace: str | None, body: Any) -> Body:
        self._check()
        name = body["metadata"]["name"]
        if name in self.objects:
            raise Conflict(409, "AlreadyExists", name)
        return self._store(name, body)

    async def replace(self, kind: kubeapi.Kind, namespace: str | None, name: str, body: Any) -> Body:
        self._check()
        if body["metadata"].get("resourceVersion") != self.objects[name]["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified")
        return self._store(name, body)

    def _store(self, name: str, body: Any) -> Body:
        self.version += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"] = {**stored["metadata"], "resourceVersion": str(self.version)}
        self.objects[name] = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(store: LeaseStore, clock: Clock, identity: str) -> LeaderElector:
    kube: Any = store
    return LeaderElector(kube, "ops", "grm-operator", identity, TIMING, monotonic=clock, wall=clock)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_first_candidate_creates_the_lease_and_the_second_waits_until_it_expires() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a_1"), elector(store, clock, "b_1")
    assert run(a.try_acquire_or_renew()) is True
    assert store.objects["grm-operator"]["spec"]["holderIdentity"] == "a_1"
    assert run(b.try_acquire_or_renew()) is False
    # a renews at 10 s; b reads it at 12 s and restarts its expiry clock from then.
    clock.now += 10.0
    assert run(a.try_acquire_or_renew()) is True
    clock.now += 2.0
    assert run(b.try_acquire_or_renew()) is False
    clock.now += 14.9
    assert run(b.try_acquire_or_renew()) is False  # 14.9 s since it saw a renewal, < 15 s
    clock.now += 0.1
    assert run(b.try_acquire_or_renew()) is True  # 15 s without a renewal: expired
    spec = store.objects["grm-operator"]["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b_1", 1)
    # The ex-leader learns it lost on its next renewal.
    assert run(a.try_acquire_or_renew()) is False and not a.leading


def test_expiry_is_measured_from_the_local_observation_not_the_holders_clock() -> None:
    store, clock = LeaseStore(), Clock()
    a = elector(store, clock, "a_1")
    assert run(a.try_acquire_or_renew())
    # The holder's renewTime says 1970 (a skewed clock): a newcomer still waits a full duration.
    store.objects["grm-operator"]["spec"]["renewTime"] = "1970-01-01T00:00:00.000000Z"
    b = elector(store, clock, "b_1")
    assert run(b.try_acquire_or_renew()) is False
    clock.now += 14.9
    assert run(b.try_acquire_or_renew()) is False
    clock.now += 0.1
    assert run(b.try_acquire_or_renew()) is True


def test_of_two_candidates_racing_for_an_expired_lease_one_wins() -> None:
    store, clock = LeaseStore(), Clock()
    assert run(elector(store, clock, "a_1").try_acquire_or_renew())
    b, c = elector(store, clock, "b_1"), elector(store, clock, "c_1")
    assert not run(b.try_acquire_or_renew()) and not run(c.try_acquire_or_renew())
    clock.now += 20.0
    original = store.get

    async def race() -> list[bool]:
        # Both candidates read the same resourceVersion before either writes.
        reads: list[Body | None] = []
        both_read = asyncio.Event()

        async def get(kind: kubeapi.Kind, namespace: str | None, name: str) -> Body | None:
            reads.append(await original(kind, namespace, name))
            if len(reads) == 2:
                both_read.set()
            await both_read.wait()
            return reads[-1]

        store.get = get  # type: ignore[method-assign]
        return list(await asyncio.gather(b.try_acquire_or_renew(), c.try_acquire_or_renew()))

    assert sorted(run(race())) == [False, True]
    assert store.objects["grm-operator"]["spec"]["leaseTransitions"] == 1


def test_a_leader_that_cannot_renew_gives_up_within_the_renew_deadline() -> None:
    store = LeaseStore()
    timing = LeaseTiming(duration_s=0.6, renew_deadline_s=0.3, retry_period_s=0.05)
    a = LeaderElector(store, "ops", "grm-operator", "a_1", timing)  # type: ignore[arg-type]

    async def scenario() -> float:
        assert await a.try_acquire_or_renew()
        loop = asyncio.get_running_loop()
        holding = asyncio.create_task(a.hold())
        await asyncio.sleep(0.2)
        assert not holding.done()  # renewing fine
        store.down = True
        lost_from = loop.time()
        await asyncio.wait_for(holding, timeout=5.0)
        return loop.time() - lost_from

    took = run(scenario())
    assert not a.leading
    # Given up after the renew deadline (0.3 s) and before the lease duration (0.6 s) could let
    # another replica in.
    assert 0.25 <= took < 0.6


def test_release_hands_the_lease_over_at_once() -> None:
    store, clock = LeaseStore(), Clock()
    a, b = elector(store, clock, "a_1"), elector(store, clock, "b_1")
    assert run(a.try_acquire_or_renew())
    assert not run(b.try_acquire_or_renew())
    run(a.release())
    assert store.objects["grm-operator"]["spec"]["holderIdentity"] is None
    assert run(b.try_acquire_or_renew())  # no wait for the lease duration


def test_identities_differ_per_process_start() -> None:
    first, second = unique_identity("grm-operator-7d9f-abc"), unique_identity("grm-operator-7d9f-abc")
    assert first != second and first.startswith("grm-operator-7d9f-abc_")
