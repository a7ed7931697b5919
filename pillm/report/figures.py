"""The paper's figures (seaborn), each saved as a PDF with its ``figure`` float."""

from __future__ import annotations

import io
import math
from pathlib import Path

from .config import FIGURE_TITLES, METHOD_ORDER, METHOD_PLAIN, SIZE_ORDER
from .files import write_if_changed, rel, sha256_short
from .fmt import _finite, _natural_key, fmt_ppl, method_tex, tex_escape
from .results import _main_configuration, _runs_where, concurrency, Experiment, Results, rows_where
from .analysis import (
    _complexity_fit, _complexity_solves, _estimate_crossover, _numeric_leaves, complexity_model_seconds,
)
from .sections import Report


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=0.95)
    matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "pillm",
                                "axes.titlesize": 9, "legend.fontsize": 7, "legend.title_fontsize": 7})
    return plt, sns


def _no_minor_labels(axis) -> None:
    from matplotlib.ticker import NullFormatter

    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> None:
    """Lay out, write as a reproducible PDF (no dates or producer) unless unchanged, and close."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None,
                                                                  "Producer": None, "Creator": None})
    write_if_changed(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)


def _hue_order(values) -> list:
    return sorted({str(v) for v in values}, key=_natural_key)


def kappa_per_layer(R: Results) -> tuple[list[dict], "Experiment | None", str]:
    """κ of the last solve of every layer, one row per (run, layer), the experiment the rows come from, and
    the caption's words for which runs: the benchmark's main configuration (one depth, one budget), else
    the λ sweep, labelled by λ."""
    for name in ("benchmark", "ablation_lambda"):
        e = R.exp(name)
        if not e.available:
            continue
        runs, which = e.runs(), " (λ sweep)" if name == "ablation_lambda" else ""
        if name == "benchmark" and "method" in e.df.columns:
            runs, which = _runs_where(e, _main_configuration(e)), ", in the main configuration's runs"
        rows = []
        for r in runs:
            last: dict[int, float] = {}
            for s in r.get("solves") or []:
                if isinstance(s.get("layer"), int) and _finite(s.get("cond")):
                    last[s["layer"]] = float(s["cond"])
            label = METHOD_PLAIN.get(str(r.get("method")), str(r.get("method")))
            if name == "ablation_lambda":
                lam = (r.get("train_config") or {}).get("lam")
                label = f"λ={lam:g}" if isinstance(lam, (int, float)) else label
            rows += [{"layer": layer, "κ": cond, "run": label, "seed": r.get("seed", 0)} for layer, cond in last.items()]
        if rows:
            return rows, e, which
    return [], None, ""


def _missing(res: dict, out: Path, name: str, caption: str, exps) -> None:
    """Figure ``name`` is not available: its stale PDF is removed and a stand-in caption recorded."""
    p = out / f"{name}.pdf"
    if p.exists():
        p.unlink()
    res[name] = {"missing": exps, "caption": caption}


def _fig_curves(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Validation perplexity during training, against epochs and wall-clock."""
    import pandas as pd

    e = rep.R.exp("training_curves")
    rows = []
    shared: dict[int, list[str]] = {}  # runs sharing the GPUs -> the runs timed so
    for r in (e.runs() if e.available else []):
        for p in r.get("curve") or []:
            if _finite(p.get("valid_ppl")):
                rows.append({"method": METHOD_PLAIN.get(str(r.get("method")), str(r.get("method"))),
                             "seed": r.get("seed", 0), "epoch": float(p.get("epoch", 0)),
                             "wall_s": float(p.get("wall_s", math.nan)), "valid PPL": float(p["valid_ppl"])})
        n = int((r.get("environment") or {}).get("concurrent_runs", 1))
        shared.setdefault(n, []).append(f"{method_tex(r.get('method'))} seed {r.get('seed', 0)}")
    cap = "Validation perplexity during training against epochs (left) and wall-clock seconds (right)"
    if len(shared) > 1:  # the wall-clock axis would compare runs slowed by different contention
        cap += ("; the runs were timed with different numbers of runs sharing the GPUs, so the wall-clock axis "
                "does not compare them (" + "; ".join(f"{', '.join(sorted(names))}: {n}"
                                                      for n, names in sorted(shared.items())) + ")")
    if rows:
        df = pd.DataFrame(rows)
        order = [METHOD_PLAIN.get(m, m) for m in METHOD_ORDER if METHOD_PLAIN.get(m, m) in set(df["method"])]
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6))
        sns.lineplot(df, x="epoch", y="valid PPL", hue="method", hue_order=order, marker="o", markersize=3,
                     errorbar="sd", ax=axes[0])
        sns.lineplot(df, x="wall_s", y="valid PPL", hue="method", hue_order=order, units="seed", estimator=None,
                     marker="o", markersize=3, ax=axes[1], legend=False)
        # the untrained models (epoch 0, ~vocabulary-size perplexity) would compress every trained epoch
        # into the bottom of a log axis: the range then ends just above the worst trained point
        trained = df.loc[df["epoch"] >= 1, "valid PPL"]
        clip = len(trained) and float(df["valid PPL"].max()) > 2 * float(trained.max())
        for ax in axes:
            if clip:
                ax.set_ylim(0.95 * float(df["valid PPL"].min()), 1.15 * float(trained.max()))
            else:
                ax.set_yscale("log")
        if clip:
            cap += ("; the untrained models' perplexities (epoch 0, up to "
                    f"{fmt_ppl(float(df['valid PPL'].max()))}) lie above the plotted range")
        axes[1].set_xlabel("wall-clock (s)")
        axes[0].legend(fontsize=6, ncol=2)
        _save(fig, out / "curves.pdf")
        res["curves"] = {"caption": cap, "sources": [e]}
    else:
        _missing(res, out, "curves", cap, ["training_curves"])


