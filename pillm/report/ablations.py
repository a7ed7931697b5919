"""The ablations: Bi-PIL, λ, expansion, fusion, training strategy and targets, TinyStories, tuning."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .config import _TAGS, COMPETITIVE_TOL, METHOD_ORDER, PIL_METHODS, TABLE_TITLES, TARGET_TEX
from .fmt import (
    _finite, _natural_key, fmt_fixed, fmt_pct, fmt_plain, fmt_pow10, fmt_ppl, fmt_sci, fmt_seconds, method_tex,
    tex_escape,
)
from .numbers import similar, verdict
from .results import (
    _flag, _runs_where, add_paired, and_join, beyond_seed_spread, Experiment, primary_slice, spread_verdict,
)
from .tables import _records, ACC_COL, Col, COND_COL, generic_table, PIL_S_COL, PPL_COLS, TableSpec
from .analysis import _samples

if TYPE_CHECKING:
    from .sections import Report


def _ablation(rep: Report, name: str, key: str, caption: str, extra_cols: list[Col] | None = None):
    e = rep.R.exp(name)
    if not e.available or key not in e.df.columns:
        rep._no_table(name, caption, [name])
        return None, None, e
    cols = PPL_COLS + [ACC_COL] + (extra_cols or [COND_COL, PIL_S_COL])
    rep.tables[name] = generic_table(e, name, caption, [key], cols)
    agg, keys = e.agg()
    sl, sel = primary_slice(agg, keys, key)
    return _records(sl), ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows", e


def ablation_bipil(rep: Report) -> None:
    c = rep.c
    recs, where, e = _ablation(rep, "ablation_bipil", "variant", "Bi-PIL (two fused random projections) "
                                    "versus a single projection")
    c["bipil"] = None
    if recs:
        ppl = {str(r["variant"]): float(r["test_ppl"]) for r in recs if _finite(r.get("test_ppl"))}
        val = {str(r["variant"]): float(r["valid_ppl"]) if _finite(r.get("valid_ppl")) else math.inf for r in recs}
        if ppl:
            best = min(ppl, key=lambda v: val.get(v, math.inf))  # chosen on validation
            c["bipil"] = bp = {"best": best}
            rep.add("BiBestVariant", tex_escape(best), e, f"variant with the lowest mean valid_ppl, {where}")
            rep.add("BiBestPPL", fmt_ppl(ppl[best]), e, f"mean test_ppl of variant={best}, {where}")
            exp_of = {str(r["variant"]): r.get("expansion") for r in recs}
            is_bi = lambda v: "bi" in v.lower() or any(  # noqa: E731
                str(r.get("bipil")).lower() == "true" for r in recs if str(r["variant"]) == v)
            bi = [v for v in ppl if is_bi(v)]
            single = [v for v in ppl if v not in bi]
            if single and bi:
                bv = min(bi, key=ppl.get)
                same = [v for v in single if _finite(exp_of.get(v)) and exp_of.get(v) == exp_of.get(bv)]
                wide = [v for v in single if _finite(exp_of.get(v)) and _finite(exp_of.get(bv))
                        and float(exp_of[v]) == 2 * float(exp_of[bv])]
                sv = min(same or single, key=ppl.get)
                cmp = lambda a, b_: "similar" if similar(a, b_) else "better" if a < b_ else "worse"  # noqa: E731
                bp["compare"] = cmp(ppl[bv], ppl[sv])
                bp["same_width"] = bool(same)
                rep.add("BiPILPPL", fmt_ppl(ppl[bv]), e, f"mean test_ppl of variant={bv}, {where}")
                rep.add("SinglePILPPL", fmt_ppl(ppl[sv]), e, f"mean test_ppl of variant={sv}, {where}")
                rep.add("BiVsSinglePct", fmt_pct(abs(100 * (ppl[bv] / ppl[sv] - 1))), e,
                        f"|100*(ppl[{bv}]/ppl[{sv}]-1)|, {where}")
                if wide:
                    wv = min(wide, key=ppl.get)
                    bp["compare_wide"] = cmp(ppl[bv], ppl[wv])
                    rep.add("SingleWidePPL", fmt_ppl(ppl[wv]), e, f"mean test_ppl of variant={wv}, {where}")
                    rep.add("BiVsWidePct", fmt_pct(abs(100 * (ppl[bv] / ppl[wv] - 1))), e,
                            f"|100*(ppl[{bv}]/ppl[{wv}]-1)|, {where}")


def ablation_lambda(rep: Report) -> None:
    c = rep.c
    recs, where, e = _ablation(rep, "ablation_lambda", "lam", r"Sensitivity to the relative ridge "
                                    r"$\lambda$; $\kappa$ is the largest condition number of "
                                    r"$G_c+\lambda_{\mathrm{abs}}I$ over layers",
                                    [COND_COL, Col("any_fallback", "Fallback", lambda x: fmt_pct(100 * x) + r"\,\%", None, std=False), PIL_S_COL])
    c["lam"] = None
    if recs:
        pts = sorted((float(r["lam"]), float(r["test_ppl"]), r.get("max_cond"), float(r["valid_ppl"])) for r in recs
                     if _finite(r.get("lam")) and _finite(r.get("test_ppl")) and _finite(r.get("valid_ppl")))
        if pts:
            lb, pb, kb, _ = min(pts, key=lambda p: p[3])  # chosen on validation
            c["lam"] = lm = {"n": len(pts), "edge": "low" if lb == pts[0][0] and len(pts) > 1 else
                             "high" if lb == pts[-1][0] and len(pts) > 1 else None}
            rep.add("LambdaBest", fmt_pow10(lb), e, f"lam with the lowest mean valid_ppl, {where}", lb)
            rep.add("LambdaBestPPL", fmt_ppl(pb), e, f"mean test_ppl at the best lam, {where}", pb)
            if _finite(kb):
                rep.add("LambdaBestCond", fmt_sci(float(kb)), e, f"mean max_cond at the best lam, {where}")
            rep.add("LambdaMin", fmt_pow10(pts[0][0]), e, f"smallest lam tested, {where}")
            rep.add("LambdaMax", fmt_pow10(pts[-1][0]), e, f"largest lam tested, {where}")
            ok = [p[0] for p in pts if p[1] <= min(q[1] for q in pts) * (1 + COMPETITIVE_TOL)]
            lm["robust_all"] = len(ok) == len(pts)
            rep.add("LambdaRobustLow", fmt_pow10(min(ok)), e, f"smallest lam within 5% of the best test_ppl, {where}")
            rep.add("LambdaRobustHigh", fmt_pow10(max(ok)), e, f"largest lam within 5% of the best test_ppl, {where}")
            lm["robust_single"] = len(ok) == 1
            conds = [(p[0], float(p[2])) for p in pts if _finite(p[2])]
            if len(conds) > 1:
                rep.add("LambdaCondAtMin", fmt_sci(conds[0][1]), e, f"mean max_cond at the smallest lam, {where}")
                rep.add("LambdaCondAtMax", fmt_sci(conds[-1][1]), e, f"mean max_cond at the largest lam, {where}")
                lm["cond_decreasing"] = all(a[1] >= b_[1] for a, b_ in zip(conds, conds[1:]))
            # the λ every closed-form method of the main comparison solves with (not tuned per method)
            b = rep.R.exp("benchmark")
            main = {float(r["train_config"]["lam"]) for r in (b.runs() if b.available else [])
                    if r.get("method") in PIL_METHODS and _finite((r.get("train_config") or {}).get("lam"))}
            if len(main) == 1:
                (lam_main,) = main
                rep.add("LambdaMain", fmt_pow10(lam_main), b, "train_config.lam of every closed-form benchmark run",
                        lam_main)
                lm["main_is_best"] = math.isclose(lam_main, lb)
            fb = [r for r in recs if _finite(r.get("any_fallback")) and float(r["any_fallback"]) > 0]
            lm["fallback"] = bool(fb)
            if fb:
                rep.add("LambdaFallbackMax", fmt_pow10(max(float(r["lam"]) for r in fb)), e,
                        f"largest lam with any solver fallback, {where}")


def ablation_expansion(rep: Report) -> None:
    c = rep.c
    recs, where, e = _ablation(rep, "ablation_expansion", "expansion", "Effect of the random-feature "
                                    "width (expansion = hidden width / model width, per projection)")
    c["expansion"] = None
    if recs:
        pts = sorted((float(r["expansion"]), float(r["test_ppl"])) for r in recs
                     if _finite(r.get("expansion")) and _finite(r.get("test_ppl")))
        if len(pts) > 1:
            xb, pb = min(pts, key=lambda p: p[1])
            mono = all(b_[1] <= a[1] for a, b_ in zip(pts, pts[1:]))
            c["expansion"] = {"trend": "monotone" if mono else ("peak" if xb not in (pts[0][0], pts[-1][0])
                                                                else "irregular" if xb == pts[-1][0] else "smallest")}
            by_x = {float(r["expansion"]): r for r in recs if _finite(r.get("expansion"))}
            c["expansion"]["within_spread"] = not beyond_seed_spread(by_x[pts[0][0]], by_x[pts[-1][0]])
            c["expansion"]["steps_within"] = not any(beyond_seed_spread(by_x[a], by_x[b_])
                                                     for (a, _), (b_, _) in zip(pts, pts[1:]))
            rep.add("ExpansionBest", fmt_plain(xb), e, f"expansion with the lowest mean test_ppl, {where}")
            rep.add("ExpansionBestPPL", fmt_ppl(pb), e, f"mean test_ppl at the best expansion, {where}")
            rep.add("ExpansionMin", fmt_plain(pts[0][0]), e, f"smallest expansion tested, {where}")
            rep.add("ExpansionMinPPL", fmt_ppl(pts[0][1]), e, f"mean test_ppl at the smallest expansion, {where}")
            rep.add("ExpansionMax", fmt_plain(pts[-1][0]), e, f"largest expansion tested, {where}")
            rep.add("ExpansionMaxPPL", fmt_ppl(pts[-1][1]), e, f"mean test_ppl at the largest expansion, {where}")


def ablation_fusion(rep: Report) -> None:
    c = rep.c
    recs, where, e = _ablation(rep, "ablation_fusion", "fusion", "Fusion of the two Bi-PIL projections: "
                                    r"concatenation, sum, or gate ($\mathrm{GELU}(z_1)\odot\sigma(z_2)$)")
    c["fusion"] = None
    if recs:
        rows = {str(r["fusion"]): r for r in recs if _finite(r.get("test_ppl")) and _finite(r.get("valid_ppl"))}
        ppl = {k: float(r["test_ppl"]) for k, r in rows.items()}
        if len(ppl) > 1:  # best and worst on validation; their test perplexities are reported
            best = min(rows, key=lambda k: float(rows[k]["valid_ppl"]))
            worst = max(rows, key=lambda k: float(rows[k]["valid_ppl"]))
            c["fusion"] = {"matters": beyond_seed_spread(rows[best], rows[worst]),
                           "noise": not similar(ppl[best], ppl[worst])}
            rep.add("FusionBest", tex_escape(best), e, f"fusion with the lowest mean valid_ppl, {where}")
            rep.add("FusionBestPPL", fmt_ppl(ppl[best]), e, f"mean test_ppl of fusion={best}, {where}")
            rep.add("FusionWorst", tex_escape(worst), e, f"fusion with the highest mean valid_ppl, {where}")
            rep.add("FusionWorstPPL", fmt_ppl(ppl[worst]), e, f"mean test_ppl of fusion={worst}, {where}")


def strategy(rep: Report) -> None:
    e = rep.R.exp("training_strategy")
    rep.c["strategy"] = None
    cap = "Targets for the closed-form solve and the order of the closed-form and gradient phases"
    if not e.available or "target" not in e.df.columns:
        rep._no_table("training_strategy", cap, ["training_strategy"])
        return
    rep.tables["training_strategy"] = generic_table(e, "training_strategy", cap, ["method", "target"],
                                                    PPL_COLS + [ACC_COL, PIL_S_COL])
    agg, keys = e.agg()
    main = [k for k in ("method", "target") if k in keys]
    sl, sel = primary_slice(agg, keys, main)
    where = ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows"
    recs = [r for r in _records(sl) if _finite(r.get("test_ppl"))]
    if not recs:
        return
    on_valid = lambda r: float(r["valid_ppl"]) if _finite(r.get("valid_ppl")) else float(r["test_ppl"])  # noqa: E731
    best, worst = min(recs, key=on_valid), max(recs, key=on_valid)  # chosen on validation
    st = rep.c["strategy"] = {"methods": sorted({str(r.get("method", "")) for r in recs}, key=_natural_key)}
    tt = lambda r: TARGET_TEX.get(str(r["target"]), tex_escape(r["target"]))  # noqa: E731
    rep.add("StrategyBestTarget", tt(best), e, f"target of the lowest mean valid_ppl, {where}")
    rep.add("StrategyBestPPL", fmt_ppl(best["test_ppl"]), e, f"mean test_ppl of the lowest mean valid_ppl, {where}")
    if "method" in best:
        rep.add("StrategyBestMethod", method_tex(best["method"]), e, f"method of the lowest mean valid_ppl, {where}")
    rep.add("StrategyWorstTarget", tt(worst), e, f"target of the highest mean valid_ppl, {where}")
    if "method" in worst:
        rep.add("StrategyWorstMethod", method_tex(worst["method"]), e,
                f"method of the highest mean valid_ppl, {where}")
    rep.add("StrategyWorstPPL", fmt_ppl(worst["test_ppl"]), e, f"mean test_ppl of the highest mean valid_ppl, {where}")
    same_method = [r for r in recs if r.get("method") == best.get("method")]
    rows_by_target = {str(r["target"]): r for r in same_method}
    per_target = {t: r["test_ppl"] for t, r in rows_by_target.items()}
    if "local" in per_target and "global" in per_target:
        v = spread_verdict(rows_by_target["local"], rows_by_target["global"])
        st["local_vs_global"] = {"within": "similar", "better": "local", "worse": "global"}[v]
        st["local_vs_global_method"] = method_tex(best["method"]) if "method" in best else None
        rep.add("StrategyLocalPPL", fmt_ppl(per_target["local"]), e, f"mean test_ppl target=local, method={best.get('method')}, {where}")
        rep.add("StrategyGlobalPPL", fmt_ppl(per_target["global"]), e, f"mean test_ppl target=global, method={best.get('method')}, {where}")
    if "zero" in per_target:
        rep.add("StrategyZeroPPL", fmt_ppl(per_target["zero"]), e, f"mean test_ppl target=zero, method={best.get('method')}, {where}")
        st["zero"] = True
        # every other target against the zero target of its own method: the reference, read for the reader
        zero_of = {str(r.get("method")): r for r in recs if str(r.get("target")) == "zero"}
        vs_zero: dict[str, dict[str, list[str]]] = {"better": {}, "within": {}, "worse": {}}
        for r in recs:
            z = zero_of.get(str(r.get("method")))
            if z is not None and r is not z:
                by_method = vs_zero[spread_verdict(r, z)]
                by_method.setdefault(method_tex(r["method"]) if "method" in r else "", []).append(tt(r))
        def group(m: str, targets: list[str]) -> str:  # "PIL→attention with the global and local targets"
            words = f"{and_join(targets)} target{'s' if len(targets) > 1 else ''}"
            return f"{m} with the {words}" if m else words

        st["vs_zero"] = {k: and_join([group(m, ts) for m, ts in v.items()]) for k, v in vs_zero.items()}
        st["vs_zero_n"] = {k: sum(map(len, v.values())) for k, v in vs_zero.items()}
    if "teacher" in per_target:
        rep.add("StrategyTeacherPPL", fmt_ppl(per_target["teacher"]), e, f"mean test_ppl target=teacher, method={best.get('method')}, {where}")
        st["teacher"] = True
        st["teacher_best"] = per_target["teacher"] <= min(r["test_ppl"] for r in recs)


def tinystories(rep: Report) -> None:
    e = rep.R.exp("tinystories")
    rep.c["tiny"] = None
    cap = "TinyStories (BPE tokenizer)"
    if not e.available:
        rep._no_table("tinystories", cap, ["tinystories"])
        rep.c["samples"] = None
        return
    rep.tables["tinystories"] = generic_table(e, "tinystories", cap, ["method"],
                                              PPL_COLS + [ACC_COL, PIL_S_COL,
                                                          Col("total_s", r"Total (s) $\downarrow$", fmt_seconds, "lower")])
    agg, keys = e.agg()
    sl, sel = primary_slice(agg, keys, "method") if "method" in keys else (agg, {})
    where = ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows"
    ppl = {str(r.get("method")): float(r["test_ppl"]) for r in _records(sl) if _finite(r.get("test_ppl"))}
    ty = rep.c["tiny"] = {}
    if "baseline" in ppl:
        rep.add("TinyBaselinePPL", fmt_ppl(ppl["baseline"]), e, f"mean test_ppl of baseline, {where}")
    if "attn_only" in ppl:
        rep.add("TinyAttnOnlyPPL", fmt_ppl(ppl["attn_only"]), e, f"mean test_ppl of attn_only, {where}")
    hyb = {m: v for m, v in ppl.items() if m in PIL_METHODS}
    val = {str(r.get("method")): float(r["valid_ppl"]) for r in _records(sl) if _finite(r.get("valid_ppl"))}
    if hyb:
        h = min(hyb, key=lambda m: val.get(m, hyb[m]))  # chosen on validation
        rep.add("TinyPILPPL", fmt_ppl(hyb[h]), e, f"mean test_ppl of the PIL method with the lowest mean "
                f"valid_ppl ({h}), {where}")
        rep.add("TinyPILMethod", method_tex(h), e, f"PIL method with the lowest mean valid_ppl, {where}")
        if "baseline" in ppl:
            ty["verdict"] = verdict(hyb[h], ppl["baseline"])
    rep.c["samples"] = _samples(e)


def tuning(rep: Report) -> None:
    """Fair tuning (``tuning`` notebook): the same lr × dropout grid per gradient-trained method,
    chosen on validation; ``chosen.csv`` has one row per method."""
    import pandas as pd

    e = rep.R.exp("tuning")
    rep.c["tuning"] = None
    path = e.path / "chosen.csv"
    cap = ("Learning rate and dropout chosen on validation perplexity, the same grid for every "
           "gradient-trained method (one seed per trial)")
    if not e.available or not path.is_file():
        rep._no_table("tuning", cap, ["tuning"])
        rep._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
        return
    df = pd.read_csv(path)
    df = df.iloc[sorted(range(len(df)), key=lambda i: METHOD_ORDER.index(df["method"].iloc[i])
                        if df["method"].iloc[i] in METHOD_ORDER else len(METHOD_ORDER))].reset_index(drop=True)
    done = _flag(df["complete"]) if "complete" in df.columns else pd.Series(True, index=df.index)
    trials = int(df["trials"].max())
    rows = [[method_tex(r.method), str(int(r.trials)), fmt_sci(float(r.lr)), fmt_fixed(float(r.dropout), 2),
             fmt_ppl(r.valid_ppl), fmt_ppl(r.default_valid_ppl), fmt_ppl(r.test_ppl)] if ok else
            [method_tex(r.method), f"{int(r.trials)} of {trials}",
             r"\multicolumn{5}{l}{grid incomplete: no choice yet}"]
            for ok, r in zip(done, df.itertuples())]
    rep.tables["tuning"] = TableSpec(
        name="tuning", caption=cap, label="tab:tuning", align="lrrrrrr",
        sources=[Experiment("tuning", rep.profile, e.path, None, path, e.provenance)],
        header=["Method", "Trials", "lr", "Dropout", "Valid PPL (chosen)", "Valid PPL (common)", "Test PPL (chosen)"],
        rows=rows)
    src = path
    rep.c["tuning"] = t = {"incomplete": [method_tex(m) for m in df.loc[~done, "method"]]}
    # Whether the main benchmark ran every method at the common (untuned) setting.
    default = (e.provenance.get("parameters") or {}).get("default") or {}
    bench = rep.R.exp("benchmark").runs()
    used = {(r.get("train_config", {}).get("lr"), r.get("model_config", {}).get("dropout")) for r in bench}
    t["main_common"] = bool(bench) and used == {(default.get("lr"), default.get("dropout"))}
    rep.add("TuneTrials", str(trials), src, "trials per method (largest)", trials)
    # the values searched, as run (summary.csv), so that a reader sees where each choice lies in the grid
    grids = {p: sorted({float(v) for v in e.df.get(p, []) if _finite(v)}) if e.available else []
             for p in ("lr", "dropout")}
    for param, tag, fmt in (("lr", "LR", fmt_sci), ("dropout", "Dropout", lambda v: fmt_fixed(v, 2))):
        if grids[param]:
            rep.add(f"Tune{tag}Grid", ", ".join(fmt(v) for v in grids[param]), e,
                    f"the {param} values of the tuning runs (summary.csv)", len(grids[param]))
    df = df[done]
    if not len(df):
        rep._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
        return
    is_default = _flag(df["chosen_is_default"])
    n_default = int(is_default.sum())
    gain = 100 * (1 - df["valid_ppl"] / df["default_valid_ppl"])
    i = gain.idxmax()
    t["all_default"] = n_default == len(df)
    t["changed"] = [method_tex(m) for m in df.loc[~is_default, "method"]]
    rep.add("TuneMethods", str(len(df)), src, "complete rows of tuning/chosen.csv", len(df))
    rep.add("TuneDefaultCount", str(n_default), src, "complete rows with chosen_is_default", n_default)
    rep.add("TuneMaxGainPct", fmt_pct(float(gain[i])), src,
            "max over methods of 100*(1-valid_ppl/default_valid_ppl)", float(gain[i]))
    rep.add("TuneMaxGainMethod", method_tex(df["method"][i]), src, "method with that largest gain")
    # A choice at the end of a grid of three or more values: the grid, not the data, stopped it. With two
    # values every choice is at an end; it is said only when every method chose the same end.
    t["edges"] = []
    for param, grid in grids.items():
        if len(grid) < 2:
            continue
        for end, value in (("largest", grid[-1]), ("smallest", grid[0])):
            at = [method_tex(m) for m, v in zip(df["method"], df[param]) if math.isclose(float(v), value)]
            every = len(df) > 1 and len(at) == len(df)
            if at and (len(grid) >= 3 or every):
                tag = f"{'LR' if param == 'lr' else 'Dropout'}{'Top' if end == 'largest' else 'Bottom'}"
                rep.add(f"TuneEdge{tag}", fmt_sci(value) if param == "lr" else fmt_fixed(value, 2), e,
                        f"the {end} {param} of the tuning grid (summary.csv)", value)
                t["edges"].append({"param": "learning rate" if param == "lr" else "dropout", "end": end,
                                   "macro": f"TuneEdge{tag}",
                                   "methods": [("every method with a complete grid" if t["incomplete"] else
                                                "every method")] if every else at,
                                   "every": every})
    lam_of = _tuned_lambda(rep, e, {r.method: (float(r.lr), float(r.dropout)) for r in df.itertuples()})
    _tuned(rep, e, lam_of)


def _tuned_lambda(rep: Report, e: Experiment, setting: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``chosen_lam.csv`` (when the notebook searched λ): per closed-form method that trains, the ridge λ chosen
    on validation at its chosen lr and dropout (``setting``: method → (lr, dropout), chosen.csv's complete rows);
    ``c["tuning"]["lambdas"]``, one entry per method. Returns each complete method's chosen λ."""
    import pandas as pd

    t = rep.c["tuning"]
    t["lambdas"] = None
    path = e.path / "chosen_lam.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    complete = _flag(df["complete"]) if "complete" in df.columns else pd.Series(True, index=df.index)
    done = df[complete]
    grid = sorted({float(v) for v in pd.read_csv(e.path / "lambda.csv")["lam"]}) if (
        e.path / "lambda.csv").is_file() else []
    t["lambdas"] = out = []
    for tag, r, common in zip(_TAGS, done.itertuples(), _flag(done["chosen_is_default"])):
        rep.add(f"TunedLam{tag}Method", method_tex(r.method), path, f"method of complete row {tag}")
        rep.add(f"TunedLam{tag}", fmt_pow10(float(r.lam)), path, f"lam chosen on validation, method={r.method}",
                float(r.lam))
        # what the choice bought on validation (the search's seed; ≥ 0: the choice is the minimum), as the
        # lr/dropout search reports it; NaN when the common λ was not among the trials
        gain = 100 * (1 - float(r.valid_ppl) / float(r.default_valid_ppl))
        if not common and _finite(gain):
            rep.add(f"TunedLam{tag}GainPct", fmt_pct(abs(gain)), path,
                    f"|100*(1-valid_ppl/default_valid_ppl)|, method={r.method}", gain)
        # at an end of a grid of three or more: the grid, not the data, stopped the choice
        out.append({"tag": tag, "common": bool(common),
                    "edge": len(grid) > 2 and float(r.lam) in (grid[0], grid[-1]),
                    "paired": (not common and r.method in setting
                               and _lambda_paired(rep, e, tag, r, *setting[r.method]))})
    if grid:
        rep.add("TunedLamGridLow", fmt_pow10(grid[0]), e.path / "lambda.csv", "the smallest lam of the search", grid[0])
        rep.add("TunedLamGridHigh", fmt_pow10(grid[-1]), e.path / "lambda.csv", "the largest lam of the search",
                grid[-1])
    t["lambdas_incomplete"] = [method_tex(m) for m in df.loc[~complete, "method"]]
    return {str(m): float(x) for m, x in zip(done["method"], done["lam"])}


