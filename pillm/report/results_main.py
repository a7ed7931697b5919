"""The main results: the benchmark table and its comparisons, LAMBADA, the training curves."""

from __future__ import annotations

import math
import statistics as st
from typing import TYPE_CHECKING, Any

from .config import _TAGS, HYBRID_METHODS, LAMBADA_LOW, PIL_METHODS, SIZE_ORDER
from .fmt import (
    _finite, _natural_key, dataset_tex, fmt_count, fmt_fixed, fmt_params, fmt_pct, fmt_pow10, fmt_ppl, fmt_ratio,
    fmt_sci, fmt_seconds, method_tex, tex_escape,
)
from .numbers import verdict
from .results import concurrency, Experiment, gap_recovered_pct, primary_slice, spread_verdict
from .tables import (
    _epochs_text, _eta_at_top, _records, _rf_features, _searched, ACC_COL, Col, generic_table, PIL_S_COL, PPL_COLS,
    TableSpec,
)
from .analysis import _lambada_scores

if TYPE_CHECKING:
    from .sections import Report


#: A run "diverged" when its last validation perplexity is above this multiple of its best one.
DIVERGED_RATIO = 2.0


def benchmark(rep: Report) -> None:
    e = rep.R.exp("benchmark")
    c = rep.c
    c["bench"] = None
    if not e.available:
        rep._no_table("benchmark", "Main results: test perplexity, accuracy, optimizer steps, "
                                    "parameters and time per method", ["benchmark"])
        return
    conc = concurrency(e)
    cols = PPL_COLS + [ACC_COL,
                       Col("optimizer_steps", "Opt.\\ steps", fmt_count, None, std=False),
                       Col("params_trained", "Trained", fmt_params, None, std=False),
                       Col("params_solved", "Solved", fmt_params, None, std=False),
                       PIL_S_COL,
                       Col("total_s", r"Total (s) $\downarrow$", fmt_seconds, "lower")]  # unranked if shared
    t = generic_table(e, "benchmark", "Main results. Perplexity (PPL) and next-token accuracy on the test "
                      "split, optimizer steps, parameters updated by AdamW (Trained) or solved in closed "
                      "form (Solved), time of the closed-form phases (PIL) and total training time",
                      ["method"], cols)
    t.star = True
    notes = [t.note] if t.note else []  # generic_table's note on contended timings
    if conc > 1:  # contended timings: shown, but no speed claim is made from them
        notes.append("Section~\\ref{sec:complexity} gives timings measured alone.")
    anchored = _kn_anchor(rep, e, t)
    if anchored:
        notes.append("The Kneser--Ney row is the highest-order count-based model of Table~\\ref{tab:ngram} (no "
                     "gradient step; counts on the training split): it conditions each word on the preceding words "
                     "of its line and predicts each line's end, whereas the Transformers are scored on "
                     "non-overlapping windows (Section~\\ref{sec:evaluation}).")
    t.note = " ".join(notes)
    rep.tables["benchmark"] = t

    agg, keys = e.agg()
    by, sl, sel, where = _bench_rows(rep, e)
    d, s = sel.get("dataset", ""), sel.get("size", "")
    ppl = {m: float(r["test_ppl"]) for m, r in by.items() if _finite(r.get("test_ppl"))}
    others = [k for k in keys if k != "method"]
    c["bench"] = b = {"methods": sorted(ppl, key=_natural_key),
                      "groups": int(agg.groupby(others).ngroups) if others else 1, "concurrent": conc,
                      "kn_anchor": anchored}
    if b["groups"] > 1:
        rep.add("BenchOtherGroups", str(b["groups"] - 1), e, "configurations (size, epochs) of the benchmark other "
                f"than the primary group ({where})", b["groups"] - 1)
    if conc > 1:
        rep.add("BenchConcurrent", str(conc), e, "max environment.concurrent_runs over the benchmark runs", conc)
    if d:
        rep.add("BenchDataset", dataset_tex(d), e, f"dataset of the primary group ({where})")
    if s:
        rep.add("BenchSize", tex_escape(s), e, f"model size of the primary group ({where})")
    rep.add("BenchSeeds", str(int(sl["n"].max())), e, "max number of seeds per method in the primary group",
            int(sl["n"].max()))
    macros = {"baseline": "BaselinePPL", "attn_only": "AttnOnlyPPL", "pil_pure": "PILPurePPL",
              "rf_adamw": "RFAdamWPPL", "lora": "LoRAPPL"}
    for m, macro in macros.items():
        if m in ppl:
            rep.add(macro, fmt_ppl(ppl[m]), e, f"mean test_ppl, method={m}, {where}", ppl[m])
    pil = {m: v for m, v in ppl.items() if m in PIL_METHODS}
    hyb = {m: v for m, v in ppl.items() if m in HYBRID_METHODS}
    # the best PIL method and the best hybrid are chosen on validation; their test perplexity is reported
    on_valid = lambda m: float(by[m]["valid_ppl"]) if _finite(by[m].get("valid_ppl")) else math.inf  # noqa: E731
    if pil:
        m = min(pil, key=on_valid)
        b["pil_best"] = m
        rep.add("PILBestPPL", fmt_ppl(pil[m]), e, f"mean test_ppl of the PIL method with the lowest mean "
                f"valid_ppl ({m}), {where}", pil[m])
        rep.add("PILBestMethod", method_tex(m), e, f"PIL method with the lowest mean valid_ppl, {where}")
    if hyb:
        h = min(hyb, key=on_valid)
        b["hybrid"] = h
        rep.add("HybridBestPPL", fmt_ppl(hyb[h]), e, f"mean test_ppl of the hybrid with the lowest mean "
                f"valid_ppl ({h}), {where}", hyb[h])
        rep.add("HybridBestMethod", method_tex(h), e, f"hybrid method with the lowest mean valid_ppl, {where}")
        hr = by[h]
        if _finite(hr.get("pil_s")) and _finite(hr.get("total_s")) and hr["total_s"] > 0:
            rep.add("HybridPILSeconds", fmt_seconds(hr["pil_s"]), e, f"mean pil_s of {h}, {where}")
            rep.add("HybridPILShare", fmt_pct(100 * hr["pil_s"] / hr["total_s"]), e,
                    f"100*pil_s/total_s of {h}, {where}")
        if _finite(hr["params_solved"]) and _finite(hr.get("params_total")):
            rep.add("HybridSolvedParams", fmt_params(hr["params_solved"]), e,
                    f"params_ffn_solved+params_head_solved of {h}, {where}")
            rep.add("HybridSolvedShare", fmt_pct(100 * hr["params_solved"] / hr["params_total"]), e,
                    f"100*solved/params_total of {h}, {where}")
    if "baseline" in ppl and hyb:
        h, base = b["hybrid"], by["baseline"]
        b["verdict"] = verdict(hyb[h], ppl["baseline"])
        gap = 100 * (hyb[h] / ppl["baseline"] - 1)
        b["gap_sign"] = "higher" if gap > 0 else "lower"
        rep.add("HybridGapPct", fmt_pct(abs(gap)), e, f"|100*(test_ppl[{h}]/test_ppl[baseline]-1)|, {where}")
        hr = by[h]
        if (conc == 1 and _finite(base.get("total_s")) and _finite(hr.get("total_s")) and hr["total_s"] > 0
                and base["total_s"] > 0):  # speed claims only from runs timed alone
            r = base["total_s"] / hr["total_s"]
            b["speed"] = "faster" if r >= 1 else "slower"
            rep.add("HybridSpeedup", fmt_ratio(max(r, 1 / r)), e,
                    f"total_s[baseline]/total_s[{h}] (or its inverse when <1), {where}", r)
        if _finite(base.get("optimizer_steps")) and _finite(hr.get("optimizer_steps")):
            rep.add("BaselineSteps", fmt_count(base["optimizer_steps"]), e, f"optimizer_steps of baseline, {where}")
            rep.add("HybridSteps", fmt_count(hr["optimizer_steps"]), e, f"optimizer_steps of {h}, {where}")
    if "pil_pure" in ppl:
        b["pure_ppl"] = ppl["pil_pure"]
    if "baseline" in ppl and "pil_pure" in ppl:
        b["pure_verdict"] = verdict(ppl["pil_pure"], ppl["baseline"])
        pr = by["pil_pure"]
        if _finite(pr.get("optimizer_steps")):
            b["pure_steps_zero"] = float(pr["optimizer_steps"]) == 0
    if {"baseline", "attn_only"} <= set(ppl) and hyb:
        ret = gap_recovered_pct(ppl, b["hybrid"])
        if ret is not None:
            b["retention"] = "none" if ret <= 0 else ("full" if ret >= 100 else "partial")
            rep.add("Retention", fmt_pct(abs(ret) if ret <= 0 else ret), e,
                    f"100*(ln ppl[attn_only]-ln ppl[{b['hybrid']}])/(ln ppl[attn_only]-ln ppl[baseline]), {where}", ret)
            b["ffn_helps_baseline"] = ppl["baseline"] < ppl["attn_only"]
            # a share of a gap can be an artefact of seeds: say when the hybrid is within attention only's spread
            b["hybrid_vs_attn"] = spread_verdict(by[b["hybrid"]], by["attn_only"])
    if "rf_adamw" in ppl and hyb:
        b["closed_vs_grad"] = verdict(hyb[b["hybrid"]], ppl["rf_adamw"])
    if "attn_only" in ppl and pil:
        b["pil_beats_attn"] = pil[b["pil_best"]] < ppl["attn_only"]
    if "attn_only" in ppl and "pil_pure" in ppl:
        b["pure_beats_attn"] = ppl["pil_pure"] < ppl["attn_only"]
    _bench_groups(rep, e, sel)
    _diverged(rep, e)
    runs = e.df[e.df["method"].astype(str).isin(PIL_METHODS)] if "method" in e.df.columns else e.df.iloc[:0]
    # per run, not per row of the table (a row's max_cond is a mean over seeds)
    conds = [float(v) for v in runs.get("max_cond", []) if _finite(v)]
    if conds:
        rep.add("BenchMaxCond", fmt_sci(max(conds)), e, "max of max_cond over all PIL runs", max(conds))
    if "any_fallback" in e.df.columns:
        if len(runs):
            fb = int(runs["any_fallback"].astype(str).str.lower().isin(("true", "1", "1.0")).sum())
            b["fallbacks"] = fb
            rep.add("BenchFallbackRuns", str(fb), e, "PIL runs with any_fallback true")
            rep.add("BenchPILRuns", str(len(runs)), e, "number of PIL runs (rows)")


