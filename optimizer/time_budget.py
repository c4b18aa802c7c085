"""A whole search's wall time (`search.time_budget_minutes`, `costopt search --minutes`).

The budget covers the baseline, the trials and the held-out confirmation of one `costopt search`.
What can be cut is cut in this order, and each cut is said (`cuts`): trials stop starting when the
next one (this study's median trial so far) and the confirmation (`reserve`, an estimate from the
trials' own stage timings) would not both fit; the confirmation's timing then drops the other serving
settings when their rounds would not fit, and stops its rounds when the next would not. The held-out
quality test and the width check are never cut: they are what makes the choice safe to deploy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class TimeBudget:
    seconds: float
    # the seconds the confirmation is expected to take, given the study so far (set by the caller that
    # confirms: the search loop sits below the confirmation and cannot ask it)
    reserve: Callable[[Any], float] = lambda study: 0.0
    # of that, what the confirmation's timing needs after its held-out tests (the rounds it may not cut)
    timing: Callable[[Any], float] = lambda study: 0.0
    started: float = field(default_factory=time.monotonic)
    cuts: list[str] = field(default_factory=list)

    @classmethod
    def minutes(
        cls, minutes: float | None, reserve: Callable[[Any], float] | None = None, timing: Callable[[Any], float] | None = None
    ) -> TimeBudget | None:
        if minutes is None:
            return None
        out = cls(60 * minutes)
        out.reserve, out.timing = reserve or out.reserve, timing or out.timing
        return out

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def cut(self, what: str) -> None:
        """Record (and log) something left out to stay within the budget."""
        self.cuts.append(what)
        log.warning("time budget: %s", what)

    def text(self) -> str:
        """One line: the budget, the time used, and what was cut for it."""
        head = f"time budget {self.seconds / 60:.1f} min, used {self.elapsed() / 60:.1f} min"
        return head + (f"; cut: {'; '.join(self.cuts)}" if self.cuts else "; nothing cut")

    def as_dict(self) -> dict[str, Any]:
        return {"minutes": self.seconds / 60, "used_minutes": round(self.elapsed() / 60, 2), "cuts": list(self.cuts)}