def _lambda_paired(rep: Report, e: Experiment, tag: str, row, lr: float, dropout: float) -> bool:
    """The confirmation runs of a method at its chosen λ against its runs at the common λ (the λ of its
    lr × dropout trials, summary.csv), same lr, dropout and seed: means over the seeds that have both, and the
    per-seed difference (:func:`add_paired`), as ``TunedLam<tag>{PPL,CommonPPL,PairedDiff,PairedLower}``."""
    import statistics as st

    lam_of = lambda r: float((r.get("train_config") or {}).get("lam", math.nan))  # noqa: E731
    grid_lams = {lam_of(r) for r in _runs_where(e, {"method": row.method})}
    if len(grid_lams) != 1:
        return False
    common_lam, lam = grid_lams.pop(), float(row.lam)
    chosen, common = {}, {}
    for r in e.runs():
        if (r.get("method") != row.method or not _finite(r.get("test_ppl"))
                or not math.isclose(float((r.get("train_config") or {}).get("lr", math.nan)), lr)
                or not math.isclose(float((r.get("model_config") or {}).get("dropout", math.nan)), dropout)):
            continue
        for at, runs in ((lam, chosen), (common_lam, common)):
            if math.isclose(lam_of(r), at):
                runs[r["seed"]] = float(r["test_ppl"])
    seeds = sorted(set(chosen) & set(common))
    where = f"method={row.method}, lr={lr:g}, dropout={dropout:g}, seeds {seeds}"
    if add_paired(rep, e, f"TunedLam{tag}", [chosen[s] - common[s] for s in seeds], f"lam={lam:g}",
                  f"lam={common_lam:g}", f", {where}") is None:
        return False
    ppl, base = st.mean(chosen[s] for s in seeds), st.mean(common[s] for s in seeds)
    rep.add(f"TunedLam{tag}PPL", fmt_ppl(ppl), e, f"mean test_ppl of the runs at lam={lam:g}, {where}", ppl)
    rep.add(f"TunedLam{tag}CommonPPL", fmt_ppl(base), e, f"mean test_ppl of the runs at lam={common_lam:g}, {where}",
            base)
    return True


