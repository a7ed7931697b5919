"""The qualitative statements the paper makes, each checked against the results at build time.

The text marks a statement with ``\\claim{name}{...}``; :func:`check` evaluates every claim here and the
build fails, naming the claim, when the results contradict it. "Better"/"worse" means that the 95 %
paired-t interval of the per-seed difference excludes zero; "within noise" that it includes zero.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Callable

from .. import stats
from .config import BENCH, BENCH_2GPU, BEST_HYBRID, BEST_PURE, CURVES, ReportError
from .results import NotRun, Results, bench_ratio, compute_version, ffn_learned, layer_r2, mean, series


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    check: Callable[[Results], tuple[bool, str]]


def _p(res, a, b) -> stats.Paired:
    return stats.paired(series(res, a), series(res, b))


def _interval(p: stats.Paired, digits: int = 2) -> str:
    return f"{p.mean:+.{digits}f} [{p.lo:+.{digits}f}, {p.hi:+.{digits}f}]"


def _paired_check(a: str, b: str, holds: str):
    def check(res):
        p = _p(res, a, b)
        return getattr(p, holds), f"{a} - {b} = {_interval(p)}"
    return check


def lower(a: str, b: str):
    """``a`` has lower test perplexity than ``b``: the interval of ``a − b`` lies below zero."""
    return _paired_check(a, b, "below_zero")


def within_noise(a: str, b: str):
    return _paired_check(a, b, "includes_zero")


def within_pct(a: str, b: str, pct: float):
    """The means of ``a`` and ``b`` differ by less than ``pct`` percent."""
    def check(res):
        rel = 100 * abs(mean(res, a) / mean(res, b) - 1)
        return rel < pct, f"|{a}/{b} - 1| = {rel:.2f} % (limit {pct} %)"
    return check


def all_of(*checks):
    def check(res):
        out = [c(res) for c in checks]
        return all(ok for ok, _ in out), "; ".join(d for _, d in out)
    return check


def _gap_selection(res):
    """The gap experiment's own selection (lowest mean validation perplexity) picks the variants the text names."""
    d = res.json("gap/summary.json")
    chosen = (d.get("best_hybrid_name"), d.get("pure_pil_name"))
    return chosen == (BEST_HYBRID, BEST_PURE), "gap/summary.json selects {} and {}".format(*chosen)


def _pure_above_unigram(res):
    kn1 = float(res.rows("ngram/summary.csv", method="kn1")["test_ppl"].iloc[0])
    worst = min(series(res, "pure_best").values())
    return worst > kn1, f"lowest pure-PIL seed {worst:.1f} against unigram {kn1:.1f}"


def _gpu_slower(key: str):
    """The benchmark's ratio ``key`` (the smallest over its repeats) exceeds one."""
    def check(res):
        r = bench_ratio(res, key, smallest=True)
        return r > 1, f"{key}, smallest over the repeats: {r:.2f}"
    return check


def _curves_alone(res):
    n = res.rows(CURVES)["concurrent_runs"].astype(int)
    return bool((n == 1).all()), f"runs sharing the machine with each training-curve run: {sorted(set(n))}"


def _curves_below(a: str, b: str, metric: str):
    """Variant ``a``'s ``metric`` is below ``b``'s on every repeat (seed) of the training curves."""
    def check(res):
        x, y = res.seeds(CURVES, metric, variant=a), res.seeds(CURVES, metric, variant=b)
        seeds = sorted(x.keys() & y.keys())
        return bool(seeds) and all(x[s] < y[s] for s in seeds), f"{metric} of {a} against {b}: " + ", ".join(
            f"seed {s}: {x[s]:.1f} / {y[s]:.1f}" for s in seeds)
    return check


def _weights_ratio(key: str, low: float, high: float):
    """The FFN weights that ``key`` learns, over the best hybrid's, lie in [low, high]."""
    def check(res):
        r = ffn_learned(res, key) / ffn_learned(res, "hybrid")
        return low <= r <= high, f"FFN weights learned, {key} over the best hybrid: {r:.3f}"
    return check


def _adamw_as_attn_only(res):
    """The hybrid's AdamW phase costs within a quarter of attention only's training (median over repeats)."""
    r = bench_ratio(res, "hybrid_adamw_over_attn_only")
    return abs(r - 1) < 0.25, f"the hybrid's AdamW phase over attention only's training: {r:.2f}"


def _bench_newer(res):
    bench, runs = compute_version(res, BENCH)[0], compute_version(res, "benchmark/provenance.json")[0]
    return bench > runs, f"benchmark compute version {bench}, main-table runs {runs}"


def _two_gpu_faster(res):
    r = float(res.json(BENCH_2GPU)["pil_phase_speedup_2gpu"])
    return r > 1, f"2-GPU speed-up {r:.2f}"


