"""Progress lines for long conversions: done/total, rate, and the process's peak resident memory."""

from __future__ import annotations

import resource
import time
from typing import Callable


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class ProgressLog:
    """Counts steps and logs about every `every_s` seconds (and at the end)."""

    def __init__(self, total: int, what: str, log: Callable[[str], None], every_s: float = 5.0):
        self.total, self.what, self.log, self.every = total, what, log, every_s
        self.done = 0
        self.start = self.last = time.time()

    def step(self, _item: object = None) -> None:
        self.done += 1
        now = time.time()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            self.log(
                f"[convert] {self.done}/{self.total} {self.what} ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{now - self.start:.1f}s, peak RSS {peak_rss_gib():.2f} GiB"
            )