def _kn_anchor(rep: Report, e: Experiment, t: TableSpec) -> bool:
    """Append the gradient-free anchor to the main table: the highest-order Kneser–Ney model of the
    ``ngram`` experiment (WikiText-2), when the benchmark is on WikiText-2 too. True if appended."""
    kn = rep.R.exp("ngram")
    datasets = set(e.df["dataset"]) if "dataset" in e.df.columns else set()
    if (not kn.available or kn.error or datasets != {"wikitext2"}
            or not {"order", "test_ppl", "valid_ppl"} <= set(kn.df.columns)):
        return False
    top = kn.df.sort_values("order").iloc[-1]
    known = {"test_ppl": fmt_ppl(float(top.test_ppl)), "valid_ppl": fmt_ppl(float(top.valid_ppl)),
             "optimizer_steps": "0", "params_trained": "0"}
    t.blocks.append(("gradient-free anchor", len(t.rows)))
    keys = [f"Kneser--Ney {int(top.order)}-gram"] + [""] * (t.ncols - len(t.metrics) - 1)
    t.rows.append(keys + [known.get(k, "--") for k in t.metrics])
    t.sources.append(kn)
    return True


def _bench_groups(rep: Report, e: Experiment, primary: dict) -> None:
    """The benchmark's groups besides the primary one (another epoch budget, larger models): per
    group the baseline, attention only and the hybrid best on validation."""
    agg, keys = e.agg()
    others = [k for k in keys if k != "method"]
    groups = []
    for vals, g in (agg.groupby(others, sort=False) if others else []):
        sel = dict(zip(others, vals if isinstance(vals, tuple) else (vals,)))
        differs = {k: v for k, v in sel.items() if str(v) != str(primary.get(k))}
        if differs:
            groups.append((differs, {str(r["method"]): r for r in _records(g)}))
    size_rank = lambda v: SIZE_ORDER.index(str(v)) if str(v) in SIZE_ORDER else len(SIZE_ORDER)  # noqa: E731
    groups.sort(key=lambda dg: (size_rank(dg[0].get("size", "")), -float(dg[0].get("epochs", 0))))
    rep.c["bench"]["groups_other"] = out = []
    for tag, (differs, by) in zip(_TAGS, groups):
        where = ", ".join(f"{k}={v}" for k, v in differs.items())
        label = ", ".join(_epochs_text(v) if k == "epochs" else f"the {v} model" if k == "size" else f"{k} {v}"
                          for k, v in differs.items())
        rep.add(f"BenchGroup{tag}Label", tex_escape(label), e, f"the group {where} of the benchmark")
        g = {"tag": tag, "size": "size" in differs}
        for m, name in (("baseline", "Baseline"), ("attn_only", "AttnOnly")):
            if m in by and _finite(by[m].get("test_ppl")):
                rep.add(f"BenchGroup{tag}{name}PPL", fmt_ppl(by[m]["test_ppl"]), e,
                        f"mean test_ppl, method={m}, {where}", by[m]["test_ppl"])
                g[m] = True
        pil = [m for m in by if m in HYBRID_METHODS and _finite(by[m].get("valid_ppl")) and _finite(by[m].get("test_ppl"))]
        if pil:
            m = min(pil, key=lambda k: float(by[k]["valid_ppl"]))
            r = by[m]
            rep.add(f"BenchGroup{tag}PILMethod", method_tex(m), e, f"hybrid with the lowest mean valid_ppl, {where}")
            rep.add(f"BenchGroup{tag}PILPPL", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, method={m}, {where}",
                    r["test_ppl"])
            g["pil_seeds_one"], g["hybrids"] = int(r["n"]) == 1, len(pil)
            a = by.get("attn_only")
            if a is not None and _finite(a.get("test_ppl")):
                g["pil_vs_attn"] = spread_verdict(r, a)
        out.append(g)