def _lambada_low(res):
    acc = res.rows("lambada/summary.csv")["lambada_acc"].astype(float)
    return bool((acc < 0.01).all()), f"largest LAMBADA accuracy {acc.max():.4f} (limit 0.01)"


def _baseline_setting_tuned(res):
    row = res.rows("tuning/chosen.csv", method="baseline").iloc[0]
    return bool(row["chosen_is_default"]), f"baseline's chosen lr {row['lr']}, dropout {row['dropout']}"


def _alternating_between(res):
    m = {k: mean(res, k) for k in ("attn_then_pil", "alternating", "pil_then_attn")}
    return m["attn_then_pil"] < m["alternating"] < m["pil_then_attn"], str({k: round(v, 1) for k, v in m.items()})


def _lambda_flat(res):
    """The four weaker ridges' mean test perplexities lie within 1 % of each other."""
    m = [statistics.fmean(res.seeds("ablation_lambda/summary.csv", lam=lam).values())
         for lam in (1e-9, 1e-7, 1e-5, 1e-3)]
    spread = 100 * (max(m) / min(m) - 1)
    return spread < 1.0, f"spread {spread:.2f} % over lambda 1e-9..1e-3 (limit 1 %)"


def _teacher_monotone(res):
    m = [mean(res, f"teacher_{w}") for w in (4, 8, 16)]
    return stats.monotone(m), "teacher means " + ", ".join(f"{v:.1f}" for v in m)


def _teacher_gains_more(res):
    t, li = _p(res, "teacher_16", "teacher_4"), _p(res, "linear_16", "linear_4")
    return t.hi < li.lo, f"teacher {_interval(t, 1)}, linearised {_interval(li, 1)}"


def _accumulation_dominates(res):
    """The fitted streaming term exceeds the solve term at the best hybrid's features and training tokens."""
    fit = res.rows("complexity/fit.csv").iloc[0]
    runs = res.run_files("benchmark", "method=attn_then_pil,epochs=10,seed=*")
    n = float(json.loads(runs[0].read_text())["solves"][0]["tokens"])
    d = float(res.rows("gap/summary.csv", variant=BEST_HYBRID)["n_features"].iloc[0])
    stream, solve = fit["a"] * n * d ** 2 + fit["c"] * n, fit["b"] * d ** 3
    return stream > solve, f"streaming {stream:.3f} s against solve {solve:.3f} s per layer (n={n:.0f}, D={d:.0f})"


def _targets_fit_poorly(res):
    hybrid = max(v for vals in layer_r2(res, "hybrid").values() for v in vals)
    teacher = min(v for vals in layer_r2(res, "teacher_4").values() for v in vals)
    return hybrid < teacher, (f"largest R^2 of the hybrid's solves {hybrid:.3f}, "
                              f"smallest of the 4x teacher fits {teacher:.3f}")


def _cost_model_fits(res):
    r2 = float(res.rows("complexity/fit.csv")["r2"].iloc[0])
    return r2 >= 0.9, f"R^2 {r2:.3f} (limit 0.9)"


