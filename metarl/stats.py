"""Summary statistics reported with every metarl number."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 97.5% quantiles of Student's t for small samples; normal (1.96) beyond 30 degrees of freedom.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


@dataclass(frozen=True)
class MeanCI:
    """Mean with the half-width of its 95% confidence interval (t-interval over ``n`` values)."""

    mean: float
    ci95: float
    n: int
    std: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.ci95:.3f}"

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n, "std": self.std}


def mean_ci95(values: Sequence[float] | np.ndarray) -> MeanCI:
    """Mean ± t_{0.975, n-1} · s / √n over independent values (tasks or episodes).

    ``s`` is the sample standard deviation (ddof=1). With one value the interval is undefined
    and reported as NaN rather than 0, so nobody mistakes it for certainty.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value, got an empty sequence")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci95 got non-finite values: {x[~np.isfinite(x)][:5].tolist()}")
    n = int(x.size)
    if n == 1:
        return MeanCI(float(x[0]), math.nan, 1, math.nan)
    std = float(x.std(ddof=1))
    t = _T975.get(n - 1, 1.96)
    return MeanCI(float(x.mean()), t * std / math.sqrt(n), n, std)
