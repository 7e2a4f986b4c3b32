"""grm-elastic operator: elastic, SLO-driven serving of generative reward models on Kubernetes.

Layers import only downward: ``api`` (models, CRD) and ``policy`` are pure; ``builders`` turn a
GRMDeployment into child manifests; ``metrics`` reads observations; ``handlers`` wire kopf to it all.
"""

__version__ = "0.1.0"
