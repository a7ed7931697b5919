"""The paper's figures (matplotlib, PDF with fixed metadata so that a rebuild writes identical files)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from .config import BENCH_2GPU, METHOD_TEX, VARIANT_TEX
from .files import write_if_changed
from .results import SERIES, NotRun, Results, mean, series
from .tables import interval


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    data: str
    width: str = r"0.72\linewidth"
    notebook: str = ""


def _axes(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.spines.top": False, "axes.spines.right": False,
                         "pdf.fonttype": 42, "svg.hashsalt": "pillm"})
    return plt.subplots(figsize=figsize)


def _save(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    fig.clf()
    return buf.getvalue()


def capacity(res: Results):
    fig, ax = _axes((4.2, 2.8))
    features = lambda k: float(res.rows(SERIES[k][0], **SERIES[k][2])["n_features"].iloc[0])
    for keys, label, style in ((("teacher_4", "teacher_8", "teacher_16"), "teacher targets", "o-"),
                               (("linear_4", "linear_16"), "linearised (local) targets", "s--")):
        ys, es = zip(*(interval(series(res, k).values()) for k in keys))
        ax.errorbar([features(k) for k in keys], list(ys), yerr=list(es), fmt=style, capsize=2, label=label)
    m, h = interval(series(res, "hybrid").values())
    ax.errorbar([features("hybrid")], [m], yerr=[h], fmt="D", color="C3", capsize=2, label="global targets, 4 sweeps")
    for key, ls, color in (("attn_only", ":", "0.5"), ("rf_adamw", "-.", "C2"), ("baseline", "-", "k")):
        ax.axhline(mean(res, key), ls=ls, color=color, lw=1, label=METHOD_TEX[key].replace(" (MLP FFN)", ""))
    ax.set_xscale("log", base=2)
    ticks = [1024, 2048, 4096, 8192]
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set(xlabel="random features per layer", ylabel="test perplexity")
    ax.legend(fontsize=6.5, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def time_to_quality(res: Results):
    df = res.frame("training_curves/curves.csv")
    fig, ax = _axes((4.2, 2.6))
    for i, (name, g) in enumerate(df[df["valid_ppl"] < 1000].groupby("variant", sort=False)):
        for j, (_, run) in enumerate(g.groupby("seed")):
            ax.plot(run["wall_s"], run["valid_ppl"], "o-", ms=2, lw=0.8, color=f"C{i}",
                    label=None if j else VARIANT_TEX.get(name, name))
    ax.set_yscale("log")
    ax.set_yticks([120, 150, 200, 300], ["120", "150", "200", "300"])
    ax.minorticks_off()
    ax.set(xlabel="wall-clock seconds", ylabel="validation perplexity")
    ax.legend(fontsize=6.5, frameon=False)
    return fig


def complexity(res: Results):
    df = res.frame("complexity/solves.csv")
    fig, ax = _axes((3.6, 2.6))
    ax.loglog(df["fitted_s"], df["seconds"], "o", ms=3, alpha=0.7)
    lo, hi = min(df["fitted_s"].min(), df["seconds"].min()), max(df["fitted_s"].max(), df["seconds"].max())
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set(xlabel="cost model (s)", ylabel="measured (s)")
    return fig


def two_gpu(res: Results):
    d = res.json(BENCH_2GPU)
    fig, ax = _axes((2.8, 2.2))
    ax.bar(["1 GPU", "2 GPUs"], [d["pil_phase_seconds_1"], d["pil_phase_seconds_2"]], color=["C0", "C1"])
    ax.set_ylabel("closed-form phase (s)")
    return fig


FIGURES = (
    (Figure("capacity", "Capacity against targets", "Test perplexity against the number of random features per "
            "layer. Teacher targets: a trained baseline's own FFN outputs; linearised: local targets re-solved on "
            "attention$\\rightarrow$PIL models; the diamond is the best hybrid. Horizontal lines: RF + AdamW "
            "(random features of the leftmost width, trained jointly with attention), the baseline and attention only. "
            "Bars: 95\\,\\% intervals over seeds.", "teacher/summary.csv"), capacity),
    (Figure("time", "Time to quality", "Validation perplexity against wall-clock time during training, "
            "each run alone on one GPU; one line per repeat.",
            "training_curves/curves.csv"), time_to_quality),
    (Figure("complexity", "Cost model", "Measured seconds of each layer's closed-form solve against the "
            "fitted cost model $e + c\\,n + a\\,n D^2 + s + b\\,D^3$ ($n$ tokens, $D$ features).",
            "complexity/solves.csv", r"0.5\linewidth"), complexity),
    (Figure("twogpu", "Two GPUs", "The closed-form phase of the best hybrid on one and on two H200 GPUs "
            "(\\texttt{pillm bench}, compute version \\ComputeVersionTwoGPU{}).", BENCH_2GPU,
            r"0.4\linewidth"), two_gpu),
)


def render(res: Results, outdir: Path) -> dict[str, Figure | str]:
    """Write ``<outdir>/<name>.pdf`` for each figure; returns the figure, or why it is missing."""
    out = {}
    for spec, draw in FIGURES:
        try:
            write_if_changed(outdir / f"{spec.name}.pdf", _save(draw(res)))
            out[spec.name] = spec
        except NotRun as e:
            out[spec.name] = f"not run ({e})"
    return out
