"""Table specifications and the generic mean ± std table over seeds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .config import TARGET_TEX
from .fmt import (
    _finite, _natural_key, dataset_tex, fmt_count, fmt_pct, fmt_plain, fmt_pow10, fmt_ppl, fmt_sci, fmt_seconds, method_tex,
    tex_escape, variant_tex,
)
from .results import aggregate, concurrency, dependent_keys, Experiment, varying


#: Wall-clock columns: ranked (bold) only when every run was timed alone.
TIME_COLUMNS = {"train_s", "pil_s", "total_s", "adapt_s"}


@dataclass
class Col:
    key: str  # column of the aggregate
    header: str
    fmt: Callable[[float], str] = fmt_ppl
    better: str | None = None  # "lower" / "higher" → best in bold
    std: bool = True
    zero_dash: bool = False  # print "--" for an exact zero (e.g. no closed-form phase)


@dataclass
class TableSpec:
    name: str
    caption: str
    label: str
    header: list[str]
    rows: list[list[str]]
    blocks: list[tuple[str, int]] = field(default_factory=list)  # (block title, first row index)
    align: str = ""
    note: str = ""
    sources: list = field(default_factory=list)
    star: bool = False
    metrics: list[str] = field(default_factory=list)  # the metric columns' keys (generic_table), after the keys

    @property
    def ncols(self) -> int:
        return len(self.header)

    def body(self) -> list[tuple[str, Any]]:
        """``("block", title)`` and ``("row", cells)`` items in order (for the template)."""
        starts = {i: title for title, i in self.blocks}
        out = []
        for i, row in enumerate(self.rows):
            if i in starts:
                out.append(("block", starts[i]))
            out.append(("row", row))
        return out


def metric_cells(rows, cols: list[Col]) -> list[list[str]]:
    """Formatted metric cells (mean, ± std when several seeds) with the best mean in bold."""
    best = {}
    for c in cols:
        vals = [r.get(c.key) for r in rows if _finite(r.get(c.key))]
        if c.better and len(vals) > 1:
            best[c.key] = min(vals) if c.better == "lower" else max(vals)
    out = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c.key)
            if not _finite(v) or (c.zero_dash and float(v) == 0):
                cells.append("--")
                continue
            s = c.fmt(float(v))
            if c.key in best and float(v) == best[c.key]:
                s = r"\textbf{" + s + "}"
            sd = r.get(c.key + "_std")
            if c.std and _finite(sd) and r.get("n", 1) > 1:
                s += r"{\scriptsize\,$\pm$\," + c.fmt(float(sd)) + "}"
            cells.append(s)
        out.append(cells)
    return out


def params_trained(r) -> float:
    """Parameters updated by an optimizer: none for a run without optimizer steps."""
    steps = r.get("optimizer_steps")
    if _finite(steps) and float(steps) == 0:
        return 0.0
    parts = ["params_embedding", "params_attention", "params_norm", "params_ffn_trainable"]
    vals = [r.get(p) for p in parts]
    return float(sum(float(v) for v in vals if _finite(v))) if any(_finite(v) for v in vals) else math.nan


def params_solved(r) -> float:
    vals = [r.get(p) for p in ("params_ffn_solved", "params_head_solved")]
    return float(sum(float(v) for v in vals if _finite(v))) if any(_finite(v) for v in vals) else math.nan


def _epochs_text(v: Any) -> str:
    """``5 epochs``, ``1 epoch``."""
    n = int(float(v))
    return f"{n} epoch" + ("" if n == 1 else "s")


def _searched(result: dict) -> list[dict]:
    """A run's solves whose step size η was searched on validation (local/global/next-embedding targets)."""
    return [s for s in result.get("solves", []) if s.get("search") and "eta" in s]


def _eta_at_top(solve: dict) -> bool:
    """Whether a searched solve chose the grid's largest η: the grid, not the data, limited the step."""
    return bool(solve.get("eta_at_edge")) and solve["eta"] >= max(x["eta"] for x in solve["search"])


def _records(agg) -> list[dict]:
    recs = agg.to_dict("records")
    for r in recs:
        r["params_trained"] = params_trained(r)
        r["params_solved"] = params_solved(r)
    return recs


def key_cells(r: dict, keys: list[str]) -> list[str]:
    out = []
    for k in keys:
        v = r[k]
        if k == "method":
            out.append(method_tex(v))
        elif k == "dataset":
            out.append(dataset_tex(v))
        elif k == "target":
            out.append(TARGET_TEX.get(str(v), tex_escape(v)))
        elif k == "lam":
            out.append(fmt_pow10(float(v)) if _finite(v) else fmt_plain(v))
        elif k == "variant" and isinstance(v, str):
            out.append(variant_tex(v))  # registry labels ("attn_then_pil+global") in words; others as they are
        else:
            out.append(fmt_plain(v))
    return out


KEY_HEADERS = {"method": "Method", "dataset": "Dataset", "size": "Size", "lam": r"$\lambda$", "epochs": "Epochs",
               "max_train_tokens": "Train tokens", "bipil": "Bi-PIL", "lambada_n": "Passages",
               "expansion": "Expansion", "fusion": "Fusion", "variant": "Variant", "target": "Target",
               "domain": "New domain", "how": "Adapted by", "heads": "Heads"}

