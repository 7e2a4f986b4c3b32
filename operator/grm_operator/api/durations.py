"""Kubernetes-style durations ("500ms", "20s", "1m30s") as used in GRMDeployment fields.

The CRD stores durations as strings (like Kubernetes' own ``metav1.Duration``) so that manifests
stay readable; the models expose them parsed to seconds. The regular expression here is also the
CRD schema's ``pattern``, so the API server rejects a malformed duration before we ever see it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

# One or more <number><unit> groups, units as Go's time.ParseDuration accepts them (no µs/ns:
# nothing in a GRMDeployment is that short).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration string: ``parse_duration("1m30s") == 90.0``.

    Raises ``ValueError`` with the offending text when it is not a duration.
    """
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 20s, 1m30s, 2h)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string for ``seconds`` (``0.5 → "500ms"``, ``90 → "1m30s"``)."""
    if seconds < 0:
        raise ValueError("durations are never negative")
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def _validate(text: str) -> str:
    parse_duration(text)
    return text


# The pattern and length bound are given to the JSON schema directly: as a pydantic constraint
# the pattern would check first and replace _validate's message (which names valid examples).
DURATION_MAX_LENGTH = 32
Duration = Annotated[
    str,
    AfterValidator(_validate),
    Field(
        max_length=DURATION_MAX_LENGTH,
        json_schema_extra={"pattern": DURATION_PATTERN, "x-grm-duration": True},
    ),
]
"""A duration string field; read its value in seconds with :func:`parse_duration`."""
