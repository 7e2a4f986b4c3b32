"""The worker pod's layout: the port and paths that the worker config names and the Deployment
provides, and the user the worker runs as.

The worker images (``images/worker/Dockerfile``, ``images/worker-cpu/Dockerfile``) run as the
same user; ``tests/unit/helm/test_chart_images.py`` checks that they agree.
"""

from __future__ import annotations

HTTP_PORT = 8000
# The worker's admin API (sample budget, sim faults): a container port the Service never lists.
ADMIN_PORT = 8001
CONFIG_DIR = "/etc/grm"
CONFIG_FILE = "worker.json"
MODEL_CACHE_DIR = "/models"
WEIGHTS_DIR = "/mnt/weights"
RUN_AS_UID = 1000