def _diverged(rep: Report, e: Experiment) -> None:
    """Runs whose validation perplexity rose far above its best during training (``curve``), with
    how many of their searched solves stopped at the top of the step-size grid."""
    rep.c["bench"]["diverged"] = out = []
    diverged = []
    for r in e.runs():
        pts = [p for p in r.get("curve") or [] if _finite(p.get("valid_ppl"))]
        if len(pts) < 2:
            continue
        i = min(range(len(pts)), key=lambda k: float(pts[k]["valid_ppl"]))
        best, last = float(pts[i]["valid_ppl"]), float(pts[-1]["valid_ppl"])
        if last <= DIVERGED_RATIO * best:
            continue
        tag = _TAGS[len(out)]
        diverged.append(r)
        src = f"curve of run {r['name']}"
        rep.add(f"Diverged{tag}Method", method_tex(r.get("method")), e, f"method of run {r['name']}")
        rep.add(f"Diverged{tag}Size", tex_escape(str(r.get("size", ""))), e, f"size of run {r['name']}")
        rep.add(f"Diverged{tag}Seed", str(r.get("seed")), e, f"seed of run {r['name']}", r.get("seed"))
        rep.add(f"Diverged{tag}Best", fmt_ppl(best), e, f"lowest valid_ppl on the {src}", best)
        rep.add(f"Diverged{tag}BestEpoch", str(pts[i].get("epoch")), e, f"epoch of the lowest valid_ppl, {src}",
                pts[i].get("epoch"))
        rep.add(f"Diverged{tag}Final", fmt_ppl(last), e, f"last valid_ppl on the {src}", last)
        d = {"tag": tag}
        searched = _searched(r)
        if searched:
            top = sum(map(_eta_at_top, searched))
            rep.add(f"Diverged{tag}EtaTop", str(top), e, f"solves of run {r['name']} at the top of eta_grid", top)
            rep.add(f"Diverged{tag}Solves", str(len(searched)), e, f"searched solves of run {r['name']}",
                    len(searched))
            d["eta"] = True
            d.update(_seeds_by_step(rep, e, r, tag))
        out.append(d)
    t = rep.tables.get("benchmark")
    if out and t is not None:  # a mean over seeds that includes a diverged run says so under the table
        runs = "; ".join(f"{method_tex(r.get('method'))}, {tex_escape(str(r.get('size', '')))}, seed {r.get('seed')}"
                         for r in diverged)
        one = len(diverged) == 1
        t.note = ((t.note + " ") if t.note else "") + (
            f"{'One run' if one else f'{len(diverged)} runs'} diverged and {'is' if one else 'are'} kept in the "
            f"mean of {'its row' if one else 'their rows'}: {runs} (Section~\\ref{{sec:main}}).")


