"""Pure manifest builders: a GRMDeployment (plus replica counts) in, its child objects out.

Children of a GRMDeployment ``<name>``:

* per variant ``v``: a ConfigMap ``<name>-<v>-config`` holding the worker's own
  :class:`grm_worker.contract.config.WorkerConfig` as ``worker.json``, and a Deployment ``<name>-<v>``
  running ``grm-worker serve --config /etc/grm/worker.json`` with the variant's GPUs;
* a Service ``<name>`` selecting every ready worker pod of the GRMDeployment, whatever its variant
  (a variant switch never changes where clients connect);
* a Service ``<name>-reference`` selecting the reference variant's (the first's) ready pods, which
  the other variants' workers shadow a sample of score requests to (spec.precision.shadow);
* a PodDisruptionBudget ``<name>`` and, when asked for, a PodMonitor ``<name>``.

Every child carries the standard ``app.kubernetes.io/*`` labels, ``grm.dev/deployment`` and a
controller owner reference, so Kubernetes' garbage collector deletes it with its parent and the
operator can tell what it owns. Replica counts are an input: the policy decides them;
:func:`~grm_operator.control.builders.replicas.initial_replicas` and
:func:`~grm_operator.control.builders.replicas.plan_replicas` are the rules used before it has
spoken.

Nothing here does I/O; the same spec always gives byte-identical manifests, which is what lets
the reconciler skip writes by comparing ``grm.dev/applied-hash`` values.

The modules (import a name from the one that defines it; this package exposes only
:class:`Children` and :func:`build_children`):

* :mod:`.metadata` — names, labels, annotations, the owner reference, the applied hash;
* :mod:`.layout` — the worker pod's port, paths and user;
* :mod:`.replicas` — replica counts before the policy speaks, the serving variant;
* :mod:`.workerconfig` — the worker config of a variant and its ConfigMap;
* :mod:`.modelload` — where the weights are, the fetch-model init container, the startup budget;
* :mod:`.deployment` — the worker Deployment of a variant;
* :mod:`.service` — the Service, PodDisruptionBudget and PodMonitor over every variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from grm_operator.api.models import GRMDeployment
from grm_operator.control.builders.deployment import build_deployment
from grm_operator.control.builders.metadata import Manifest, Owner, content_hash
from grm_operator.control.builders.service import (
    build_pdb,
    build_pod_monitor,
    build_reference_service,
    build_service,
)
from grm_operator.control.builders.workerconfig import build_config_map
from grm_operator.settings import OperatorSettings

__all__ = ["Children", "build_children"]


@dataclass
class Children:
    """Every child object of one GRMDeployment, ready to apply."""

    config_maps: dict[str, Manifest] = field(default_factory=dict)  # by variant name
    deployments: dict[str, Manifest] = field(default_factory=dict)  # by variant name
    service: Manifest = field(default_factory=dict)
    reference_service: Manifest = field(default_factory=dict)
    pdb: Manifest = field(default_factory=dict)
    pod_monitor: Manifest | None = None

    def all(self) -> list[Manifest]:
        """Every manifest, ConfigMaps first (a Deployment's pods mount them)."""
        items = [*self.config_maps.values(), *self.deployments.values(), self.service]
        items += [self.reference_service, self.pdb]
        if self.pod_monitor is not None:
            items.append(self.pod_monitor)
        return items


def build_children(
    grmd: GRMDeployment,
    replicas: Mapping[str, int],
    settings: OperatorSettings,
    *,
    pod_monitor: bool = False,
) -> Children:
    """Every child of ``grmd``; ``replicas`` gives each variant's count (missing: 0)."""
    owner = Owner.of(grmd)
    children = Children()
    for variant in grmd.spec.variants:
        cm = build_config_map(grmd, owner, variant)
        children.config_maps[variant.name] = cm
        config_hash = content_hash(cm["data"])
        children.deployments[variant.name] = build_deployment(
            grmd, owner, variant, replicas.get(variant.name, 0), settings, config_hash
        )
    children.service = build_service(owner)
    children.reference_service = build_reference_service(owner, grmd.spec.variants[0].name)
    children.pdb = build_pdb(owner)
    if pod_monitor:
        children.pod_monitor = build_pod_monitor(owner, settings.podmonitor_labels)
    return children