CLAIMS = (
    Claim("baseline-setting-tuned", "the shared learning rate and dropout are the baseline's best on validation",
          _baseline_setting_tuned),
    Claim("alternating-between", "alternating lies between attention->PIL and PIL->attention (means)",
          _alternating_between),
    Claim("best-hybrid-selected", f"the best hybrid on validation is {BEST_HYBRID}, the best pure variant {BEST_PURE}",
          _gap_selection),
    Claim("pil-loses", "the best hybrid is worse than the baseline", lower("baseline", "hybrid")),
    Claim("hybrid-beats-attn-only", "the best hybrid beats attention only", lower("hybrid", "attn_only")),
    Claim("default-hybrid-noise", "attention->PIL with local targets is within noise of attention only",
          within_noise("attn_then_pil", "attn_only")),
    Claim("pil-first-worse", "PIL->attention is worse than attention only", lower("attn_only", "pil_then_attn")),
    Claim("rf-beats-hybrid", "RF + AdamW beats the best hybrid", lower("rf_adamw", "hybrid")),
    Claim("lora-beats-hybrid", "LoRA FFNs beat the best hybrid", lower("lora", "hybrid")),
    Claim("pure-above-unigram", "pure PIL is worse than a unigram model on every seed", _pure_above_unigram),
    Claim("hybrid-slower", "the best hybrid takes longer to train than the baseline on the GPU",
          _gpu_slower("hybrid_over_baseline_train")),
    Claim("sweeps-exceed-baseline", "the best hybrid's closed-form sweeps alone take longer than the baseline's "
          "training", _gpu_slower("hybrid_sweeps_over_baseline_train")),
    Claim("baseline-param-matched", "the baseline learns as many FFN weights as the best hybrid (within 1 %)",
          _weights_ratio("baseline", 0.99, 1.01)),
    Claim("rf-half-weights", "RF + AdamW learns about half the best hybrid's FFN weights",
          _weights_ratio("rf_adamw", 0.45, 0.55)),
    Claim("adamw-as-attn-only", "the best hybrid's AdamW phase costs about what attention only's training costs",
          _adamw_as_attn_only),
    Claim("bench-newer", "the benchmark ran a newer compute version than the main table's runs", _bench_newer),
    Claim("curves-alone", "every training-curve run had the GPU to itself", _curves_alone),
    Claim("subsample-costs", "the subsampled Gram costs perplexity against the full one on every repeat",
          _curves_below(BEST_HYBRID, f"{BEST_HYBRID}+sub200k", "test_ppl")),
    Claim("teacher-width", "with teacher targets, test perplexity falls at every doubling of width",
          all_of(_teacher_monotone, lower("teacher_8", "teacher_4"), lower("teacher_16", "teacher_8"))),
    Claim("teacher-matches-rf", "teacher targets at 16x are within noise of RF + AdamW at 4x",
          within_noise("teacher_16", "rf_adamw")),
    Claim("rf-beats-teacher-same-width", "at equal width, RF + AdamW beats teacher targets",
          lower("rf_adamw", "teacher_4")),
    Claim("teacher-eight-short", "teacher targets at 8x are still worse than RF + AdamW at 4x",
          lower("rf_adamw", "teacher_8")),
    Claim("teacher-equals-hybrid", "at the hybrid's width, teacher targets are within noise of the best hybrid",
          within_noise("teacher_8", "hybrid")),
    Claim("linear-flat", "with linearised targets, quadrupling the features (expansion 4x to 16x) moves test "
          "perplexity by < 1 %",
          within_pct("linear_16", "linear_4", 1.0)),
    Claim("linear-wide-lower", "with linearised targets, quadrupled features are (slightly) better",
          lower("linear_16", "linear_4")),
    Claim("targets-fit-poorly", "every layer of the best hybrid fits its target worse than any teacher fit",
          _targets_fit_poorly),
    Claim("global-beats-local", "global targets beat local targets for attention->PIL",
          lower("hybrid_global", "attn_then_pil")),
    Claim("sweeps-help", "four sweeps beat one sweep of global targets", lower("hybrid", "hybrid_global")),
    Claim("bipil-noise", "Bi-PIL is within noise of a single projection of the same width",
          within_noise("bipil", "single_wide")),
    Claim("bipil-half-noise", "Bi-PIL is within noise of a single projection with half the features",
          within_noise("bipil", "single_same")),
    Claim("lambda-flat", "over the four weaker ridges test perplexity moves by less than 1 %", _lambda_flat),
    Claim("lambda-large-helps", "the largest ridge (0.1) beats the smallest (1e-9)", lower("lam_high", "lam_low")),
    Claim("expansion-noise", "expansion 8x is within noise of 1x for PIL->attention", within_noise("exp_8", "exp_1")),
    Claim("sizes-noise", "at the medium and large sizes attention->PIL is within noise of attention only",
          all_of(within_noise("medium_hybrid", "medium_attn_only"), within_noise("large_hybrid", "large_attn_only"))),
    Claim("lambada-low", "every model's LAMBADA accuracy is below 1 %", _lambada_low),
    Claim("two-gpu-faster", "two GPUs shorten the closed-form phase", _two_gpu_faster),
    Claim("teacher-gains-more", "widening helps teacher targets more than linearised targets", _teacher_gains_more),
    Claim("accumulation-dominates", "at the main model's size the accumulation costs more than the solve",
          _accumulation_dominates),
    Claim("cost-model-fits", "the cost model explains the measured solve times (R^2 >= 0.9)", _cost_model_fits),
)
BY_NAME = {c.name: c for c in CLAIMS}


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    status: str  # "holds", "contradicted", "not run"
    detail: str


def evaluate(res: Results) -> list[Outcome]:
    out = []
    for c in CLAIMS:
        try:
            ok, detail = c.check(res)
            out.append(Outcome(c, "holds" if ok else "contradicted", detail))
        except NotRun as e:
            out.append(Outcome(c, "not run", f"results missing: {e}"))
    return out


def check(res: Results) -> list[Outcome]:
    """Evaluate every claim; raise :class:`ReportError` naming each claim the results contradict."""
    out = evaluate(res)
    bad = [o for o in out if o.status == "contradicted"]
    if bad:
        raise ReportError("the results contradict claims the text makes:\n  " + "\n  ".join(
            f"{o.claim.name}: {o.claim.statement} ({o.detail})" for o in bad)
            + "\nRewrite the sentences marked \\claim{name}{...} in paper/sections and the claim in "
              "pillm/report/claims.py.")
    return out