def _seeds_by_step(rep: Report, e: Experiment, diverged: dict, tag: str) -> dict:
    """The diverged run's configuration over all its seeds: each seed's median searched step η and test
    perplexity, so the text can say whether larger steps went with worse models (an observation over a
    few seeds, not a controlled test). Empty when fewer than two seeds have searched solves."""
    def config(r):  # the run's spec without its seed
        spec = r.get("spec") or {}
        return {**spec, "train": {k: v for k, v in (spec.get("train") or {}).items() if k != "seed"}}

    want = config(diverged)
    same = [r for r in e.runs() if config(r) == want and _searched(r) and _finite(r.get("test_ppl"))]
    if len(same) < 2:
        return {}
    same.sort(key=lambda r: int(r.get("seed", 0)))
    steps = {int(r["seed"]): st.median(x["eta"] for x in _searched(r)) for r in same}
    ppl = {int(r["seed"]): float(r["test_ppl"]) for r in same}
    text = "; ".join(f"seed {k}: {fmt_pow10(steps[k])}, {fmt_ppl(ppl[k])}" for k in steps)
    rep.add(f"Diverged{tag}SeedSteps", text, e, "per seed of run " + diverged["name"].replace(
        f"seed={diverged.get('seed')}", "seed=*") + ": median eta of its searched solves, test_ppl")
    by_step = [ppl[k] for k in sorted(steps, key=steps.get)]
    rising = len(set(steps.values())) == len(steps) and all(a < b for a, b in zip(by_step, by_step[1:]))
    return {"seed_steps": len(same), "steps_order": "rising" if rising else "mixed"}