def _fig_lambda(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Sensitivity to λ, with κ."""
    e = rep.R.exp("ablation_lambda")
    cap = (r"Sensitivity to the relative ridge $\lambda$: test perplexity (left) and the largest condition "
           r"number $\kappa$ of $G_c+\lambda_{\mathrm{abs}}I$ over layers (right)")
    if e.available and "lam" in e.df.columns:
        df = e.df.copy()
        df["lam"] = df["lam"].astype(float)
        hue = "method" if "method" in df.columns and df["method"].nunique() > 1 else None
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
        sns.lineplot(df, x="lam", y="test_ppl", hue=hue, marker="o", errorbar="sd", ax=axes[0])
        if "max_cond" in df.columns:
            sns.lineplot(df, x="lam", y="max_cond", hue=hue, marker="s", errorbar="sd", ax=axes[1], legend=False)
            axes[1].set_yscale("log")
            axes[1].set_ylabel(r"max $\kappa$")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel(r"relative $\lambda$")
        axes[0].set_ylabel("test PPL")
        _save(fig, out / "lambda.pdf")
        res["lambda"] = {"caption": cap, "sources": [e]}
    else:
        _missing(res, out, "lambda", cap, ["ablation_lambda"])


def _fig_expansion(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Test perplexity and closed-form time against the expansion."""
    e = rep.R.exp("ablation_expansion")
    cap = "Test perplexity (left) and time of the closed-form phases (right) against the random-feature expansion"
    if e.available and "expansion" in e.df.columns:
        df = e.df.copy()
        df["expansion"] = df["expansion"].astype(float)
        hue = "method" if "method" in df.columns and df["method"].nunique() > 1 else None
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
        sns.lineplot(df, x="expansion", y="test_ppl", hue=hue, marker="o", errorbar="sd", ax=axes[0])
        if "pil_s" in df.columns:
            sns.lineplot(df, x="expansion", y="pil_s", hue=hue, marker="s", errorbar="sd", ax=axes[1], legend=False)
        axes[0].set_ylabel("test PPL")
        axes[1].set_ylabel("PIL phase (s)")
        _save(fig, out / "expansion.pdf")
        conc = concurrency(e)
        if conc > 1:  # as in the main table: shared-GPU times are shown, not read as costs
            cap += (f"; the times were measured with up to {conc} runs sharing the GPUs, so they do not "
                    "measure the cost of width (Section~\\ref{sec:complexity} does)")
        res["expansion"] = {"caption": cap, "sources": [e]}
    else:
        _missing(res, out, "expansion", cap, ["ablation_expansion"])


def _fig_complexity(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Complexity scaling."""
    import pandas as pd

    e = rep.R.exp("complexity")
    solves, _ = _complexity_solves(e) if e.available else (None, None)
    fit, _ = _complexity_fit(e) if e.available else (None, None)
    model = ("the fitted cost model, streaming $e + cN + aND^2$ plus solve $s + bD^3$ (Table~\\ref{tab:complexity_fit})"
             if (rep.c.get("complexity") or {}).get("two_part") else "the least-squares fit $t \\approx a N D^2 + b D^3$")
    cap = ("Measured time of the closed-form phase per layer against the number of training tokens $N$, for each "
           f"number of features $D$ (log--log; points: medians over layers); dashed: {model}")
    x = rep.c.get("complexity") and rep.c["complexity"].get("x")
    tcol = next((c for c in ("seconds_total", "seconds") if solves is not None and c in solves.columns), None)
    if solves is not None and tcol and {"tokens", "n_features"} <= set(solves.columns):
        df = solves.copy()
        df["D"] = df["n_features"].map(lambda d: f"D={int(d)}")
        order = [f"D={int(d)}" for d in sorted(df["n_features"].unique())]
        fig, ax = plt.subplots(figsize=(4.6, 2.8))
        # medians over layers, as the fit uses them (the first layer's solve also pays the warm-up)
        sns.lineplot(df, x="tokens", y=tcol, hue="D", hue_order=order, marker="o", estimator="median",
                     errorbar=None, ax=ax)
        if isinstance(fit, dict) and _finite(fit.get("a")) and _finite(fit.get("b")):
            import numpy as np

            pal = dict(zip(order, sns.color_palette(n_colors=len(order))))
            ns = np.geomspace(float(df["tokens"].min()), float(df["tokens"].max()), 50)
            for d in sorted(df["n_features"].unique()):
                ax.plot(ns, complexity_model_seconds(fit, ns, d), ls="--", lw=0.8, color=pal[f"D={int(d)}"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        _no_minor_labels(ax.xaxis)  # minor labels (2x10^5, 3x10^5, ...) overlap
        ticks = sorted(float(t) for t in df["tokens"].unique())  # the measured N, readable
        ax.set_xticks(ticks, [f"{t / 1e6:.1f}M" if t >= 1e6 else f"{t / 1e3:.0f}k" for t in ticks])
        ax.set_xlabel("training tokens N")
        ax.set_ylabel("seconds per layer")
        ax.legend(fontsize=6)
        _save(fig, out / "complexity.pdf")
        res["complexity"] = {"caption": cap, "sources": [Experiment("complexity", e.profile, e.path, None,
                                                                    e.path / "solves.csv", e.provenance)]}
    elif e.available and x:
        cap = ("Measured scaling of the training time: closed-form phases (PIL) and AdamW training, log--log; "
               "the dotted line marks the crossover where available")
        df = e.df.copy()
        df[x] = df[x].astype(float)
        long = []
        for _, r in df.iterrows():
            m = METHOD_PLAIN.get(str(r.get("method", "")), str(r.get("method", "")))
            for col, label in (("pil_s", "PIL phase"), ("train_s", "AdamW")):
                if col in df.columns and _finite(r.get(col)) and float(r[col]) > 0:
                    long.append({x: r[x], "seconds": float(r[col]), "series": f"{m}: {label}"})
        if long:
            ld = pd.DataFrame(long)
            fig, ax = plt.subplots(figsize=(4.6, 2.8))
            sns.lineplot(ld, x=x, y="seconds", hue="series", hue_order=sorted(set(ld["series"])), marker="o",
                         errorbar="sd", ax=ax)
            ax.set_xscale("log")
            ax.set_yscale("log")
            leaves = dict(_numeric_leaves(fit)) if isinstance(fit, (dict, list)) else {}
            xv = next((v for k, v in leaves.items() if "crossover" in k.lower()), None)
            xv = xv if xv is not None else _estimate_crossover(e.df, x)
            if _finite(xv):
                ax.axvline(float(xv), ls=":", color="k", lw=1)
            ax.legend(fontsize=6)
            _save(fig, out / "complexity.pdf")
            res["complexity"] = {"caption": cap, "sources": [e]}
        else:
            _missing(res, out, "complexity", cap, ["complexity"])
    else:
        _missing(res, out, "complexity", cap, ["complexity"])


def _fig_kappa(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Per-layer κ."""
    import pandas as pd

    cap = (r"Condition number $\kappa$ of the regularised Gram matrix per layer (final solve of each layer), "
           r"for every closed-form method")
    krows, e, which = kappa_per_layer(rep.R)
    if krows:
        df = pd.DataFrame(krows)
        fig, ax = plt.subplots(figsize=(4.6, 2.6))
        sns.lineplot(df, x="layer", y="κ", hue="run", hue_order=_hue_order(df["run"]), marker="o", errorbar="sd", ax=ax)
        ax.set_yscale("log")
        ax.set_xticks(sorted(df["layer"].unique()))
        ax.legend(fontsize=6)
        _save(fig, out / "kappa.pdf")
        res["kappa"] = {"caption": cap + which, "sources": [e]}
    else:
        _missing(res, out, "kappa", cap, ["benchmark"])


def _fig_contribution(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """Attention vs FFN contribution."""
    e = rep.R.exp("benchmark")
    cap = ("What the feed-forward layers contribute: test perplexity without FFN (attention only), with "
           "random-feature FFNs whose readout is trained (RF + AdamW, LoRA) or solved (PIL methods), and with a "
           "trained MLP (baseline); dashed lines mark attention only and the baseline")
    if e.available and "method" in e.df.columns:
        raw = rows_where(e.df, _main_configuration(e))
        means = raw.groupby("method")["test_ppl"].mean()
        # A method far off the others' scale (pure PIL) would flatten every bar on a log axis: it is
        # left out of the plot and its value given in the caption instead.
        ref = means.get("attn_only", means.median()) if len(means) else math.nan
        off = {m: float(v) for m, v in means.items() if _finite(ref) and v > 3 * ref}
        raw = raw[~raw["method"].isin(off)]
        if off:
            cap += ("; off this scale and left out: " + ", ".join(
                f"{method_tex(m)} ({fmt_ppl(v)})" for m, v in off.items()))
        if len(raw):
            order = [m for m in ("attn_only", "rf_adamw", "lora", "pil_pure", "pil_then_attn", "attn_then_pil",
                                 "alternating", "baseline") if m in set(raw["method"])]
            raw = raw.assign(label=raw["method"].map(lambda m: METHOD_PLAIN.get(m, m)))
            fig, ax = plt.subplots(figsize=(5.0, 2.6))
            sns.barplot(raw, x="label", y="test_ppl", order=[METHOD_PLAIN[m] for m in order], errorbar="sd",
                        color=sns.color_palette()[0], ax=ax)
            means = raw.groupby("method")["test_ppl"].mean()
            for m, style in (("attn_only", "--"), ("baseline", "--")):
                if m in means:
                    ax.axhline(means[m], ls=style, lw=0.8, color="gray")
            if means.max() / max(means.min(), 1e-9) > 20:
                ax.set_yscale("log")
            ax.set_xlabel("")
            ax.set_ylabel("test PPL")
            ax.tick_params(axis="x", rotation=30, labelsize=7)
            _save(fig, out / "contribution.pdf")
            res["contribution"] = {"caption": cap, "sources": [e]}
        else:
            _missing(res, out, "contribution", cap, ["benchmark"])
    else:
        _missing(res, out, "contribution", cap, ["benchmark"])


def _fig_sizes(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """The main configuration's budget over model sizes: means over seeds and every seed."""
    e = rep.R.exp("benchmark")
    cap = ("Test perplexity against model size at the main configuration's epoch budget, for the methods run at "
           "every size: lines join the medians over seeds, dots are single seeds")
    if not (e.available and {"method", "size"} <= set(e.df.columns)):
        _missing(res, out, "sizes", cap, ["benchmark"])
        return
    raw = rows_where(e.df, {k: v for k, v in _main_configuration(e).items() if k != "size"})
    sizes = [z for z in SIZE_ORDER if z in set(raw["size"].astype(str))]
    per_method = raw.groupby("method")["size"].nunique()
    methods = [m for m in METHOD_ORDER if per_method.get(m, 0) == len(sizes)]
    if len(sizes) < 2 or not methods:
        _missing(res, out, "sizes", cap, ["benchmark"])
        return
    raw = raw[raw["method"].isin(methods)].assign(
        label=lambda d: d["method"].map(lambda m: METHOD_PLAIN.get(m, m)), size=lambda d: d["size"].astype(str))
    order = [METHOD_PLAIN.get(m, m) for m in methods]
    # a diverged seed (far above its configuration's median) would flatten the others: it is drawn at
    # the top edge, with its value, instead of stretching the axis
    median = raw.groupby(["method", "size"])["test_ppl"].transform("median")
    far = raw["test_ppl"] > 2 * median
    top = 1.08 * float(raw.loc[~far, "test_ppl"].max())
    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    sns.pointplot(raw, x="size", y="test_ppl", hue="label", order=sizes, hue_order=order, estimator="median",
                  errorbar=None, markersize=4, linewidth=1.2, ax=ax)
    sns.stripplot(raw[~far], x="size", y="test_ppl", hue="label", order=sizes, hue_order=order, jitter=False,
                  size=3, alpha=0.5, legend=False, ax=ax)
    colors = dict(zip(order, sns.color_palette(n_colors=len(order))))
    for _, r in raw[far].iterrows():
        x = sizes.index(r["size"])
        ax.plot([x], [top], marker="^", ms=4, color=colors[r["label"]], clip_on=False)
        ax.annotate(f"{fmt_ppl(r['test_ppl'], sep=' ')} (seed {r['seed']})", (x, top),
                    xytext=(-5, -3), textcoords="offset points", fontsize=6, ha="right", color=colors[r["label"]])
    ax.set_ylim(top=top)
    ax.set_xlabel("model size")
    ax.set_ylabel("test PPL")
    ax.legend(fontsize=6)
    _save(fig, out / "sizes.pdf")
    if far.any():
        cap += "; a triangle at the top edge marks a seed more than twice its configuration's median, with its value"
    res["sizes"] = {"caption": cap, "sources": [e]}


def _fig_bench(rep: Report, out: Path, res: dict, plt, sns) -> None:
    """GPU micro-benchmarks of the solver (pillm bench): Gram rate and solve time against D."""
    import pandas as pd

    cap = (r"Closed-form solver on the GPU against the number of features $D$: throughput of the streamed Gram "
           r"accumulation of $\sum H^\top H$ and $\sum H^\top Y$ next to a dense single-precision matrix product of the same shape "
           r"measured in the same run (left), and time of the float64 ridge solve, Cholesky with its $\kappa$ "
           r"check and the eigen fallback (right)")
    files = [(p, d) for p, d in rep.R.bench() if isinstance(d, dict) and not d.get("quick")
             and isinstance(d.get("gram"), dict) and isinstance(d.get("solve"), dict)]
    if not files:
        _missing(res, out, "bench", cap, ["bench"])
        return
    path, d = files[0]
    rows = []
    for g in d["gram"].get("per_size", []):
        for key, label in (("update_masked", "Gram accumulation"), ("dense_mm", "dense matmul")):
            if _finite((g.get(key) or {}).get("tflops")):
                rows.append({"D": int(g["D"]), "TFLOP/s": float(g[key]["tflops"]), "kernel": label})
    solve = []
    for sz in d["solve"].get("per_size", []):
        for key, label in (("auto", "Cholesky + κ check"), ("eigh", "eigen fallback")):
            if _finite((sz.get(key) or {}).get("seconds")):
                solve.append({"D": int(sz["D"]), "seconds": float(sz[key]["seconds"]), "solver": label})
    if not rows or not solve:
        _missing(res, out, "bench", cap, ["bench"])
        return
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
    sns.lineplot(pd.DataFrame(rows), x="D", y="TFLOP/s", hue="kernel", marker="o", ax=axes[0])
    sns.lineplot(pd.DataFrame(solve), x="D", y="seconds", hue="solver", marker="s", ax=axes[1])
    for ax in axes:
        ax.set_xscale("log", base=2)
    axes[1].set_yscale("log")
    _no_minor_labels(axes[1].yaxis)  # minor labels within one decade overlap
    lo, hi = axes[1].get_ylim()
    ticks = [v * 10.0 ** k for k in range(-4, 3) for v in (1, 2, 5) if lo <= v * 10.0 ** k <= hi]
    axes[1].set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes[0].set_ylim(bottom=0)
    _save(fig, out / "bench.pdf")
    device = tex_escape(str(d.get("device_name") or path.stem))
    res["bench"] = {"caption": cap + f" ({device})", "sources": [],
                    "source_text": (r"Source: \texttt{pillm bench}, \texttt{" + tex_escape(rel(path)) +
                                    r"} sha256 \texttt{" + sha256_short(path) + "}.")}


def figures(rep: Report, out: Path) -> dict[str, dict]:
    """Render every figure; returns ``name → {"path", "caption", "sources"}`` or a missing stub."""
    plt, sns = _plt()
    res: dict[str, dict] = {}
    for name, fn in (("curves", _fig_curves), ("lambda", _fig_lambda), ("expansion", _fig_expansion),
                     ("complexity", _fig_complexity), ("bench", _fig_bench), ("kappa", _fig_kappa),
                     ("contribution", _fig_contribution), ("sizes", _fig_sizes)):
        try:
            fn(rep, out, res, plt, sns)
        except Exception as err:  # a malformed results file must not stop the paper build
            rep.errors.append(f"figure {name}: {type(err).__name__}: {err}")
            plt.close("all")
            _missing(res, out, name, FIGURE_TITLES[name], [])
            res[name]["error"] = True
    return res
