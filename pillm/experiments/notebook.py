"""Small analysis and plotting helpers for the notebooks (tables rounded for display, seaborn plots)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..stats import complexity_model_seconds
from .grid import run_columns
from .summaries import load_result

if TYPE_CHECKING:
    import numpy as np


def mean_std(df: pd.DataFrame, by, cols) -> pd.DataFrame:
    """Mean and std over seeds: columns ``<col>_mean``, ``<col>_std`` and ``n`` per group."""
    by, cols = ([by] if isinstance(by, str) else list(by)), ([cols] if isinstance(cols, str) else list(cols))
    g = df.groupby(by, sort=False, dropna=False)
    out = g[cols].agg(["mean", "std"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    out["n"] = g.size()
    return out.reset_index()


def _records(experiment: str, df: pd.DataFrame, profile: str, results_root, field: str, required: bool = True):
    """``(run columns, record)`` for every record in ``result[field]`` of every run in ``df``; a run without
    the field is an error unless it is not ``required``."""
    for rec in df[run_columns(df)].to_dict("records"):
        result = load_result(experiment, rec["name"], profile, results_root)
        for r in result[field] if required else result.get(field, []):
            yield rec, r


def curves(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Validation curves (``result['curve']``) of every run in ``df``, tidy, with ``df``'s columns and
    ``concurrent_runs``, the runs that shared the machine (wall-clock compares only where it is 1: alone)."""
    rows = []
    for rec in df[run_columns(df)].to_dict("records"):
        result = load_result(experiment, rec["name"], profile, results_root)
        shared = {"concurrent_runs": result.get("environment", {}).get("concurrent_runs", 1)}
        rows += [rec | shared | point for point in result["curve"]]
    return pd.DataFrame(rows)


def time_to_quality(curve: pd.DataFrame, levels, by=("variant", "seed")) -> pd.DataFrame:
    """Wall-clock seconds until each run's validation perplexity first reaches each of ``levels`` (NaN where
    it never does): one row per run and level."""
    rows = []
    for key, g in curve.sort_values("wall_s").groupby(list(by), sort=False):
        for level in levels:
            hit = g.loc[g["valid_ppl"] <= level, "wall_s"]
            rows.append(dict(zip(by, key)) | {"level": level, "seconds": hit.iloc[0] if len(hit) else float("nan")})
    return pd.DataFrame(rows)