def _bench_rows(rep: Report, e: Experiment) -> tuple[dict, Any, dict, str]:
    """The benchmark's primary group: ``(row by method, its aggregate, the group's key values,
    their description)``."""
    agg, keys = e.agg()
    sl, sel = primary_slice(agg, keys, "method")
    return {str(r["method"]): r for r in _records(sl)}, sl, sel, ", ".join(f"{k}={v}" for k, v in sel.items())


def _rf_width(rep: Report, e: Experiment) -> int | None:
    """Random features per layer of the benchmark's ``rf_adamw`` runs, added once as ``RFFeatures``."""
    width = _rf_features(e)
    if width and not rep.n.has("RFFeatures"):
        rep.add("RFFeatures", fmt_count(width), e, "features per layer of rf_adamw "
                "(params_ffn_frozen_random / (n_layer * n_embd))", width)
    return width


def lambada(rep: Report) -> None:
    e = _lambada_scores(rep.R.exp("lambada"))
    rep.c["lambada"] = None
    if not e.available or "acc" not in e.df.columns:
        rep._no_table("lambada", "LAMBADA whole-word accuracy, target-word perplexity and OOV rate", ["lambada"])
        return
    cols = [Col("acc", r"Accuracy (\%) $\uparrow$", lambda x: fmt_pct(100 * x), "higher"),
            Col("word_ppl", r"Word PPL $\downarrow$", fmt_ppl, "lower"),
            Col("oov_rate", r"OOV (\%)", lambda x: fmt_pct(100 * x), None, std=False)]
    rep.tables["lambada"] = generic_table(
        e, "lambada", "LAMBADA (zero-shot, whole-word teacher-forced greedy accuracy; OOV targets count as "
        "wrong)", ["method"], cols)
    agg, keys = e.agg()
    sl, sel = primary_slice(agg, keys, "method") if "method" in keys else (agg, {})
    where = ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows"
    by = {str(r.get("method", "")): r for r in _records(sl)}
    lam = rep.c["lambada"] = {}
    if "baseline" in by and _finite(by["baseline"].get("acc")):
        rep.add("LambadaBaselineAcc", fmt_pct(100 * by["baseline"]["acc"]), e, f"100*mean acc of baseline, {where}")
    if "attn_only" in by and _finite(by["attn_only"].get("acc")):
        rep.add("LambadaAttnOnlyAcc", fmt_pct(100 * by["attn_only"]["acc"]), e, f"100*mean acc of attn_only, {where}")
    pil = {m: float(r["acc"]) for m, r in by.items() if m in PIL_METHODS and _finite(r.get("acc"))}
    if pil:
        # chosen on WikiText-2 validation where the runs recorded it, never on LAMBADA itself
        valid = {m: float(by[m]["valid_ppl"]) for m in pil if _finite(by[m].get("valid_ppl"))}
        lam["chosen_on"] = "valid" if len(valid) == len(pil) else "acc"
        m = min(valid, key=valid.get) if lam["chosen_on"] == "valid" else max(pil, key=pil.get)
        lam["best"] = m
        how = "lowest mean valid_ppl" if lam["chosen_on"] == "valid" else "highest acc"
        rep.add("LambadaPILAcc", fmt_pct(100 * pil[m]), e, f"100*mean acc of the PIL method with the {how} ({m}), {where}")
        rep.add("LambadaPILMethod", method_tex(m), e, f"PIL method with the {how}, {where}")
        if "baseline" in by and _finite(by["baseline"].get("acc")) and by["baseline"]["acc"] > 0 and pil[m] > 0:
            lam["verdict"] = verdict(pil[m], float(by["baseline"]["acc"]), lower_is_better=False)
    oov = [float(r["oov_rate"]) for r in by.values() if _finite(r.get("oov_rate"))]
    if oov:
        rep.add("LambadaOOV", fmt_pct(100 * max(oov)), e, f"100*max oov_rate, {where}")
    lam["all_low"] = bool(by) and all(_finite(r.get("acc")) and r["acc"] < LAMBADA_LOW for r in by.values())
    # Near zero, a relative comparison of accuracies compares a handful of passages: give the counts.
    passages = {m: float(r["lambada_n"]) for m, r in by.items() if _finite(r.get("lambada_n"))}
    if lam["all_low"] and "baseline" in passages and lam.get("best") in passages:
        for m, macro in (("baseline", "LambadaBaselineHits"), (lam["best"], "LambadaPILHits")):
            hits = float(by[m]["acc"]) * passages[m]
            rep.add(macro, fmt_fixed(hits, 1), e, f"mean acc*lambada_n of {m} (passages predicted), {where}", hits)
        rep.add("LambadaPassages", fmt_count(passages["baseline"]), e, f"lambada_n, {where}", passages["baseline"])
        lam["counts"] = True


