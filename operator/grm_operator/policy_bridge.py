"""Where the autoscaler reaches the policy: re-exports :mod:`grm_operator.policy.adapter`."""

from grm_operator.policy.adapter import PodCounts, decide_intent

__all__ = ["PodCounts", "decide_intent"]
