"""Shared statistics: the gap share and the complexity model (a leaf: imports nothing from pillm)."""

from __future__ import annotations

import math


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


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
