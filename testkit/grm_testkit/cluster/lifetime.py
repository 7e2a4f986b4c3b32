"""Children that die with their parent: PR_SET_PDEATHSIG for the local cluster's processes.

Every process the test control plane, the supervisor and the real nodes start (etcd, the API
server, kube-proxy, Prometheus, containerd, the kubelet) gets a signal from the kernel when the
thread that started it dies, so a killed test run or cluster leaves nothing
behind. ``prctl`` is resolved here, in the parent, at import: between fork and exec the child
must not ``dlopen`` (another thread of the parent may have held the loader's lock at fork time).
"""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _load_prctl()

#: False where prctl cannot be found (not Linux): children then outlive a killed parent.
AVAILABLE = _PRCTL is not None


def die_with_parent() -> None:
    """``preexec_fn``: SIGTERM this child when its parent thread dies (it may clean up)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
