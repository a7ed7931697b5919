"""The paper's figures (matplotlib, PDF with fixed metadata so that a rebuild writes identical files)."""

from __future__ import annotations

import io
import statistics
from dataclasses import dataclass
from pathlib import Path

from .. import stats
from .config import BEST_HYBRID, METHOD_TEX
from .results import NotRun, Results, series


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    data: str
    width: str = r"0.72\linewidth"
    notebook: str = ""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.spines.top": False, "axes.spines.right": False,
                         "pdf.fonttype": 42, "svg.hashsalt": "pillm"})
    return plt


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    fig.clf()
    return buf.getvalue()


def _mean_ci(s: dict) -> tuple[float, float]:
    v = list(s.values())
    h = stats.t_quantile(len(v) - 1) * statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0
    return statistics.fmean(v), h


def capacity(res: Results):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    feats = lambda rel, **w: float(res.rows(rel, **w)["n_features"].iloc[0])
    for keys, rel, col, label, style in (
            (("teacher_4", "teacher_8", "teacher_16"), "teacher/summary.csv", "variant", "teacher targets", "o-"),
            (("linear_4", "linear_16"), "first_layer/summary.csv", None, "linearised (local) targets", "s--")):
        xs, ys, es = [], [], []
        for k in keys:
            m, h = _mean_ci(series(res, k))
            from .results import SERIES
            xs.append(feats(SERIES[k][0], **SERIES[k][2]))
            ys.append(m)
            es.append(h)
        ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=2, label=label)
    m, h = _mean_ci(series(res, "hybrid"))
    ax.errorbar([float(res.rows("gap/summary.csv", variant=BEST_HYBRID)["n_features"].iloc[0])],
                [m], yerr=[h], fmt="D", color="C3", capsize=2, label="global targets, 4 sweeps")
    for key, ls, color in (("attn_only", ":", "0.5"), ("rf_adamw", "-.", "C2"), ("baseline", "-", "k")):
        ax.axhline(statistics.fmean(series(res, key).values()), ls=ls, color=color, lw=1,
                   label=METHOD_TEX[key].replace(" (MLP FFN)", ""))
    ax.set_xscale("log", base=2)
    ticks = [1024, 2048, 4096, 8192]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set_xlabel("random features per layer")
    ax.set_ylabel("test perplexity")
    ax.legend(fontsize=6.5, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def time_to_quality(res: Results):
    plt = _plt()
    df = res.frame("training_curves/curves.csv")
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    for i, (method, g) in enumerate(df[df["seed"] == df["seed"].min()].groupby("method", sort=False)):
        g = g[g["valid_ppl"] < 1000]
        ax.plot(g["wall_s"], g["valid_ppl"], "o-", ms=2.5, color=f"C{i}", label=METHOD_TEX.get(method, method))
    ax.set_yscale("log")
    ax.set_yticks([120, 150, 200, 300], ["120", "150", "200", "300"])
    ax.minorticks_off()
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("validation perplexity")
    ax.legend(fontsize=6.5, frameon=False)
    return fig


def complexity(res: Results):
    plt = _plt()
    df = res.frame("complexity/solves.csv")
    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    ax.loglog(df["fitted_s"], df["seconds"], "o", ms=3, alpha=0.7)
    lo, hi = min(df["fitted_s"].min(), df["seconds"].min()), max(df["fitted_s"].max(), df["seconds"].max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("cost model (s)")
    ax.set_ylabel("measured (s)")
    return fig


def two_gpu(res: Results):
    plt = _plt()
    d = res.json("bench/nvidia-h200-2gpu.json")
    fig, ax = plt.subplots(figsize=(2.8, 2.2))
    ax.bar(["1 GPU", "2 GPUs"], [d["pil_phase_seconds_1"], d["pil_phase_seconds_2"]], color=["C0", "C1"])
    ax.set_ylabel("closed-form phase (s)")
    return fig


FIGURES = (
    (Figure("capacity", "Capacity against targets", "Test perplexity against the number of random features per "
            "layer. Teacher targets: a trained baseline's own FFN outputs; linearised: local targets re-solved on "
            "attention$\\rightarrow$PIL models; the diamond is the best hybrid. Horizontal lines: RF + AdamW "
            "(random features of the leftmost width, trained jointly with attention), the baseline and attention only. "
            "Bars: 95\\,\\% intervals over seeds.", "teacher/summary.csv"), capacity, "teacher"),
    (Figure("time", "Time to quality", "Validation perplexity against wall-clock time during training (one "
            "seed; times measured on a GPU shared with other runs, so they order the methods only roughly).",
            "training_curves/curves.csv"), time_to_quality, "training_curves"),
    (Figure("complexity", "Cost model", "Measured seconds of each layer's closed-form solve against the "
            "fitted cost model $e + c\\,n + a\\,n D^2 + s + b\\,D^3$ ($n$ tokens, $D$ features).",
            "complexity/solves.csv", r"0.5\linewidth"), complexity, "complexity"),
    (Figure("twogpu", "Two GPUs", "The closed-form phase of the best hybrid on one and on two H200 GPUs "
            "(\\texttt{pillm bench}, compute version \\ComputeVersionTwoGPU{}).", "bench/nvidia-h200-2gpu.json",
            r"0.4\linewidth"), two_gpu, None),
)


def render(res: Results, outdir: Path, notebooks: dict) -> dict[str, Figure | str]:
    """Write ``<outdir>/<name>.pdf`` for each figure; returns the figure, or why it is missing."""
    from .files import write_if_changed

    out = {}
    for spec, draw, exp in FIGURES:
        try:
            fig = draw(res)
        except NotRun as e:
            out[spec.name] = f"not run ({e})"
            continue
        write_if_changed(outdir / f"{spec.name}.pdf", _save(fig, outdir / f"{spec.name}.pdf"))
        spec.notebook = notebooks.get(exp, "pillm/bench.py")
        out[spec.name] = spec
    return out