PPL_COLS = [Col("test_ppl", r"Test PPL $\downarrow$", fmt_ppl, "lower"),
            Col("valid_ppl", r"Valid PPL $\downarrow$", fmt_ppl, "lower")]
ACC_COL = Col("test_acc", r"Test acc.\ (\%) $\uparrow$", lambda x: fmt_pct(100 * x), "higher")
COND_COL = Col("max_cond", r"max $\kappa$", fmt_sci, None, std=False)
PIL_S_COL = Col("pil_s", "PIL (s)", fmt_seconds, None, zero_dash=True)


def _rf_features(e: Experiment) -> int | None:
    """Random features per layer of the benchmark's ``rf_adamw`` runs: its frozen random first layers
    hold ``n_layer · n_embd · D`` weights."""
    for r in e.runs():
        if r.get("method") == "rf_adamw":
            mc, frozen = r.get("model_config") or {}, (r.get("params") or {}).get("ffn_frozen_random")
            if frozen and mc.get("n_layer") and mc.get("n_embd"):
                return int(frozen) // (int(mc["n_layer"]) * int(mc["n_embd"]))
    return None


def generic_table(e: Experiment, name: str, caption: str, main_keys: list[str], cols: list[Col],
                  label: str | None = None, df=None, hide: tuple[str, ...] = ("bipil",),
                  blocks_by: tuple[str, ...] = ("dataset", "size", "epochs")) -> TableSpec:
    """One row per parameter combination; constant keys go into the caption, blocks by ``blocks_by``
    (dataset, size and epoch budget); columns in ``hide`` are not shown when they vary with the main keys."""
    agg, keys = e.agg() if df is None else aggregate(df)
    cols = [c for c in cols if c.key in agg.columns or c.key.startswith("params_")]
    shared, note = concurrency(e), ""
    if shared > 1 and any(c.key in TIME_COLUMNS for c in cols):  # contended timings: shown, never ranked
        cols = [replace(c, better=None, header=c.header.replace(r" $\downarrow$", "")) if c.key in TIME_COLUMNS
                else c for c in cols]  # nor does its header say which way is better
        note = (f"Times were measured with up to {shared} runs sharing the machine's GPUs: they are indicative "
                "only, and no time column is ranked.")
        if "concurrent_runs_max" in agg.columns and agg["concurrent_runs_max"].nunique() > 1:
            # rows timed under different contention: say how shared each row was, so none is read as faster
            cols = cols + [Col("concurrent_runs_max", "Shared", lambda v: fmt_count(v) if _finite(v) else "--", None)]
            note += (" Shared: the most runs that shared the GPUs while a run of the row was timed; rows with "
                     "different values are not comparable in time.")
    vary = varying(agg, keys)
    block_keys = [k for k in blocks_by if k in vary and k not in main_keys]
    dep = dependent_keys(agg, main_keys, keys)
    show = [k for k in main_keys if k in keys] + [k for k in vary if k not in main_keys and k not in block_keys
                                                  and not (k in hide and k in dep)]
    const = [k for k in keys if k not in vary and k not in main_keys]
    recs = _records(agg)
    if block_keys:
        def bkey_sort(r):
            out = []
            for k in block_keys:
                nk = _natural_key(r[k])
                out.append((nk[0], -nk[1], nk[2]) if k == "epochs" and nk[0] == 0 else nk)
            return tuple(out)
        recs.sort(key=bkey_sort)
    rows, blocks = [], []
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(tuple(r[k] for k in block_keys), []).append(r)
    for bkey, grecs in groups.items():
        if block_keys:
            parts = [(c if k in ("dataset", "size") else f"{KEY_HEADERS.get(k, tex_escape(k)).lower()}: {c}")
                     for k, c in zip(block_keys, key_cells(dict(zip(block_keys, bkey)), block_keys))]
            blocks.append((", ".join(parts), len(rows)))
        for r, cells in zip(grecs, metric_cells(grecs, cols)):
            rows.append(key_cells(r, show) + cells)
    consts = [f"{KEY_HEADERS.get(k, tex_escape(k))}: {key_cells(recs[0], [k])[0]}" for k in const
              if str(recs[0][k]) != ""]
    seeds = sorted({int(r["n"]) for r in recs})
    cap = caption.rstrip(".") + "."
    if consts:
        cap += " " + "; ".join(consts) + "."
    several = max(seeds) > 1
    pm = r" $\pm$ std" if several else ""
    span = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}--{seeds[-1]}"
    cap += f" Mean{pm} over {span} seed{'s' if several else ''} per row."
    header = [KEY_HEADERS.get(k, tex_escape(k)) for k in show] + [c.header for c in cols]
    return TableSpec(name=name, caption=cap, label=label or f"tab:{name}", header=header, rows=rows,
                     blocks=blocks, align="l" * len(show) + "r" * len(cols), note=note, sources=[e],
                     metrics=[c.key for c in cols])
