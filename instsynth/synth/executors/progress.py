"""The executors' progress lines: one per committed unit, with a running rate."""

from __future__ import annotations

import time


class Progress:
    """'unit n/N committed' lines with a running rows/s (a running sum: O(1) per unit)."""

    def __init__(self, total: int, log, enabled: bool):
        self.total, self.log, self.enabled = total, log, enabled
        self.n = self.rows = 0
        self.t0 = time.time()

    def __call__(self, marker: dict) -> None:
        self.n += 1
        self.rows += marker["rows"]
        if self.enabled:
            rate = self.rows / max(time.time() - self.t0, 1e-9)
            self.log(f"  unit {self.n}/{self.total} committed ({marker['rows']} rows, {marker['failures']} failures, "
                     f"{rate:.2f} rows/s)")