def _tuned(rep: Report, e: Experiment, lam_of: dict[str, float]) -> None:
    """``tuned.csv``: every method with a complete grid at its chosen setting (``lam_of``: the λ chosen per
    closed-form method, :func:`_tuned_lambda`), with more seeds."""
    import pandas as pd

    path = e.path / "tuned.csv"
    if not path.is_file():
        rep._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
        return
    df = pd.read_csv(path)
    if "lam" in df.columns:
        # a run at the common λ has no lam in its name: show the λ the search chose for it (the common one)
        df["lam"] = df["lam"].fillna(df["method"].map(lam_of))
    tuned = Experiment("tuning", rep.profile, e.path, df, path, e.provenance)
    own = ("learning rate and dropout" if "lam" not in tuned.df.columns else
           r"learning rate and dropout (and, for the closed-form methods that train, ridge $\lambda$)")
    rep.tables["tuned"] = generic_table(
        tuned, "tuned", f"Every method at its own {own} chosen on validation "
        "(Table~\\ref{tab:tuning}), with the grid's seed and more", ["method"], PPL_COLS + [ACC_COL])
    by = {str(r["method"]): r for r in _records(tuned.agg()[0])}
    t = rep.c["tuning"]
    if "baseline" in by:
        rep.add("TunedBaselinePPL", fmt_ppl(by["baseline"]["test_ppl"]), path,
                "mean test_ppl of baseline in tuning/tuned.csv", by["baseline"]["test_ppl"])
    pil = {m: r for m, r in by.items() if m in PIL_METHODS}
    if pil:  # the best PIL-LM hybrid at its own setting, chosen on validation
        m = min(pil, key=lambda k: pil[k]["valid_ppl"])
        t["tuned_pil"] = m
        rep.add("TunedPILMethod", method_tex(m), path, "PIL method with the lowest mean valid_ppl in tuned.csv")
        rep.add("TunedPILPPL", fmt_ppl(pil[m]["test_ppl"]), path, f"mean test_ppl of {m} in tuned.csv",
                pil[m]["test_ppl"])
        if "baseline" in by:
            ratio = pil[m]["test_ppl"] / by["baseline"]["test_ppl"]
            rep.add("TunedRatio", fmt_fixed(ratio, 2), path, f"test_ppl {m} / baseline in tuned.csv", ratio)
        if "attn_only" in by:  # the FFN's contribution at each method's own setting
            rep.add("TunedAttnOnlyPPL", fmt_ppl(by["attn_only"]["test_ppl"]), path,
                    "mean test_ppl of attn_only in tuned.csv", by["attn_only"]["test_ppl"])
            t["tuned_pil_vs_attn"] = spread_verdict(pil[m], by["attn_only"])
    counts = tuned.df.groupby("method")["seed"].nunique()
    lo, hi = int(counts.min()), int(counts.max())
    t["tuned_seeds_vary"] = lo != hi
    rep.add("TunedSeeds", str(hi), path, "most seeds of a method in tuned.csv", hi)
    rep.add("TunedSeedsMin", str(lo), path, "fewest seeds of a method in tuned.csv", lo)
