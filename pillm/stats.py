"""Statistics shared by the experiments and the report: paired differences by seed with 95 % confidence
intervals, shares of a log-perplexity gap, and the cost model of the closed-form phase.

A leaf module: it imports nothing from :mod:`pillm`, so any layer may use it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided Student-t quantile for ``df`` degrees of freedom (``df`` ≥ 1)."""
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs at least two paired values (df >= 1)")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Paired:
    """Differences ``a − b`` over the seeds both have, their mean and a paired-t confidence interval."""

    seeds: tuple
    diffs: tuple
    mean: float
    lo: float
    hi: float
    level: float = 0.95

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def below_zero(self) -> bool:
        """``a`` is lower than ``b`` with the interval excluding zero (for perplexity: ``a`` is better)."""
        return self.hi < 0

    @property
    def above_zero(self) -> bool:
        return self.lo > 0

    @property
    def includes_zero(self) -> bool:
        return self.lo <= 0 <= self.hi


def paired(a: dict, b: dict, level: float = 0.95) -> Paired:
    """Pair ``a`` and ``b`` (``{seed: value}``) by seed; the interval is the paired t interval of the mean
    difference ``a − b``. Raises ValueError when fewer than two seeds are shared."""
    seeds = tuple(sorted(set(a) & set(b)))
    if len(seeds) < 2:
        raise ValueError(f"paired comparison needs at least two shared seeds; got {list(seeds)} "
                         f"(a has {sorted(a)}, b has {sorted(b)})")
    d = tuple(float(a[s]) - float(b[s]) for s in seeds)
    m = statistics.fmean(d)
    half = t_quantile(len(d) - 1, level) * statistics.stdev(d) / math.sqrt(len(d))
    return Paired(seeds, d, m, m - half, m + half, level)


def ratio_ci(a: dict, b: dict, level: float = 0.95) -> tuple[float, float, float]:
    """The ratio ``a / b`` as the exponential of the paired interval of ``ln a − ln b``:
    ``(ratio, lo, hi)``."""
    p = paired({s: math.log(v) for s, v in a.items()}, {s: math.log(v) for s, v in b.items()}, level)
    return math.exp(p.mean), math.exp(p.lo), math.exp(p.hi)


def log_gap_share(worse: float, better: float, x: float) -> float | None:
    """The share, in percent, of the log-perplexity gap from ``worse`` to ``better`` that perplexity
    ``x`` closes: ``100·(ln worse − ln x) / (ln worse − ln better)``; None when there is no gap."""
    lw, lb = math.log(worse), math.log(better)
    return None if abs(lw - lb) <= 1e-12 else 100 * (lw - math.log(x)) / (lw - lb)


def complexity_model_seconds(fit: dict, n, d):
    """Seconds per layer that the fitted cost model predicts for ``n`` tokens and ``d`` features: every term
    the fit has, streaming ``e + c·n + a·n·d²`` plus solve ``s + b·d³`` (a one-part fit has only ``a``, ``b``)."""
    t = {k: float(fit[k]) if _finite(fit.get(k)) else 0.0 for k in ("a", "b", "c", "e", "s")}
    return t["e"] + t["c"] * n + t["a"] * n * d ** 2 + t["s"] + t["b"] * d ** 3


def monotone(values, decreasing: bool = True) -> bool:
    """Every step of ``values`` moves the same way (strictly)."""
    v = list(values)
    return all((b < a) if decreasing else (b > a) for a, b in zip(v, v[1:]))


__all__ = ["Paired", "complexity_model_seconds", "log_gap_share", "monotone", "paired", "ratio_ci", "t_quantile"]