def curves(rep: Report) -> None:
    e = rep.R.exp("training_curves")
    rep.c["curves"] = None
    runs = [r for r in e.runs() if r.get("curve")] if e.available else []
    if not runs:
        return
    final: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        pts = [p for p in r["curve"] if _finite(p.get("valid_ppl"))]
        if pts:
            final.setdefault(str(r.get("method")), []).append((float(pts[-1]["valid_ppl"]), float(pts[-1].get("wall_s", math.nan))))
    if "baseline" not in final:
        return
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    bppl = mean([p for p, _ in final["baseline"]])
    bwall = mean([w for _, w in final["baseline"]])
    cv = rep.c["curves"] = {"shared": concurrency(e)}  # > 1: wall-clock of runs that shared the GPUs
    if cv["shared"] > 1:
        rep.add("CurvesShared", str(cv["shared"]), e, "max environment.concurrent_runs over the curves' runs",
                cv["shared"])
    rep.add("CurvesBaselinePPL", fmt_ppl(bppl), e, "mean final valid_ppl of the baseline curves (result.json)")
    if _finite(bwall):
        rep.add("CurvesBaselineWall", fmt_seconds(bwall), e, "mean final wall_s of the baseline curves (result.json)")
    pil = {m: mean([p for p, _ in v]) for m, v in final.items() if m in PIL_METHODS}
    if not pil:
        return
    m = min(pil, key=pil.get)
    cv["best"] = m
    rep.add("CurvesPILMethod", method_tex(m), e, "PIL method with the lowest mean final valid_ppl (result.json)")
    rep.add("CurvesPILPPL", fmt_ppl(pil[m]), e, f"mean final valid_ppl of {m} (result.json)")
    # time to reach the baseline's final validation perplexity
    hits = []
    for r in runs:
        if str(r.get("method")) != m:
            continue
        hit = [float(p["wall_s"]) for p in r["curve"] if _finite(p.get("valid_ppl")) and _finite(p.get("wall_s"))
               and float(p["valid_ppl"]) <= bppl]
        hits.append(min(hit) if hit else None)
    cv["reaches"] = bool(hits) and all(h is not None for h in hits)
    if cv["reaches"] and _finite(bwall) and cv["shared"] == 1:  # a speed claim only from runs timed alone
        t = mean(hits)
        rep.add("CurvesTimeToBaseline", fmt_seconds(t), e, f"mean first wall_s at which {m} reaches the baseline's final valid_ppl")
        ratio = bwall / t if t > 0 else math.inf
        rep.add("CurvesTimeRatio", fmt_ratio(max(ratio, 1 / ratio)) if t > 0 else r"\ensuremath{\infty}", e,
                f"baseline final wall_s / time-to-baseline of {m} (or its inverse when <1)", ratio)
    solved = [p for r in runs if str(r.get("method")) == m for p in r["curve"]
              if p.get("phase") == "pil" and _finite(p.get("valid_ppl"))]
    init = [p for r in runs if str(r.get("method")) == m for p in r["curve"]
            if p.get("phase") == "init" and _finite(p.get("valid_ppl"))]
    if solved and init:
        rep.add("CurvesInitPPL", fmt_ppl(mean([float(p["valid_ppl"]) for p in init])), e,
                f"mean valid_ppl of {m} at initialisation (phase=init)")
        rep.add("CurvesSolvedPPL", fmt_ppl(mean([float(p["valid_ppl"]) for p in solved])), e,
                f"mean valid_ppl of {m} right after its closed-form phase (phase=pil)")
        cv["solve_point"] = True
