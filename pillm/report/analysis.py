"""Analyses that sections and figures share: LAMBADA scores, generation samples, the complexity fits."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from .config import NOT_KEYS, OUTPUT_COLUMNS, PIL_METHODS
from .fmt import _finite, _natural_key, method_tex, tex_escape
from .results import Experiment


def _lambada_scores(e: Experiment) -> Experiment:
    """LAMBADA scores: ``acc``/``word_ppl``/``oov_rate`` columns of summary.csv, or the notebook's
    ``lambada.csv`` (``lambada_acc`` …), which then becomes the source of the numbers."""
    import pandas as pd

    names = {"lambada_acc": "acc", "lambada_word_ppl": "word_ppl", "lambada_oov_rate": "oov_rate"}
    if e.df is not None and "acc" in e.df.columns:
        return e
    if e.df is not None and "lambada_acc" in e.df.columns:
        return Experiment(e.name, e.profile, e.path, e.df.rename(columns=names), e.source, e.provenance)
    p = e.path / "lambada.csv"
    if p.is_file():
        df = pd.read_csv(p).rename(columns=names)
        if len(df) and "acc" in df.columns:
            return Experiment(e.name, e.profile, e.path, df, p, e.provenance)
    # scores recorded in each run's result.json ("lambada": {acc, word_ppl, oov_rate, ...})
    rows = [{"method": r.get("method"), "seed": r.get("seed"), "size": r.get("size"), "dataset": r.get("dataset"),
             **{k: (r["lambada"] or {}).get(k) for k in ("acc", "word_ppl", "oov_rate")}}
            for r in (e.runs() if e.source is not None else []) if isinstance(r.get("lambada"), dict)]
    if rows:
        return Experiment(e.name, e.profile, e.path, pd.DataFrame(rows), e.source, e.provenance)
    return e


def _samples(e: Experiment) -> list[dict] | None:
    """Normalise samples.json: a list of {method, prompt, text} or {method: [text | {prompt, text}]}."""
    data, _ = e.json("samples.json")
    if data is None:  # samples recorded in each run's result.json
        data = [{"method": r.get("method"), "run_seed": r.get("seed", 0), **s} for r in e.runs()
                for s in (r.get("samples") or []) if isinstance(s, dict)]
        if not data:
            return None
    out = []
    items = data.get("samples", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        for m, v in items.items():
            for s in (v if isinstance(v, list) else [v]):
                out.append({"method": m, **(s if isinstance(s, dict) else {"text": s})})
    elif isinstance(items, list):
        out = [s if isinstance(s, dict) else {"text": s} for s in items]
    res, seen = [], set()
    out.sort(key=lambda s: (_natural_key(s.get("method", "")), int(s.get("run_seed", 0) or 0), int(s.get("seed", 0) or 0)))
    for s in out:
        ident = (str(s.get("method", "")), str(s.get("prompt", "")))
        if ident in seen:  # one sample per (method, prompt): the lowest run seed and sample seed
            continue
        seen.add(ident)
        text = s.get("text") or s.get("sample") or s.get("completion") or s.get("generation")
        if not text:
            continue
        text, prompt = str(text)[:600], str(s.get("prompt", "") or "")
        if prompt and text.startswith(prompt):
            text = text[len(prompt):]
        res.append({"method": method_tex(s.get("method", "")), "prompt": tex_escape(prompt),
                    "text": tex_escape(text), "_key": (prompt, _natural_key(s.get("method", "")))})
    res.sort(key=lambda s: s.pop("_key"))
    return res[:16] or None


def _complexity_fit(e: Experiment) -> tuple[Any, Path | None]:
    """``fit.json`` (any JSON) or ``fit.csv`` (first row as a dict)."""
    data, path = e.json("fit.json")
    if data is not None:
        return data, path
    p = e.path / "fit.csv"
    if p.is_file():
        import pandas as pd

        df = pd.read_csv(p)
        if len(df):
            return {k: (float(v) if _finite(v) else v) for k, v in df.iloc[0].to_dict().items()}, p
    return None, None


def complexity_model_seconds(fit: dict, n, d):
    """Seconds per layer that the fitted cost model predicts for ``n`` tokens and ``d`` features: every term
    the fit has, streaming ``e + c·n + a·n·d²`` plus solve ``s + b·d³`` (a one-part fit has only ``a``, ``b``)."""
    t = {k: float(fit[k]) if _finite(fit.get(k)) else 0.0 for k in ("a", "b", "c", "e", "s")}
    return t["e"] + t["c"] * n + t["a"] * n * d ** 2 + t["s"] + t["b"] * d ** 3


def _complexity_solves(e: Experiment):
    p = e.path / "solves.csv"
    if not p.is_file():
        return None, None
    import pandas as pd

    df = pd.read_csv(p)
    if "layer" in df.columns:
        df = df[pd.to_numeric(df["layer"], errors="coerce").notna()]
    return (df, p) if len(df) else (None, None)


def _numeric_leaves(obj, prefix: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numeric_leaves(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and _finite(obj):
        yield prefix, float(obj)


def _complexity_x(df, fit) -> str | None:
    if isinstance(fit, dict) and isinstance(fit.get("x"), str) and fit["x"] in df.columns:
        return fit["x"]
    keys = [c for c in df.columns if c not in OUTPUT_COLUMNS and c not in NOT_KEYS]
    numeric = []
    for c in keys:
        try:
            v = df[c].astype(float)
        except (TypeError, ValueError):
            continue
        if v.nunique() > 1:
            numeric.append((v.nunique(), c))
    prefer = [c for _, c in numeric if c in ("tokens", "train_tokens", "n_tokens", "max_train_tokens", "width",
                                               "hidden", "n_features")]
    if prefer:
        return prefer[0]
    return max(numeric)[1] if numeric else None


def _powerlaw(xs, ys):
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    return my - b * mx, b


def _fits(df, x: str):
    """Power-law fits ``(log a, b)`` of the PIL phase time (PIL methods) and the baseline's AdamW time."""
    if "method" not in df.columns or "pil_s" not in df.columns or "train_s" not in df.columns:
        return None
    p = df[df["method"].isin(PIL_METHODS)]
    b = df[df["method"] == "baseline"]
    fp = _powerlaw(p[x].astype(float), p["pil_s"].astype(float))
    fb = _powerlaw(b[x].astype(float), b["train_s"].astype(float))
    return (fp, fb) if fp and fb else None


def _estimate_crossover(df, x: str) -> float | None:
    """x where the power-law fits of the PIL phase time and the baseline's AdamW time cross."""
    fits = _fits(df, x)
    if not fits:
        return None
    fp, fb = fits
    if abs(fp[1] - fb[1]) < 1e-9:
        return None
    lx = (fb[0] - fp[0]) / (fp[1] - fb[1])
    if not -50 < lx < 50:
        return None
    return math.exp(lx)
