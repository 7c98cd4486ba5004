"""Progress lines (done/total, rate, ETA) for long non-training work: data builds, preparation.

Training loops use CLU's `periodic_actions.ReportProgress` instead; this is for loops over items.
"""

from __future__ import annotations

import time
from typing import Optional

from absl import logging


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Call `update(n)` as items finish; logs at most every `every_s` seconds and at the end."""

    def __init__(self, what: str, total: Optional[int] = None, unit: str = "items",
                 every_s: float = 5.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done = 0
        self.start = self.last = time.perf_counter()
        self._finished = False

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total and not self._finished
        if finished or now - self.last >= self.every_s:
            self._finished = self._finished or finished
            self.last = now
            logging.info("%s", self.line())

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        text = f"{self.what}: {self.done}"
        if self.total and self.done <= self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f"/{self.total} ({100 * self.done / self.total:.0f}%)"
            text += f", {rate:.1f} {self.unit}/s, ETA {_clock(eta) if rate > 0 else '?'}"
        else:
            text += f" {self.unit}, {rate:.1f} {self.unit}/s"
        return text
