"""The paper's tables: mean ± 95 % interval half-width over seeds, paired differences where a row has a
reference. Each table names the notebook and results file that made it."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .. import stats
from .config import BENCH, BENCH_2GPU, BEST_HYBRID, METHOD_ORDER, METHOD_TEX, VARIANT_TEX
from .files import sha256_short
from .numbers import fmt, fmt_paired
from .results import FIT_RUNS, NotRun, Results, ffn_learned, layer_r2, mean, series


@dataclass
class Table:
    name: str
    title: str
    caption: str
    data: str  # results file, relative to the profile (or bench/...)
    header: list
    rows: list = field(default_factory=list)  # lists of cells, or a string: a block heading
    align: str = ""
    notebook: str = ""
    also: list = field(default_factory=list)  # further experiments whose results the table shows

    def __post_init__(self):
        self.align = self.align or "l" + "r" * (len(self.header) - 1)


def interval(values) -> tuple[float, float]:
    """The mean and the half-width of its 95 % t interval (0 for one value)."""
    v = [float(x) for x in values]
    h = stats.t_quantile(len(v) - 1) * statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return statistics.fmean(v), h


def ci(values, digits: int | None = None) -> str:
    """``mean ± half-width`` of the 95 % t interval of the mean (the mean alone for one value)."""
    v = list(values)
    m, h = interval(v)
    digits = digits if digits is not None else 0 if abs(m) >= 1000 else 1
    return f"{_num(m, digits)} $\\pm$ {_num(h, digits)}" if len(v) > 1 else f"{m:.{digits}f}"


def _num(x: float, digits: int) -> str:
    s = f"{x:,.{digits}f}".replace(",", r"\,")
    return f"${s}$" if s.startswith("-") else s


def _tex(s) -> str:
    s = str(s).translate(str.maketrans({"\\": " ", "~": " ", "^": " ", "{": None, "}": None, "$": None, "#": None}))
    return s.replace("_", r"\_").replace("&", r"\&").replace("%", r"\%").replace("->", r"$\rightarrow$")


def main_table(res: Results) -> Table:
    t = Table("main", "Main results", "Test perplexity on WikiText-2 (small model, 10 epochs; mean $\\pm$ 95\\,\\% "
              "interval over seeds). $\\Delta$: paired difference from attention only, by seed, with its 95\\,\\% "
              "interval. FFN weights: learned by AdamW or solved in closed form, in millions. Gap closed: share of "
              "the log-perplexity gap between attention only and the baseline.",
              "benchmark/summary.csv", ["Model", "FFN learned by", "FFN weights", "Test PPL",
                                        r"$\Delta$ vs.\ attention only", r"Gap closed (\%)"])
    how = {"baseline": "AdamW", "attn_only": "(no FFN)", "lora": "AdamW (rank 8)", "rf_adamw": "AdamW readout"}
    ref = series(res, "attn_only")
    means = {k: mean(res, k) for k in ("attn_only", "baseline")}
    for key in METHOD_ORDER + ("hybrid",):
        s = series(res, key)
        name = METHOD_TEX[key] if key != "hybrid" else r"attention$\rightarrow$PIL, global, 4 sweeps"
        delta = "---" if key in ("attn_only", "pil_pure") else fmt_paired(stats.paired(s, ref))
        share = stats.log_gap_share(means["attn_only"], means["baseline"], mean(res, key))
        t.rows.append([name, how.get(key, "closed form"), _num(ffn_learned(res, key) / 1e6, 2), ci(s.values()), delta,
                       _num(share, 0) if share > -1000 else "---"])
    return t


def ablations_table(res: Results) -> Table:
    t = Table("ablations", "Ablations", "Ablations of the closed-form FFN (test perplexity, mean $\\pm$ 95\\,\\% "
              "interval; $\\Delta$: paired difference from the block's first row). Bi-PIL, $\\lambda$ and width: "
              r"PIL$\rightarrow$attention; targets: both orders.", "ablation_bipil/summary.csv",
              ["Setting", "Features", "Test PPL", r"$\Delta$ vs.\ first row"],
              also=["ablation_lambda/summary.csv", "ablation_expansion/summary.csv", "training_strategy/summary.csv"])

    def block(title, rel, col, values, label, where=None):
        t.rows.append(title)
        first = None
        for v in values:
            w = dict(where or {}, **{col: v})
            s = res.seeds(rel, **w)
            feats = res.rows(rel, **w)["n_features"].iloc[0]
            first = first or s
            d = "---" if s is first else fmt_paired(stats.paired(s, first))
            t.rows.append([label(v), fmt(float(feats), "int"), ci(s.values()), d])

    block("Bi-PIL against one projection", "ablation_bipil/summary.csv", "variant",
          ["PIL, 2x expansion", "PIL, same expansion", "Bi-PIL (concat)"],
          {"PIL, 2x expansion": "one projection, $8\\times$", "PIL, same expansion": "one projection, $4\\times$",
           "Bi-PIL (concat)": "Bi-PIL, two $4\\times$ projections"}.get)
    block(r"Relative ridge $\lambda$", "ablation_lambda/summary.csv", "lam", [1e-9, 1e-7, 1e-5, 1e-3, 0.1],
          lambda v: f"$\\lambda = $ {fmt(v, 'sci')}")
    block("Random-feature width", "ablation_expansion/summary.csv", "expansion", [1, 2, 4, 8],
          lambda v: f"expansion ${v}\\times$")
    for order in ("attn_then_pil", "pil_then_attn"):
        block(f"Targets, {METHOD_TEX[order]}", "training_strategy/summary.csv", "target",
              ["local", "global", "next_embedding", "zero"], lambda v: _tex(v).replace("\\_", "-"),
              where={"method": order})
    return t


def grouped(res: Results, name: str, title: str, caption: str, rel: str, by: list, metrics: dict, order) -> Table:
    """One row per combination of ``by`` (mean ± interval of each metric over seeds)."""
    df = res.rows(rel).copy()
    df[by] = df[by].astype(object).where(df[by].notna(), "---").astype(str)
    heads = {"n_features": "Features", "lr": "Learning rate", "lam": r"$\lambda$", "how": "Adapted by"}
    t = Table(name, title, caption, rel, [heads.get(b, _tex(b).replace("\\_", " ").capitalize()) for b in by]
              + list(metrics.values()))
    groups = list(df.groupby(by, sort=False))  # in order of first appearance, then by ``order``'s first column
    if order:
        groups.sort(key=lambda g: order.index(g[0][0]) if g[0][0] in order else len(order))
    for k, sub in groups:
        cells = [METHOD_TEX.get(x, _tex(x)) if b == "method" else _tex(x) for b, x in zip(by, k)]
        for m in metrics:
            vals = sub[m].dropna().astype(float).tolist()
            pct = m.endswith("_acc")  # accuracies in percent, two decimals
            cells.append(ci([100 * x for x in vals] if pct else vals, 2 if pct else None) if vals else "---")
        t.rows.append(cells)
    return t


_PPL = {"valid_ppl": "Valid PPL", "test_ppl": "Test PPL"}
#: The appendix's tables of means by group: (name, title, caption, results file, group by, metrics, row order).
GROUPED = [
    ("gap", "Every variant of the gap experiment", "Every variant of the gap experiment, mean $\\pm$ 95\\,\\% "
     f"interval; the best hybrid on validation is \\texttt{{{_tex(BEST_HYBRID)}}}.", "gap/summary.csv",
     ["variant"], _PPL, None),
    ("sizes", "Model sizes and budgets", "Test perplexity by model size and number of epochs.",
     "benchmark/summary.csv", ["size", "epochs", "method"], {"test_ppl": "Test PPL"}, ["small", "medium", "large"]),
    ("teacher", "Teacher targets", "Trained baselines' FFNs refitted by random features in closed form "
     "(teacher targets).", "teacher/summary.csv", ["variant", "n_features"], {"test_ppl": "Test PPL"}, None),
    ("first_layer", "Data-dependent first layers", "attention$\\rightarrow$PIL re-solved in closed form with "
     "other first-layer projections (local targets).", "first_layer/summary.csv", ["projection", "n_features"],
     {"test_ppl": "Test PPL"}, None),
    ("lambada", "LAMBADA", "LAMBADA last-word accuracy (\\%) and word perplexity.", "lambada/summary.csv",
     ["method"], {"lambada_acc": "Accuracy", "lambada_word_ppl": "Word PPL"}, METHOD_ORDER),
    ("tinystories", "TinyStories", "TinyStories test perplexity.", "tinystories/summary.csv", ["method"], _PPL,
     METHOD_ORDER),
    ("tuning", "Tuned learning rate and dropout", "Each method at its own learning rate and dropout (and "
     "$\\lambda$), chosen on validation.", "tuning/tuned.csv", ["method", "lr", "dropout", "lam"], _PPL, METHOD_ORDER),
    ("adaptation", "Adaptation to a new domain", "Adapting attention$\\rightarrow$PIL to a new corpus: test "
     "perplexity there and on WikiText-2 afterwards.", "adaptation/summary.csv", ["how", "domain"],
     {"test_ppl": "New-domain PPL", "wiki_test_ppl": "WikiText-2 PPL", "adapt_s": "Seconds"}, None),
    ("pure_attention", "Fixed attention for pure PIL", "Pure PIL with fixed attention patterns.",
     "pure_attention/summary.csv", ["heads"], _PPL, None),
    ("lambda_path", "Ridge per layer", "Ridge $\\lambda$ chosen per layer on validation, against the "
     "checkpoints' own $\\lambda$ (control).", "lambda_path/summary.csv", ["variant"], _PPL, None),
    ("protocol", "Sliding-window evaluation", "Test perplexity with sliding windows (stride in tokens).",
     "protocol/protocol.csv", ["method", "stride"], {"ppl": "Test PPL"}, METHOD_ORDER),
    ("ngram", "Kneser--Ney baselines", "Interpolated Kneser--Ney $n$-gram models, with KenLM's perplexity.",
     "ngram/summary.csv", ["order"], {"test_ppl": "Test PPL", "kenlm_test_ppl": "KenLM"}, None),
]


def _or_not_run(make, name: str, title: str = "", caption: str = "", rel: str = "benchmark/summary.csv") -> Table:
    """``make()``, or a table that names the results it is missing."""
    try:
        return make()
    except NotRun as e:
        return Table(name, title or name, f"{caption} Not run in this results tree ({_tex(e)}).".lstrip(), rel,
                     ["Result"], [["not run"]])


def all_tables(res: Results, experiments) -> list[Table]:
    out = [_or_not_run(lambda: make(res), make.__name__.removesuffix("_table"))
           for make in (main_table, ablations_table, fit_table, setup_table, samples_table, time_to_quality_table)]
    out += [_or_not_run(lambda: grouped(res, *spec), *spec[:4]) for spec in GROUPED]
    return out + [provenance_table(res, experiments)]


def fit_table(res: Results) -> Table:
    """Per-layer R² of the closed-form fits (last sweep of each layer, from each run's ``solves``)."""
    t = Table("fit", "Per-layer fit", "Coefficient of determination $R^2$ of each layer's closed-form readout "
              "on its targets (last sweep), mean $\\pm$ 95\\,\\% interval over seeds.", "benchmark/summary.csv",
              ["Model", "Targets", "Layer 0", "Layer 1", "Layer 2", "Layer 3"],
              also=["gap/summary.csv", "teacher/summary.csv"])
    names = {"hybrid": (METHOD_TEX["attn_then_pil"] + ", four sweeps", "global"),
             "teacher_4": ("teacher probe, $4\\times$", "teacher"),
             "teacher_16": ("teacher probe, $16\\times$", "teacher")}
    for key in FIT_RUNS:
        try:
            r2 = layer_r2(res, key)
        except NotRun:
            continue
        label, target = names.get(key, (METHOD_TEX.get(key, key), "local"))
        t.rows.append([label, target] + [ci(r2[i], 3) if i in r2 else "---" for i in range(max(r2) + 1)])
    if not t.rows:
        raise NotRun("solves in result.json")
    return t


def time_to_quality_table(res: Results) -> Table:
    """Seconds each training-curve variant takes to reach each validation perplexity: median over repeats with
    their range; --- where a repeat never reaches it."""
    df = res.frame("training_curves/time_to_quality.csv")
    levels = sorted(df["level"].unique(), reverse=True)
    t = Table("time_to_quality", "Time to quality", "Wall-clock seconds of training until validation perplexity "
              "first reaches each level: median over repeats (range), each run alone on one GPU; --- where a repeat "
              "never reaches it.", "training_curves/time_to_quality.csv", ["Model"] + [f"{x:g}" for x in levels])
    for variant, g in df.groupby("variant", sort=False):
        s = [g.loc[g["level"] == x, "seconds"] for x in levels]
        t.rows.append([VARIANT_TEX.get(variant, _tex(variant))] + ["---" if v.isna().any() else
                      f"{v.median():.0f} ({v.min():.0f}--{v.max():.0f})" for v in s])
    return t


def provenance_table(res: Results, experiments) -> Table:
    """Each experiment's summary and each benchmark file: sha256, commit and compute version (1 where the file
    predates the field)."""
    t = Table("provenance", "Provenance", "Where each result comes from: the notebook, the results file (first 8 "
              "hex digits of its sha256), the commit it ran at and its compute version.", "provenance.json",
              ["Experiment", "Results file", "sha256", "Commit", "Version"], align="llllr")
    files = [(e, f"{e}/summary.csv", res.provenance(e)) for e in experiments]
    files += [(Path(b).stem, b, res.json(b)) for b in (BENCH, BENCH_2GPU) if res.path(b).is_file()]
    for name, rel, p in files:
        f = res.path(rel)
        commit = p.get("git_commit") or (p.get("environment") or {}).get("git_commit") or "---"
        t.rows.append([_tex(name), _tex(res.shown(rel)), sha256_short(f) if f.is_file() else "not run",
                       str(commit)[:8], str(p.get("compute_version", 1))])
    return t


def setup_table(res: Results) -> Table:
    """Model and training settings by size, read from the benchmark's baseline runs."""
    t = Table("setup", "Models and training", "Model sizes and training settings of the benchmark (baseline runs; "
              "the other methods differ only in the FFN).", "benchmark/runs",
              ["Size", "Layers", "Heads", "Width", "Context", "Vocabulary", "Parameters", "Epochs", "Batch",
               "Learning rate", "Dropout"])
    runs = [json.loads(p.read_text()) for p in res.run_files("benchmark", "method=baseline,*")]
    by_size = {r.get("size"): r for r in runs}  # the last run of each size
    for size, r in ((s, by_size[s]) for s in ("small", "medium", "large") if s in by_size):
        m, c = r["model_config"], r["train_config"]
        t.rows.append([size, m["n_layer"], m["n_head"], m["n_embd"], m["block_size"], fmt(m["vocab_size"], "int"),
                       fmt(r["params"]["total"], "int"), c["epochs"], c["batch_size"], c["lr"], m["dropout"]])
    if not t.rows:
        raise NotRun("benchmark/runs/*/result.json")
    return t


def samples_table(res: Results) -> Table:
    """One TinyStories sample per method (seed 0, first prompt, first sample), as generated."""
    samples = res.json("tinystories/samples.json")
    t = Table("samples", "Samples", "TinyStories samples (seed 0, first prompt and sample seed of each method; "
              "prompt in italics, text as generated).", "tinystories/samples.json", ["Model", "Sample"],
              align="lp{0.78\\linewidth}")
    seen = set()
    for s in samples if isinstance(samples, list) else []:
        if s.get("method") in seen or s.get("seed") != 0 or s.get("sample_seed") != 0:
            continue
        seen.add(s["method"])
        words = " ".join(str(s["text"]).split()[:60])
        prompt = f"\\emph{{{_tex(s['prompt'])}}}"
        t.rows.append([METHOD_TEX.get(s["method"], _tex(s["method"])), f"{prompt} {_tex(words)} \\dots"])
    if not t.rows:
        raise NotRun("tinystories/samples.json")
    return t