def solves(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Per-layer solver records (κ, R², fallback, λ, η, tokens, seconds) of every run in ``df``."""
    keep = ("phase", "layer", "sweep", "solver", "fallback", "reason", "cond", "r2", "lam", "lam_abs", "lam_at_edge",
            "eta", "eta_at_edge", "tokens", "n_features", "seconds", "seconds_total")
    return pd.DataFrame([rec | {k: s.get(k) for k in keep if k in s}
                         for rec, s in _records(experiment, df, profile, results_root, "solves")])


def lambda_search(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """The λ path of every layer of the λ-path runs in ``df`` (pillm.studies.lampath): for each λ of the grid, the
    lowest validation-search loss over η, and whether the layer kept that λ."""
    rows = []
    for rec, s in _records(experiment, df, profile, results_root, "solves"):
        for lam in dict.fromkeys(r["lam"] for r in s.get("search", []) if "lam" in r):
            loss = min(r["valid_loss"] for r in s["search"] if r["lam"] == lam)
            rows.append(rec | {"layer": s["layer"], "lam": lam, "search_loss": loss, "chosen": lam == s["lam"]})
    return pd.DataFrame(rows)


def _lstsq(columns: list, y) -> tuple[list[float], float, "np.ndarray"]:
    """Least squares ``y ≈ Σ coef·column``: coefficients, R² and the fitted values."""
    import numpy as np

    x = np.stack([np.asarray(c, dtype=float) for c in columns], axis=1)
    y = np.asarray(y, dtype=float)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fit = x @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - fit) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return [float(v) for v in coef], r2, fit


def fit_complexity(df: pd.DataFrame, n: str = "tokens", d: str = "n_features", solve: str = "seconds",
                   total: str = "seconds_total") -> dict:
    """Cost model of one layer's closed-form phase, fitted on its two measured parts.

    ``total`` is the whole phase of a layer and ``solve`` the ridge solve alone, so ``total − solve``
    is the streaming pass: the forward pass up to the layer, its features and the ``HᵀH`` update.
    Per ``(N, D)`` cell the median over layers is fitted (it drops one-off costs such as the first
    solve's library initialisation, and averages out the depth of the forward pass):

    - streaming ≈ ``e + c·N + a·N·D²`` (``c·N``: the part of the pass that does not grow with D),
    - solve ≈ ``s + b·D³``.

    Returns ``a, b, c, e, s``, ``r2_stream``, ``r2_solve``, ``r2`` (the smaller of the two) and
    ``fitted`` (the model's total per row of ``df``). The accumulation ``a·N·D²`` exceeds the solve
    ``b·D³`` for ``N > (b/a)·D``, and the D-independent part of the pass ``c·N`` for ``D > √(c/a)``.
    """
    import numpy as np

    cells = (df.assign(_stream=df[total] - df[solve]).groupby([n, d])[["_stream", solve]].median().reset_index())
    nn, dd = cells[n].to_numpy(float), cells[d].to_numpy(float)
    (e, c, a), r2_stream, _ = _lstsq([np.ones_like(nn), nn, nn * dd ** 2], cells["_stream"])
    (s, b), r2_solve, _ = _lstsq([np.ones_like(dd), dd ** 3], cells[solve])
    terms = {"a": a, "b": b, "c": c, "e": e, "s": s}
    fitted = complexity_model_seconds(terms, df[n].to_numpy(float), df[d].to_numpy(float))
    return {**terms, "r2_stream": r2_stream, "r2_solve": r2_solve, "r2": min(r2_stream, r2_solve),
            "cells": len(cells), "fitted": fitted}


def samples(experiment: str, df: pd.DataFrame, profile: str, results_root=None) -> pd.DataFrame:
    """Generation samples (``RunSpec(samples=…)``) of every run in ``df``, one row per prompt × seed."""
    return pd.DataFrame([rec | {"sample_" + k if k in rec else k: v for k, v in s.items()}
                         for rec, s in _records(experiment, df, profile, results_root, "samples", required=False)])


def setup_notebook(threads: int | None = None) -> None:
    """Notebook defaults: CPU threads (``None`` keeps torch's), pandas display, seaborn theme."""
    import seaborn as sns
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    pd.set_option("display.precision", 4)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 40)
    sns.set_theme(context="notebook", style="whitegrid")


def summary_table(df: pd.DataFrame, by, metrics=("test_ppl", "test_acc"), first=()) -> pd.DataFrame:
    """One row per group of ``by``: the ``first`` columns (constant within a group, e.g. parameter
    counts), then ``<metric>_mean`` / ``<metric>_std`` over seeds and ``n``."""
    by = [by] if isinstance(by, str) else list(by)
    stats = mean_std(df, by, list(metrics))
    if not first:
        return stats
    return df.groupby(by, sort=False, dropna=False)[list(first)].first().reset_index().merge(stats, on=by)


def _round_col(name, s: pd.Series, digits: int | None) -> pd.Series:
    if not pd.api.types.is_float_dtype(s):
        return s
    if digits is not None:
        return s.round(digits)
    name = str(name)
    if "cond" in name:  # 4 significant digits
        import numpy as np

        mag = np.floor(np.log10(np.abs(s.where(s != 0, 1.0)).astype(float)))
        return (s / 10.0 ** (mag - 3)).round() * 10.0 ** (mag - 3)
    if "ppl" in name or name.endswith(("_s", "_s_mean", "_s_std")):
        return s.round(2)
    if any(k in name for k in ("acc", "rate", "r2")):
        return s.round(4)
    return s  # parameters (λ, η, …) are shown exactly


def rounded(df: pd.DataFrame, digits: int | None = None, *, drop_empty: bool = True) -> pd.DataFrame:
    """For display, so that printed numbers are reproducible: perplexities and seconds 2 decimals,
    accuracies/rates/R² 4, condition numbers 4 significant digits, other columns as they are
    (``digits``: every float column to that many decimals). Drops all-NaN columns (the std of a
    single seed) unless ``drop_empty=False``."""
    if df.empty:
        return df
    out = df.apply(lambda s: _round_col(s.name, s, digits))
    return out.dropna(axis=1, how="all") if drop_empty else out


def barplot(df: pd.DataFrame, x: str, y: str, hue: str | None = None, *, log: bool = False, title: str = "",
            ax=None, **kw):
    """Bar plot (mean ± sd over seeds); returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = (plt.subplots(figsize=(7, 3.5)) if ax is None else (ax.figure, ax))
    sns.barplot(data=df, x=x, y=y, hue=hue, errorbar="sd", ax=ax, **kw)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def lineplot(df: pd.DataFrame, x: str, y, hue: str | None = None, *, logx: bool = False, logy: bool = False,
             title: str = "", **kw):
    """One panel per ``y`` (a name or a list), mean ± sd over seeds; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    ys = [y] if isinstance(y, str) else list(y)
    fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys), 3.5), squeeze=False)
    for ax, col in zip(axes[0], ys):
        sns.lineplot(data=df, x=x, y=col, hue=hue, marker="o", errorbar="sd", ax=ax, **kw)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(table: pd.DataFrame, *, title: str = "", fmt: str = ".1f", **kw):
    """Annotated heatmap of a pivot table; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.6 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.5))
    sns.heatmap(table, annot=True, fmt=fmt, cmap="viridis_r", ax=ax, **kw)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(curve_df: pd.DataFrame, hue: str = "method", y: str = "valid_ppl"):
    """Validation ``y`` against epoch and against wall-clock seconds; returns the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, x in zip(axes, ("epoch", "wall_s")):
        sns.lineplot(data=curve_df, x=x, y=y, hue=hue, marker="o", errorbar="sd", ax=ax)
        ax.set_yscale("log")
    axes[1].set_xlabel("wall-clock (s)")
    fig.tight_layout()
    return fig
