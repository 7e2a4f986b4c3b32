"""The cluster's GPU capacity in the fleet simulation: what a Pending pod waits for.

By default the cluster has every GPU the GRMDeployment may use (``spec.max_gpus()``) at all times,
and a pod is Pending only while a switch's surge waits for the GPUs a drain frees. Two other
clusters are modelled (:class:`ClusterModel`):

* **Fixed, short** (``gpus`` below maxGPUs, no ``node_delay_s``): a cluster without a node
  autoscaler. A pod beyond its GPUs stays Pending for as long as it is asked for — the case
  ``spec.scaling.pendingGrace`` should read as "no GPU" as soon as possible.
* **Node autoscaler** (``node_delay_s``, Karpenter or cluster-autoscaler): the cluster starts with
  ``gpus`` and grows up to ``max_gpus``. Pods unscheduled for lack of GPUs get a node sized to each
  of them (Karpenter's bin-packing of one pod per node; a TP2 replica gets a 2-GPU node) that is
  Ready ``node_delay_s`` after the autoscaler saw them Pending; nodes already on their way count,
  so a pod waits for one node only. A node added by the autoscaler whose GPUs have stood unused
  for ``scale_down_s`` is removed (cluster-autoscaler's ``--scale-down-unneeded-time`` defaults to
  10 minutes), so the next burst waits for nodes again. The nodes it started with stay.

GPU-hours count pods (a Pending pod costs nothing), not nodes: the bench compares policies, and
a node's idle minutes before its scale-down are the cluster's cost whoever drives it.

The instant hindsight bounds (``Fleet(cold_start=False)``: replicas start at once) get nodes at
once too, but never more GPUs than ``max_gpus``: a bound cannot use GPUs the cluster never had.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: cluster-autoscaler's default --scale-down-unneeded-time.
SCALE_DOWN_S = 600.0
#: The ceiling of a node autoscaler without a limit of its own.
UNLIMITED = 1_000_000


@dataclass(frozen=True)
class ClusterModel:
    """The GPUs a cluster gives one GRMDeployment's workers (module doc)."""

    #: GPUs schedulable from the start.
    gpus: int
    #: A node autoscaler brings a node this long after a pod went Pending (None: no autoscaler).
    node_delay_s: float | None = None
    #: The most GPUs the autoscaler grows the cluster to (None: no limit of its own; the fleet never
    #: holds more than maxGPUs).
    max_gpus: int | None = None
    #: An added node unused this long is removed.
    scale_down_s: float = SCALE_DOWN_S

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ValueError(f"cluster GPUs must be ≥ 0, got {self.gpus}")
        if self.node_delay_s is not None and self.node_delay_s < 0:
            raise ValueError(f"node delay must be ≥ 0 s, got {self.node_delay_s}")
        if self.max_gpus is not None and self.max_gpus < self.gpus:
            raise ValueError(
                f"the autoscaler's ceiling ({self.max_gpus}) is below the cluster's GPUs ({self.gpus})"
            )
        if self.scale_down_s < 0:
            raise ValueError(f"scale-down time must be ≥ 0 s, got {self.scale_down_s}")

    @property
    def autoscaled(self) -> bool:
        """Whether a node autoscaler adds GPUs."""
        return self.node_delay_s is not None and self.ceiling > self.gpus

    @property
    def ceiling(self) -> int:
        """The most GPUs the cluster ever has (``UNLIMITED`` for an autoscaler without a limit)."""
        if self.node_delay_s is None:
            return self.gpus
        return UNLIMITED if self.max_gpus is None else self.max_gpus

    def describe(self) -> str:
        """One phrase for tables and titles."""
        if self.autoscaled:
            limit = "maxGPUs" if self.max_gpus is None else str(self.max_gpus)
            return f"{self.gpus} GPUs, node autoscaler to {limit} after {self.node_delay_s:g}s"
        return f"{self.gpus} GPUs, fixed"


@dataclass
class ClusterState:
    """The cluster's GPUs during one run: the nodes it has and those on their way."""

    model: ClusterModel
    #: Whether nodes take ``node_delay_s`` (False for the instant bounds: they arrive at once).
    delayed: bool = True
    gpus: int = 0
    #: Nodes on their way: (Ready at, GPUs).
    coming: list[tuple[float, int]] = field(default_factory=list)
    #: GPUs of each node the autoscaler added (removable), oldest first.
    added: list[int] = field(default_factory=list)
    #: Since when an added node's worth of GPUs has stood unused (None: they are in use).
    surplus_since: float | None = None
    #: Nodes added and removed over the run.
    nodes_added: int = 0
    nodes_removed: int = 0

    def __post_init__(self) -> None:
        self.gpus = self.model.gpus

    def step(self, now: float, used: int, pending: list[int]) -> None:
        """Advance the autoscaler to ``now``: nodes on their way arrive, the unscheduled pods'
        GPUs (``pending``, in request order) beyond what is free and coming get nodes, and an
        added node unused for ``scale_down_s`` goes."""
        model = self.model
        arrived = [g for t, g in self.coming if t <= now]
        if arrived:
            self.coming = [(t, g) for t, g in self.coming if t > now]
            self.gpus += sum(arrived)
            self.added.extend(arrived)
        if not model.autoscaled:
            return
        free = self.gpus - used
        coming = sum(g for _, g in self.coming)
        on_the_way = coming
        delay = (model.node_delay_s or 0.0) if self.delayed else 0.0
        for gpus in pending:
            if gpus <= free:
                free -= gpus  # the scheduler places it on a GPU already there
                continue
            if gpus <= coming:
                coming -= gpus  # a node on its way is for it
                continue
            if self.gpus + on_the_way + gpus > model.ceiling:
                continue  # the node pool is at its maximum: the pod stays Pending
            self.nodes_added += 1
            if delay > 0.0:
                self.coming.append((now + delay, gpus))
                on_the_way += gpus
            else:  # the instant bounds: the node is there at once, and the pod takes it
                self.gpus += gpus
                self.added.append(gpus)
        self._scale_down(now, free)

    def _scale_down(self, now: float, free: int) -> None:
        removable = [g for g in self.added if g <= free]
        if not removable:
            self.surplus_since = None
            return
        if self.surplus_since is None:
            self.surplus_since = now
        if now - self.surplus_since < self.model.scale_down_s:
            return
        node = max(removable)
        self.added.remove(node)
        self.gpus -= node
        self.nodes_removed += 1
        # The next node waits its own unneeded time (cluster-autoscaler removes one at a time
        # when each has been unneeded that long; the simplification keeps the model monotone).
        self.surplus_since = now if any(g <= free - node for g in self.added) else None
