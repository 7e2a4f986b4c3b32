"""Quality of compressed variants, pure: evaluation sets, statistics, measurements, recipes.

What the ``quantize`` and ``evaluate`` tools (:mod:`grm_operator.tools`) compute and what the
operator's gate reads: :func:`grm_operator.quality.stats.lower_bound` is the one function that
turns a measured agreement into the number compared with ``precision.minQuality``.
"""
