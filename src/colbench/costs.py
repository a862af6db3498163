"""Per-stage cost records (wall time, throughput, peak memory) that the report reads back."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colbench.atomic import write_json


def peak_rss_mb() -> float:
    """Peak resident memory so far, in MiB, of this process or of the largest process it ran and waited for
    (torchrun's training processes under train.distributed: ddp, each of them)."""
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def measure(stage: str, path: str | Path, unit: str) -> Iterator[dict[str, Any]]:
    """Time a stage's work and write ``{stage, wall_s, items, unit, items_per_s, peak_rss_mb}`` to ``path``.

    The block sets ``record["items"]`` (how many ``unit`` it processed) and may add extra keys.
    """
    record: dict[str, Any] = {"stage": stage, "unit": unit, "items": 0}
    start = time.perf_counter()
    yield record
    wall = time.perf_counter() - start
    record["wall_s"] = round(wall, 3)
    record["items_per_s"] = round(record["items"] / wall, 3) if wall > 0 else None
    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    write_json(path, record)
