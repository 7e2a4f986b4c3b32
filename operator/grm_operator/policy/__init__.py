"""The pure scaling-and-precision policy (no I/O, no clock): ``decide(observation, state, spec, now)``.

:mod:`.capacity` holds operating points and per-replica capacity from the performance model,
:mod:`.decide` the algorithm, :mod:`.types` its inputs, memory and output, :mod:`.signals` the
metrics it reads, and :mod:`.periodicity` whether the load repeats (an RL training loop).
"""

from grm_operator.policy.decide import decide
from grm_operator.policy.types import Decision, Observation, PolicyState, Rule

__all__ = ["Decision", "Observation", "PolicyState", "Rule", "decide"]
