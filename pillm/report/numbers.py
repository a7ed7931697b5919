"""The numbers the paper's text uses: one TeX macro each, computed from a results file that the macro's
comment in ``tables/numbers.tex`` names. A number whose results are missing renders as "not run"."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .. import stats
from .config import BENCH, BENCH_2GPU, BEST_HYBRID, CURVES
from .results import FIT_RUNS, SERIES, NotRun, Results, bench_ratio, compute_version, layer_r2, mean, series

NOT_RUN = r"\textit{not run}"


@dataclass
class Number:
    name: str
    text: str
    source: str  # results file (relative to the results root's profile, or bench/...)
    note: str
    value: float | None = None


_FORMATS = {"ppl": lambda x: f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}", "x": lambda x: f"{x:.2f}",
            "pct": lambda x: f"{x:.0f}", "acc": lambda x: f"{100 * x:.2f}", "int": lambda x: f"{int(round(x)):,}"}


def fmt(x: float, kind: str) -> str:
    """TeX for a number: ``ppl`` (one decimal; thousands grouped, no decimal), ``x`` (two decimals),
    ``pct`` (whole percent), ``int`` (grouped), ``acc`` (percent, two decimals)."""
    if kind == "sci":
        m, e = f"{x:.0e}".split("e")
        return rf"$10^{{{int(e)}}}$" if m == "1" else rf"${m}\times10^{{{int(e)}}}$"
    if kind not in _FORMATS:
        raise ValueError(f"kind={kind!r}: use ppl, x, pct, acc, int or sci")
    s = _FORMATS[kind](x).replace(",", r"\,")
    return f"${s}$" if s.startswith("-") else s


def fmt_paired(p: stats.Paired) -> str:
    """``−13.4 [−15.0, −11.8]``: the mean paired difference and its 95 % interval."""
    return f"${p.mean:+.1f}$ [${p.lo:+.1f}$, ${p.hi:+.1f}$]".replace("+", "{+}").replace("-", "{-}")


class Numbers:
    """Macros by name; :meth:`add` evaluates a getter ``() -> (value, source)``."""

    def __init__(self, res: Results):
        self.res = res
        self.defs: dict[str, Number] = {}

    def add(self, name: str, get, kind: str = "ppl", note: str = "") -> None:
        if not name.isalpha() or name in self.defs:
            raise ValueError(f"macro name {name!r} must be letters only and defined once")
        try:
            value, source = get()
        except NotRun as e:
            self.defs[name] = Number(name, NOT_RUN, str(e), note)
            return
        text = value if isinstance(value, str) else fmt(value, kind)
        self.defs[name] = Number(name, text, source, note, value if not isinstance(value, str) else None)

    # getters -----------------------------------------------------------------------------------------
    def share(self, name: str):
        def get():
            m = {k: mean(self.res, k) for k in ("attn_only", "baseline", name)}
            return stats.log_gap_share(m["attn_only"], m["baseline"], m[name]), SERIES[name][0]
        return get

    def csv(self, rel: str, metric: str, agg=statistics.fmean, **where):
        return lambda: (agg(self.res.rows(rel, **where)[metric].astype(float).tolist()), rel)


#: The macros of a series' mean over seeds: (series, macro).
MEANS = (("baseline", "BaselinePPL"), ("attn_only", "AttnOnlyPPL"), ("lora", "LoraPPL"), ("rf_adamw", "RFAdamWPPL"),
         ("pil_pure", "PurePILPPL"), ("pil_then_attn", "PilThenAttnPPL"), ("attn_then_pil", "AttnThenPilPPL"),
         ("alternating", "AlternatingPPL"), ("hybrid", "HybridPPL"), ("hybrid_global", "GlobalPPL"),
         ("pure_best", "PureBestPPL"), ("teacher", "TeacherPPL"), ("teacher_4", "TeacherFourPPL"),
         ("teacher_8", "TeacherEightPPL"), ("teacher_16", "TeacherSixteenPPL"), ("linear_4", "LinearFourPPL"),
         ("linear_16", "LinearSixteenPPL"), ("bipil", "BiPILPPL"), ("single_same", "SingleSamePPL"),
         ("single_wide", "SingleWidePPL"), ("lam_low", "LamLowPPL"), ("lam_high", "LamHighPPL"), ("exp_1", "ExpOnePPL"),
         ("exp_8", "ExpEightPPL"), ("medium_attn_only", "MediumAttnOnlyPPL"), ("medium_hybrid", "MediumHybridPPL"),
         ("large_attn_only", "LargeAttnOnlyPPL"), ("large_hybrid", "LargeHybridPPL"))
#: The macros of a paired difference by seed: (a, b, macro) for a − b.
DIFFS = (("hybrid", "baseline", "DiffHybridBaseline"), ("hybrid", "attn_only", "DiffHybridAttnOnly"),
         ("attn_then_pil", "attn_only", "DiffDefaultAttnOnly"), ("rf_adamw", "hybrid", "DiffRFHybrid"),
         ("lora", "hybrid", "DiffLoraHybrid"), ("teacher_8", "teacher_4", "DiffTeacherEightFour"),
         ("teacher_16", "teacher_8", "DiffTeacherSixteenEight"), ("teacher_16", "rf_adamw", "DiffTeacherRF"),
         ("teacher_8", "hybrid", "DiffTeacherHybrid"), ("linear_16", "linear_4", "DiffLinear"),
         ("teacher_16", "teacher_4", "DiffTeacherWide"), ("hybrid_global", "attn_then_pil", "DiffGlobalLocal"),
         ("hybrid", "hybrid_global", "DiffSweeps"), ("bipil", "single_wide", "DiffBiPIL"),
         ("lam_high", "lam_low", "DiffLam"), ("exp_8", "exp_1", "DiffExp"),
         ("medium_hybrid", "medium_attn_only", "DiffMedium"), ("large_hybrid", "large_attn_only", "DiffLarge"))


def compute(res: Results) -> Numbers:
    n = Numbers(res)
    for key, name in MEANS:
        where = ", ".join(f"{k}={v}" for k, v in SERIES[key][2].items()) or "all rows"
        n.add(name, lambda key=key: (mean(res, key), SERIES[key][0]), note=f"mean test_ppl over seeds, rows {where}")
    for a, b, name in DIFFS:  # the difference as text, with its interval
        files = " and ".join(dict.fromkeys((SERIES[a][0], SERIES[b][0])))
        get = lambda a=a, b=b, files=files: (fmt_paired(stats.paired(series(res, a), series(res, b))), files)
        n.add(name, get, note=f"paired difference {a} - {b} by seed, mean [95% paired-t interval]")

    ratio = lambda: (stats.ratio_ci(series(res, "hybrid"), series(res, "baseline"))[0], SERIES["hybrid"][0])
    n.add("HybridRatio", ratio, "x", "geometric mean over seeds of test_ppl(hybrid)/test_ppl(baseline)")
    n.add("HybridShare", n.share("hybrid"), "pct", "share of the attention-only-to-baseline log-ppl gap closed")
    n.add("RFShare", n.share("rf_adamw"), "pct", "share of the attention-only-to-baseline log-ppl gap closed")
    for key, name, note in (("hybrid", "HybridFeatures", "random features per layer of the best hybrid"),
                            ("teacher_4", "TeacherFourFeatures", "random features per layer, RF 4x"),
                            ("teacher_16", "TeacherSixteenFeatures", "random features per layer, RF 16x"),
                            ("linear_16", "LinearSixteenFeatures", "features per layer, random x16 re-solve")):
        n.add(name, n.csv(SERIES[key][0], "n_features", **SERIES[key][2]), "int", note)
    n.add("KNFivePPL", n.csv("ngram/summary.csv", "test_ppl", method="kn5"), note="Kneser-Ney 5-gram test_ppl")
    n.add("KNOnePPL", n.csv("ngram/summary.csv", "test_ppl", method="kn1"), note="Kneser-Ney unigram test_ppl")
    n.add("LambadaMaxAcc", n.csv("lambada/summary.csv", "lambada_acc", agg=max), "acc",
          "largest LAMBADA accuracy of any run, percent")

    def bench(key: str):
        return lambda: (bench_ratio(res, key), BENCH)

    n.add("GPUHybridOverBaseline", bench("hybrid_over_baseline_train"), "x",
          f"hybrid_over_baseline_train: GPU training time of {BEST_HYBRID} over the baseline's (median of repeats)")
    n.add("GPUAdamWOverBaseline", bench("hybrid_adamw_over_baseline_train"), "x",
          "hybrid_adamw_over_baseline_train: the hybrid's AdamW phase alone over the baseline's training")
    n.add("GPUSweepsOverBaseline", bench("hybrid_sweeps_over_baseline_train"), "x",
          "hybrid_sweeps_over_baseline_train: the hybrid's closed-form sweeps over the baseline's training")
    n.add("GPUPILPhaseOverBaseline", bench("pil_phase_over_baseline_train"), "x",
          "pil_phase_over_baseline_train: one closed-form sweep over the baseline's training")
    n.add("GPUAttnOnlyOverBaseline", bench("attn_only_over_baseline_train"), "x",
          "attn_only_over_baseline_train: attention only's training over the baseline's")
    for end in ("Min", "Max"):
        n.add(f"GPUHybridOverBaseline{end}", bench(f"hybrid_over_baseline_train_{end.lower()}"), "x",
              f"hybrid_over_baseline_train_{end.lower()}: over the repeats")
    n.add("BenchRepeats", lambda: (len(res.json(BENCH)["repeats"]), BENCH), "int", "repeats in the benchmark")
    n.add("ComputeVersionBench", lambda: compute_version(res, BENCH), "int", "compute_version recorded in the file")
    n.add("ComputeVersionResults", lambda: compute_version(res, "benchmark/provenance.json"), "int",
          "compute_version of the main table's runs")
    n.add("TwoGPUSpeedup", lambda: (float(res.json(BENCH_2GPU)["pil_phase_speedup_2gpu"]), BENCH_2GPU), "x",
          "closed-form phase, 1 GPU seconds over 2 GPU seconds")
    n.add("ComplexityRsq", n.csv("complexity/fit.csv", "r2"), "x",
          "R^2 of the fitted cost model over the measured solves")
    n.add("ComputeVersionTwoGPU", lambda: compute_version(res, BENCH_2GPU), "int",
          "compute_version recorded in the file (1 where absent: recorded before the field existed)")
    for key, name in (("hybrid", "HybridRsq"), ("teacher_4", "TeacherFourRsq"), ("teacher_16", "TeacherSixteenRsq")):
        def get(key=key):
            r2 = [v for vals in layer_r2(res, key).values() for v in vals]
            return statistics.fmean(r2), "{}/runs/{}/result.json".format(*FIT_RUNS[key])
        n.add(name, get, "x", f"mean over layers and seeds of the last solve's r2 in result.json solves ({key})")
    for variant, name in ((BEST_HYBRID, "Hybrid"), (f"{BEST_HYBRID}+sub200k", "HybridSub")):
        n.add(f"Curves{name}Seconds", n.csv(CURVES, "total_s", statistics.median, variant=variant), "int",
              f"median over repeats of total_s (whole run, alone on the GPU), {variant}")
        n.add(f"Curves{name}PPL", n.csv(CURVES, "test_ppl", variant=variant), note=f"mean test_ppl over repeats, {variant}")
    sub_run = f"training_curves/runs/{BEST_HYBRID}+sub200k,seed=0/result.json"
    n.add("SubsampleTokens", lambda: (res.json(sub_run)["train_config"]["solve_tokens"], sub_run), "int",
          "tokens each closed-form solve of the subsampled hybrid accumulates its Gram over")
    n.add("SubsampleShare", lambda: (100 * res.json(sub_run)["train_config"]["solve_tokens"]
                                     / res.json(sub_run)["train_tokens"], sub_run), "pct",
          "those tokens as a percentage of the training tokens")
    n.add("Seeds", lambda: (len(series(res, "baseline")), SERIES["baseline"][0]), "int", "seeds per configuration")
    return n
