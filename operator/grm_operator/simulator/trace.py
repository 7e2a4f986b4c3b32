"""Request traces: the Azure LLM-inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``).

Each row becomes one GRM score request: its prompt is ContextTokens long and each of its k
critiques GeneratedTokens long. Times are seconds from the first row; ``rate_scale`` multiplies
the arrival rate (divides the times), so 2.0 replays the hour in 30 minutes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Trace:
    """Arrival times (s, from 0, sorted), prompt and output tokens per request."""

    times: npt.NDArray[np.float64]
    prompt: npt.NDArray[np.int64]
    output: npt.NDArray[np.int64]
    name: str = "trace"

    def __len__(self) -> int:
        return int(self.times.size)

    @property
    def duration_s(self) -> float:
        """Seconds from the first to the last arrival."""
        return float(self.times[-1]) if len(self) else 0.0

    def scaled(self, rate_scale: float) -> Trace:
        """The same requests arriving ``rate_scale``× as fast."""
        if rate_scale <= 0:
            raise ValueError(f"rate scale must be > 0, got {rate_scale}")
        return Trace(self.times / rate_scale, self.prompt, self.output, self.name)


def _seconds(stamp: str) -> float:
    # Azure's stamps carry 100-ns digits (7 decimals); datetime takes at most 6.
    head, _, frac = stamp.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_trace(path: str | Path, limit: int | None = None) -> Trace:
    """Read an Azure trace CSV (optionally only its first ``limit`` rows)."""
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            times.append(_seconds(row["TIMESTAMP"]))
            prompt.append(max(1, int(row["ContextTokens"])))
            output.append(max(1, int(row["GeneratedTokens"])))
            if limit is not None and len(times) >= limit:
                break
    if not times:
        raise ValueError(f"{path}: no rows")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return Trace(t, np.asarray(prompt, np.int64)[order], np.asarray(output, np.int64)[order], Path(path).stem)
