"""Time windows over the examples: what a model trains on and what it is judged on.

The trainer and the evaluator compute the holdout the same way, from the same
data, so a candidate is always measured on events it never saw (time-based
holdout: the newest ``fraction`` of the covered time).
"""

from __future__ import annotations

from dataclasses import dataclass

from scalerec_adapters.store import WideColumnStore

from scalerec_storage import records as r


@dataclass(frozen=True)
class DataWindow:
    start_ms: int
    end_ms: int  # exclusive: training uses ts < end_ms; the holdout starts here
    holdout_end_ms: int
    examples: int

    def to_card(self) -> dict[str, int]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "holdout_end_ms": self.holdout_end_ms,
            "examples": self.examples,
        }


def holdout_cutoff(min_ts: int, max_ts: int, fraction: float) -> int:
    return max_ts - int((max_ts - min_ts) * fraction)


def data_window(store: WideColumnStore, holdout_fraction: float) -> DataWindow | None:
    """One pass over the examples' timestamps (cheap columns only would be better on HBase: see docs)."""
    lo, hi, n = None, None, 0
    for ex in r.scan_examples(store):
        n += 1
        lo = ex.ts_ms if lo is None else min(lo, ex.ts_ms)
        hi = ex.ts_ms if hi is None else max(hi, ex.ts_ms)
    if lo is None or hi is None:
        return None
    return DataWindow(lo, holdout_cutoff(lo, hi, holdout_fraction), hi + 1, n)
