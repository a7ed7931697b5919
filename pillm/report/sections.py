"""The report: every number, claim and table of the paper, computed section by section from the results."""

from __future__ import annotations

import math
import statistics as st
from pathlib import Path
from typing import Any

from .config import (
    _TAGS, COMPETITIVE_TOL, FIT_MIN_R2, GAP_GOAL, HYBRID_METHODS, LAMBADA_LOW, METHOD_ORDER, METHOD_PLAIN,
    PAPER_EXPERIMENTS, PIL_METHODS, ReportError, SIZE_ORDER, TABLE_TITLES, TARGET_TEX,
)
from .files import rel, repo_url
from .fmt import (
    _finite, _natural_key, dataset_tex, fmt_count, fmt_fixed, fmt_params, fmt_pct, fmt_plain, fmt_pow10, fmt_ppl,
    fmt_ratio, fmt_sci, fmt_seconds, group_digits, method_tex, tex_escape, variant_tex,
)
from .numbers import Numbers, similar, verdict
from .results import (
    _flag, _main_configuration, _param_tex, _runs_where, _tally, and_join, beyond_seed_spread, compress_runs,
    concurrency, Experiment, gap_recovered_pct, paired_differences, primary_slice, Results, spread_verdict,
)
from .tables import (
    _epochs_text, _eta_at_top, _records, _rf_features, _searched, ACC_COL, Col, COND_COL, generic_table, PIL_S_COL,
    PPL_COLS, TableSpec,
)
from .analysis import (
    _complexity_fit, _complexity_solves, _complexity_x, _estimate_crossover, _fits, _lambada_scores,
    _numeric_leaves, _samples,
)


class Report:
    """Everything rendered for one profile from one results tree."""

    def __init__(self, results: Results):
        self.R = results
        self.profile = results.profile
        self.n = Numbers()
        self.c: dict[str, Any] = {}
        self.tables: dict[str, TableSpec | None] = {}
        self.table_missing: dict[str, tuple[str, list[str]]] = {}
        self.figures: dict[str, dict] = {}
        self.url = repo_url()
        self.errors: list[str] = []  # sections or figures that could not be rendered (build log)
        self.broken: set[str] = set()  # tables that could not be rendered

    # -------------------------------------------------------------- provenance
    def notebook_ref(self, e: Experiment) -> str:
        s = r"\texttt{" + tex_escape(Path(e.notebook).name) + "}"
        if self.url:
            link = f"{self.url}/blob/{e.commit or 'main'}/{e.notebook}".replace("%", r"\%").replace("#", r"\#")
            s = r"\href{" + link + "}{" + s + "}"
        return s

    def source_note(self, exps: list[Experiment]) -> str:
        """Caption note: notebook(s), profile, results file and the first 8 hex of its sha256, and
        which of them are partial (some runs not computed yet)."""
        prof = r"\texttt{" + tex_escape(self.profile) + "}"
        if len(exps) == 1:
            e = exps[0]
            file = e.source.name if e.source else "summary.csv"
            note = (f"Source: notebook {self.notebook_ref(e)}, profile {prof}, "
                    f"\\texttt{{{tex_escape(file)}}} sha256 \\texttt{{{e.sha}}}.")
        else:
            items = ", ".join(f"{self.notebook_ref(e)} (\\texttt{{{e.sha}}})" for e in exps)
            note = f"Sources (profile {prof}; sha256 of each results file): notebooks {items}."
        return " ".join([note, *(self.partial_note(e) for e in exps if e.partial),
                         *(self.outdated_note(e) for e in exps if e.outdated)])

    @staticmethod
    def outdated_note(e: Experiment) -> str:
        """``\\textbf{Earlier configuration}``: the parameters ``e`` ran with that the registry has changed."""
        return (f"\\textbf{{Earlier configuration:}} \\texttt{{{tex_escape(e.name)}}} ran with "
                + "; ".join(f"{tex_escape(k)} {_param_tex(old)} (now {_param_tex(new)})" for k, old, new in e.outdated)
                + "; what the registry added has not run yet.")

    @staticmethod
    def partial_note(e: Experiment) -> str:
        """``\\textbf{Partial}``: how many runs of ``e`` the numbers cover and which are missing."""
        p = e.partial
        return (f"\\textbf{{Partial:}} {p['finished']} of {p['runs']} runs of \\texttt{{{tex_escape(e.name)}}}; "
                f"not yet run: {tex_escape(compress_runs(p['missing']))}.")

    def missing_note(self, names: list[str]) -> str:
        if any(self.R.exp(n).error for n in names if n in PAPER_EXPERIMENTS):
            return self.broken_note()
        names_tex = ", ".join(r"\texttt{" + tex_escape(n) + "}" for n in names)
        return (f"Result not available: the {names_tex} experiment{'s were' if len(names) > 1 else ' was'} "
                f"not run in this profile (\\texttt{{{tex_escape(self.profile)}}}).")

    def broken_note(self) -> str:
        return ("Result not available: the results file exists but could not be rendered in this profile "
                f"(\\texttt{{{tex_escape(self.profile)}}}); see the build log.")

    def _no_table(self, name: str, caption: str, experiments: list[str]) -> None:
        """Table ``name`` is not available: rendered as a "not run in this profile" stand-in."""
        self.tables[name] = None
        self.table_missing[name] = (caption, experiments)

    def add(self, name: str, text: str, e: Experiment | Path, note: str, value: Any = None) -> None:
        src = e.source if isinstance(e, Experiment) else e
        self.n.add(name, text, src, note, value)

    # -------------------------------------------------------------- main benchmark
    def benchmark(self) -> None:
        e = self.R.exp("benchmark")
        c = self.c
        c["bench"] = None
        if not e.available:
            self._no_table("benchmark", "Main results: test perplexity, accuracy, optimizer steps, "
                                        "parameters and time per method", ["benchmark"])
            return
        conc = concurrency(e)
        cols = PPL_COLS + [ACC_COL,
                           Col("optimizer_steps", "Opt.\\ steps", fmt_count, None, std=False),
                           Col("params_trained", "Trained", fmt_params, None, std=False),
                           Col("params_solved", "Solved", fmt_params, None, std=False),
                           PIL_S_COL,  # contended timings: shown without marking the fastest
                           Col("total_s", r"Total (s) $\downarrow$", fmt_seconds, None if conc > 1 else "lower")]
        t = generic_table(e, "benchmark", "Main results. Perplexity (PPL) and next-token accuracy on the test "
                          "split, optimizer steps, parameters updated by AdamW (Trained) or solved in closed "
                          "form (Solved), time of the closed-form phases (PIL) and total training time",
                          ["method"], cols)
        t.star = True
        if conc > 1:  # contended timings: shown, but no speed claim is made from them
            t.note = (f"Times were measured with up to {conc} runs sharing the machine's GPUs, so they are slower "
                      "and noisier than runs alone and are not used for speed comparisons; "
                      "Section~\\ref{sec:complexity} gives timings measured alone.")
        self.tables["benchmark"] = t

        agg, keys = e.agg()
        by, sl, sel, where = self._bench_rows(e)
        d, s = sel.get("dataset", ""), sel.get("size", "")
        ppl = {m: float(r["test_ppl"]) for m, r in by.items() if _finite(r.get("test_ppl"))}
        others = [k for k in keys if k != "method"]
        c["bench"] = b = {"methods": sorted(ppl, key=_natural_key),
                          "groups": int(agg.groupby(others).ngroups) if others else 1, "concurrent": conc}
        if conc > 1:
            self.add("BenchConcurrent", str(conc), e, "max environment.concurrent_runs over the benchmark runs", conc)
        if d:
            self.add("BenchDataset", dataset_tex(d), e, f"dataset of the primary group ({where})")
        if s:
            self.add("BenchSize", tex_escape(s), e, f"model size of the primary group ({where})")
        self.add("BenchSeeds", str(int(sl["n"].max())), e, "max number of seeds per method in the primary group",
                 int(sl["n"].max()))
        macros = {"baseline": "BaselinePPL", "attn_only": "AttnOnlyPPL", "pil_pure": "PILPurePPL",
                  "rf_adamw": "RFAdamWPPL", "lora": "LoRAPPL"}
        for m, macro in macros.items():
            if m in ppl:
                self.add(macro, fmt_ppl(ppl[m]), e, f"mean test_ppl, method={m}, {where}", ppl[m])
        pil = {m: v for m, v in ppl.items() if m in PIL_METHODS}
        hyb = {m: v for m, v in ppl.items() if m in HYBRID_METHODS}
        # the best PIL method and the best hybrid are chosen on validation; their test perplexity is reported
        on_valid = lambda m: float(by[m]["valid_ppl"]) if _finite(by[m].get("valid_ppl")) else math.inf  # noqa: E731
        if pil:
            m = min(pil, key=on_valid)
            b["pil_best"] = m
            self.add("PILBestPPL", fmt_ppl(pil[m]), e, f"mean test_ppl of the PIL method with the lowest mean "
                     f"valid_ppl ({m}), {where}", pil[m])
            self.add("PILBestMethod", method_tex(m), e, f"PIL method with the lowest mean valid_ppl, {where}")
        if hyb:
            h = min(hyb, key=on_valid)
            b["hybrid"] = h
            self.add("HybridBestPPL", fmt_ppl(hyb[h]), e, f"mean test_ppl of the hybrid with the lowest mean "
                     f"valid_ppl ({h}), {where}", hyb[h])
            self.add("HybridBestMethod", method_tex(h), e, f"hybrid method with the lowest mean valid_ppl, {where}")
            hr = by[h]
            if _finite(hr.get("pil_s")) and _finite(hr.get("total_s")) and hr["total_s"] > 0:
                self.add("HybridPILSeconds", fmt_seconds(hr["pil_s"]), e, f"mean pil_s of {h}, {where}")
                self.add("HybridPILShare", fmt_pct(100 * hr["pil_s"] / hr["total_s"]), e,
                         f"100*pil_s/total_s of {h}, {where}")
            if _finite(hr["params_solved"]) and _finite(hr.get("params_total")):
                self.add("HybridSolvedParams", fmt_params(hr["params_solved"]), e,
                         f"params_ffn_solved+params_head_solved of {h}, {where}")
                self.add("HybridSolvedShare", fmt_pct(100 * hr["params_solved"] / hr["params_total"]), e,
                         f"100*solved/params_total of {h}, {where}")
        if "baseline" in ppl and hyb:
            h, base = b["hybrid"], by["baseline"]
            b["verdict"] = verdict(hyb[h], ppl["baseline"])
            gap = 100 * (hyb[h] / ppl["baseline"] - 1)
            b["gap_sign"] = "higher" if gap > 0 else "lower"
            self.add("HybridGapPct", fmt_pct(abs(gap)), e, f"|100*(test_ppl[{h}]/test_ppl[baseline]-1)|, {where}")
            hr = by[h]
            if (conc == 1 and _finite(base.get("total_s")) and _finite(hr.get("total_s")) and hr["total_s"] > 0
                    and base["total_s"] > 0):  # speed claims only from runs timed alone
                r = base["total_s"] / hr["total_s"]
                b["speed"] = "faster" if r >= 1 else "slower"
                self.add("HybridSpeedup", fmt_ratio(max(r, 1 / r)), e,
                         f"total_s[baseline]/total_s[{h}] (or its inverse when <1), {where}", r)
            if _finite(base.get("optimizer_steps")) and _finite(hr.get("optimizer_steps")):
                self.add("BaselineSteps", fmt_count(base["optimizer_steps"]), e, f"optimizer_steps of baseline, {where}")
                self.add("HybridSteps", fmt_count(hr["optimizer_steps"]), e, f"optimizer_steps of {h}, {where}")
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
                self.add("Retention", fmt_pct(abs(ret) if ret <= 0 else ret), e,
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
        self._bench_groups(e, sel)
        self._diverged(e)
        pilrows = [r for r in _records(agg) if str(r.get("method")) in PIL_METHODS]
        conds = [float(r["max_cond"]) for r in pilrows if _finite(r.get("max_cond"))]
        if conds:
            self.add("BenchMaxCond", fmt_sci(max(conds)), e, "max of max_cond over all PIL runs", max(conds))
        if "any_fallback" in e.df.columns and "method" in e.df.columns:
            runs = e.df[e.df["method"].isin(PIL_METHODS)]
            if len(runs):
                fb = int(runs["any_fallback"].astype(str).str.lower().isin(("true", "1", "1.0")).sum())
                b["fallbacks"] = fb
                self.add("BenchFallbackRuns", str(fb), e, "PIL runs with any_fallback true")
                self.add("BenchPILRuns", str(len(runs)), e, "number of PIL runs (rows)")

    def _bench_groups(self, e: Experiment, primary: dict) -> None:
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
        self.c["bench"]["groups_other"] = out = []
        for tag, (differs, by) in zip(_TAGS, groups):
            where = ", ".join(f"{k}={v}" for k, v in differs.items())
            label = ", ".join(_epochs_text(v) if k == "epochs" else f"the {v} model" if k == "size" else f"{k} {v}"
                              for k, v in differs.items())
            self.add(f"BenchGroup{tag}Label", tex_escape(label), e, f"the group {where} of the benchmark")
            g = {"tag": tag, "size": "size" in differs}
            for m, name in (("baseline", "Baseline"), ("attn_only", "AttnOnly")):
                if m in by and _finite(by[m].get("test_ppl")):
                    self.add(f"BenchGroup{tag}{name}PPL", fmt_ppl(by[m]["test_ppl"]), e,
                             f"mean test_ppl, method={m}, {where}", by[m]["test_ppl"])
                    g[m] = True
            pil = [m for m in by if m in HYBRID_METHODS and _finite(by[m].get("valid_ppl")) and _finite(by[m].get("test_ppl"))]
            if pil:
                m = min(pil, key=lambda k: float(by[k]["valid_ppl"]))
                r = by[m]
                self.add(f"BenchGroup{tag}PILMethod", method_tex(m), e, f"hybrid with the lowest mean valid_ppl, {where}")
                self.add(f"BenchGroup{tag}PILPPL", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, method={m}, {where}",
                         r["test_ppl"])
                g["pil_seeds_one"], g["hybrids"] = int(r["n"]) == 1, len(pil)
                a = by.get("attn_only")
                if a is not None and _finite(a.get("test_ppl")):
                    g["pil_vs_attn"] = spread_verdict(r, a)
            out.append(g)

    #: A run "diverged" when its last validation perplexity is above this multiple of its best one.
    DIVERGED_RATIO = 2.0

    def _diverged(self, e: Experiment) -> None:
        """Runs whose validation perplexity rose far above its best during training (``curve``), with
        how many of their searched solves stopped at the top of the step-size grid."""
        self.c["bench"]["diverged"] = out = []
        diverged = []
        for r in e.runs():
            pts = [p for p in r.get("curve") or [] if _finite(p.get("valid_ppl"))]
            if len(pts) < 2:
                continue
            i = min(range(len(pts)), key=lambda k: float(pts[k]["valid_ppl"]))
            best, last = float(pts[i]["valid_ppl"]), float(pts[-1]["valid_ppl"])
            if last <= self.DIVERGED_RATIO * best:
                continue
            tag = _TAGS[len(out)]
            diverged.append(r)
            src = f"curve of run {r['name']}"
            self.add(f"Diverged{tag}Method", method_tex(r.get("method")), e, f"method of run {r['name']}")
            self.add(f"Diverged{tag}Size", tex_escape(str(r.get("size", ""))), e, f"size of run {r['name']}")
            self.add(f"Diverged{tag}Seed", str(r.get("seed")), e, f"seed of run {r['name']}", r.get("seed"))
            self.add(f"Diverged{tag}Best", fmt_ppl(best), e, f"lowest valid_ppl on the {src}", best)
            self.add(f"Diverged{tag}BestEpoch", str(pts[i].get("epoch")), e, f"epoch of the lowest valid_ppl, {src}",
                     pts[i].get("epoch"))
            self.add(f"Diverged{tag}Final", fmt_ppl(last), e, f"last valid_ppl on the {src}", last)
            d = {"tag": tag}
            searched = _searched(r)
            if searched:
                top = sum(map(_eta_at_top, searched))
                self.add(f"Diverged{tag}EtaTop", str(top), e, f"solves of run {r['name']} at the top of eta_grid", top)
                self.add(f"Diverged{tag}Solves", str(len(searched)), e, f"searched solves of run {r['name']}",
                         len(searched))
                d["eta"] = True
                d.update(self._seeds_by_step(e, r, tag))
            out.append(d)
        t = self.tables.get("benchmark")
        if out and t is not None:  # a mean over seeds that includes a diverged run says so under the table
            runs = "; ".join(f"{method_tex(r.get('method'))}, {tex_escape(str(r.get('size', '')))}, seed {r.get('seed')}"
                             for r in diverged)
            one = len(diverged) == 1
            t.note = ((t.note + " ") if t.note else "") + (
                f"{'One run' if one else f'{len(diverged)} runs'} diverged and {'is' if one else 'are'} kept in the "
                f"mean of {'its row' if one else 'their rows'}: {runs} (Section~\\ref{{sec:main}}).")

    def _seeds_by_step(self, e: Experiment, diverged: dict, tag: str) -> dict:
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
        self.add(f"Diverged{tag}SeedSteps", text, e, "per seed of run " + diverged["name"].replace(
            f"seed={diverged.get('seed')}", "seed=*") + ": median eta of its searched solves, test_ppl")
        by_step = [ppl[k] for k in sorted(steps, key=steps.get)]
        rising = len(set(steps.values())) == len(steps) and all(a < b for a, b in zip(by_step, by_step[1:]))
        return {"seed_steps": len(same), "steps_order": "rising" if rising else "mixed"}

    # -------------------------------------------------------------- LAMBADA
    def lambada(self) -> None:
        e = _lambada_scores(self.R.exp("lambada"))
        self.c["lambada"] = None
        if not e.available or "acc" not in e.df.columns:
            self._no_table("lambada", "LAMBADA whole-word accuracy, target-word perplexity and OOV rate", ["lambada"])
            return
        cols = [Col("acc", r"Accuracy (\%) $\uparrow$", lambda x: fmt_pct(100 * x), "higher"),
                Col("word_ppl", r"Word PPL $\downarrow$", fmt_ppl, "lower"),
                Col("oov_rate", r"OOV (\%)", lambda x: fmt_pct(100 * x), None, std=False)]
        self.tables["lambada"] = generic_table(
            e, "lambada", "LAMBADA (zero-shot, whole-word teacher-forced greedy accuracy; OOV targets count as "
            "wrong)", ["method"], cols)
        agg, keys = e.agg()
        sl, sel = primary_slice(agg, keys, "method") if "method" in keys else (agg, {})
        where = ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows"
        by = {str(r.get("method", "")): r for r in _records(sl)}
        lam = self.c["lambada"] = {}
        if "baseline" in by and _finite(by["baseline"].get("acc")):
            self.add("LambadaBaselineAcc", fmt_pct(100 * by["baseline"]["acc"]), e, f"100*mean acc of baseline, {where}")
        if "attn_only" in by and _finite(by["attn_only"].get("acc")):
            self.add("LambadaAttnOnlyAcc", fmt_pct(100 * by["attn_only"]["acc"]), e, f"100*mean acc of attn_only, {where}")
        pil = {m: float(r["acc"]) for m, r in by.items() if m in PIL_METHODS and _finite(r.get("acc"))}
        if pil:
            m = max(pil, key=pil.get)
            lam["best"] = m
            self.add("LambadaPILAcc", fmt_pct(100 * pil[m]), e, f"100*max mean acc over PIL methods ({m}), {where}")
            self.add("LambadaPILMethod", method_tex(m), e, f"PIL method with the highest acc, {where}")
            if "baseline" in by and _finite(by["baseline"].get("acc")) and by["baseline"]["acc"] > 0 and pil[m] > 0:
                lam["verdict"] = verdict(pil[m], float(by["baseline"]["acc"]), lower_is_better=False)
        oov = [float(r["oov_rate"]) for r in by.values() if _finite(r.get("oov_rate"))]
        if oov:
            self.add("LambadaOOV", fmt_pct(100 * max(oov)), e, f"100*max oov_rate, {where}")
        lam["all_low"] = bool(by) and all(_finite(r.get("acc")) and r["acc"] < LAMBADA_LOW for r in by.values())
        # Near zero, a relative comparison of accuracies compares a handful of passages: give the counts.
        passages = {m: float(r["lambada_n"]) for m, r in by.items() if _finite(r.get("lambada_n"))}
        if lam["all_low"] and "baseline" in passages and lam.get("best") in passages:
            for m, macro in (("baseline", "LambadaBaselineHits"), (lam["best"], "LambadaPILHits")):
                hits = float(by[m]["acc"]) * passages[m]
                self.add(macro, fmt_fixed(hits, 1), e, f"mean acc*lambada_n of {m} (passages predicted), {where}", hits)
            self.add("LambadaPassages", fmt_count(passages["baseline"]), e, f"lambada_n, {where}", passages["baseline"])
            lam["counts"] = True

    # -------------------------------------------------------------- ablations
    def _ablation(self, name: str, key: str, caption: str, extra_cols: list[Col] | None = None):
        e = self.R.exp(name)
        if not e.available or key not in e.df.columns:
            self._no_table(name, caption, [name])
            return None, None, e
        cols = PPL_COLS + [ACC_COL] + (extra_cols or [COND_COL, PIL_S_COL])
        self.tables[name] = generic_table(e, name, caption, [key], cols)
        agg, keys = e.agg()
        sl, sel = primary_slice(agg, keys, key)
        return _records(sl), ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows", e

    def ablation_bipil(self) -> None:
        c = self.c
        recs, where, e = self._ablation("ablation_bipil", "variant", "Bi-PIL (two fused random projections) "
                                        "versus a single projection")
        c["bipil"] = None
        if recs:
            ppl = {str(r["variant"]): float(r["test_ppl"]) for r in recs if _finite(r.get("test_ppl"))}
            val = {str(r["variant"]): float(r["valid_ppl"]) if _finite(r.get("valid_ppl")) else math.inf for r in recs}
            if ppl:
                best = min(ppl, key=lambda v: val.get(v, math.inf))  # chosen on validation
                c["bipil"] = bp = {"best": best}
                self.add("BiBestVariant", tex_escape(best), e, f"variant with the lowest mean valid_ppl, {where}")
                self.add("BiBestPPL", fmt_ppl(ppl[best]), e, f"mean test_ppl of variant={best}, {where}")
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
                    self.add("BiPILPPL", fmt_ppl(ppl[bv]), e, f"mean test_ppl of variant={bv}, {where}")
                    self.add("SinglePILPPL", fmt_ppl(ppl[sv]), e, f"mean test_ppl of variant={sv}, {where}")
                    self.add("BiVsSinglePct", fmt_pct(abs(100 * (ppl[bv] / ppl[sv] - 1))), e,
                             f"|100*(ppl[{bv}]/ppl[{sv}]-1)|, {where}")
                    if wide:
                        wv = min(wide, key=ppl.get)
                        bp["compare_wide"] = cmp(ppl[bv], ppl[wv])
                        self.add("SingleWidePPL", fmt_ppl(ppl[wv]), e, f"mean test_ppl of variant={wv}, {where}")
                        self.add("BiVsWidePct", fmt_pct(abs(100 * (ppl[bv] / ppl[wv] - 1))), e,
                                 f"|100*(ppl[{bv}]/ppl[{wv}]-1)|, {where}")
    def ablation_lambda(self) -> None:
        c = self.c
        recs, where, e = self._ablation("ablation_lambda", "lam", r"Sensitivity to the relative ridge "
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
                self.add("LambdaBest", fmt_pow10(lb), e, f"lam with the lowest mean valid_ppl, {where}", lb)
                self.add("LambdaBestPPL", fmt_ppl(pb), e, f"mean test_ppl at the best lam, {where}", pb)
                if _finite(kb):
                    self.add("LambdaBestCond", fmt_sci(float(kb)), e, f"mean max_cond at the best lam, {where}")
                self.add("LambdaMin", fmt_pow10(pts[0][0]), e, f"smallest lam tested, {where}")
                self.add("LambdaMax", fmt_pow10(pts[-1][0]), e, f"largest lam tested, {where}")
                ok = [p[0] for p in pts if p[1] <= min(q[1] for q in pts) * (1 + COMPETITIVE_TOL)]
                lm["robust_all"] = len(ok) == len(pts)
                self.add("LambdaRobustLow", fmt_pow10(min(ok)), e, f"smallest lam within 5% of the best test_ppl, {where}")
                self.add("LambdaRobustHigh", fmt_pow10(max(ok)), e, f"largest lam within 5% of the best test_ppl, {where}")
                lm["robust_single"] = len(ok) == 1
                conds = [(p[0], float(p[2])) for p in pts if _finite(p[2])]
                if len(conds) > 1:
                    self.add("LambdaCondAtMin", fmt_sci(conds[0][1]), e, f"mean max_cond at the smallest lam, {where}")
                    self.add("LambdaCondAtMax", fmt_sci(conds[-1][1]), e, f"mean max_cond at the largest lam, {where}")
                    lm["cond_decreasing"] = all(a[1] >= b_[1] for a, b_ in zip(conds, conds[1:]))
                fb = [r for r in recs if _finite(r.get("any_fallback")) and float(r["any_fallback"]) > 0]
                lm["fallback"] = bool(fb)
                if fb:
                    self.add("LambdaFallbackMax", fmt_pow10(max(float(r["lam"]) for r in fb)), e,
                             f"largest lam with any solver fallback, {where}")
    def ablation_expansion(self) -> None:
        c = self.c
        recs, where, e = self._ablation("ablation_expansion", "expansion", "Effect of the random-feature "
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
                self.add("ExpansionBest", fmt_plain(xb), e, f"expansion with the lowest mean test_ppl, {where}")
                self.add("ExpansionBestPPL", fmt_ppl(pb), e, f"mean test_ppl at the best expansion, {where}")
                self.add("ExpansionMin", fmt_plain(pts[0][0]), e, f"smallest expansion tested, {where}")
                self.add("ExpansionMinPPL", fmt_ppl(pts[0][1]), e, f"mean test_ppl at the smallest expansion, {where}")
                self.add("ExpansionMax", fmt_plain(pts[-1][0]), e, f"largest expansion tested, {where}")
                self.add("ExpansionMaxPPL", fmt_ppl(pts[-1][1]), e, f"mean test_ppl at the largest expansion, {where}")
    def ablation_fusion(self) -> None:
        c = self.c
        recs, where, e = self._ablation("ablation_fusion", "fusion", "Fusion of the two Bi-PIL projections: "
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
                self.add("FusionBest", tex_escape(best), e, f"fusion with the lowest mean valid_ppl, {where}")
                self.add("FusionBestPPL", fmt_ppl(ppl[best]), e, f"mean test_ppl of fusion={best}, {where}")
                self.add("FusionWorst", tex_escape(worst), e, f"fusion with the highest mean valid_ppl, {where}")
                self.add("FusionWorstPPL", fmt_ppl(ppl[worst]), e, f"mean test_ppl of fusion={worst}, {where}")

    # -------------------------------------------------------------- training strategy
    def strategy(self) -> None:
        e = self.R.exp("training_strategy")
        self.c["strategy"] = None
        cap = "Targets for the closed-form solve and the order of the closed-form and gradient phases"
        if not e.available or "target" not in e.df.columns:
            self._no_table("training_strategy", cap, ["training_strategy"])
            return
        self.tables["training_strategy"] = generic_table(e, "training_strategy", cap, ["method", "target"],
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
        st = self.c["strategy"] = {"methods": sorted({str(r.get("method", "")) for r in recs}, key=_natural_key)}
        tt = lambda r: TARGET_TEX.get(str(r["target"]), tex_escape(r["target"]))  # noqa: E731
        self.add("StrategyBestTarget", tt(best), e, f"target of the lowest mean valid_ppl, {where}")
        self.add("StrategyBestPPL", fmt_ppl(best["test_ppl"]), e, f"mean test_ppl of the lowest mean valid_ppl, {where}")
        if "method" in best:
            self.add("StrategyBestMethod", method_tex(best["method"]), e, f"method of the lowest mean valid_ppl, {where}")
        self.add("StrategyWorstTarget", tt(worst), e, f"target of the highest mean valid_ppl, {where}")
        if "method" in worst:
            self.add("StrategyWorstMethod", method_tex(worst["method"]), e,
                     f"method of the highest mean valid_ppl, {where}")
        self.add("StrategyWorstPPL", fmt_ppl(worst["test_ppl"]), e, f"mean test_ppl of the highest mean valid_ppl, {where}")
        same_method = [r for r in recs if r.get("method") == best.get("method")]
        rows_by_target = {str(r["target"]): r for r in same_method}
        per_target = {t: r["test_ppl"] for t, r in rows_by_target.items()}
        if "local" in per_target and "global" in per_target:
            v = spread_verdict(rows_by_target["local"], rows_by_target["global"])
            st["local_vs_global"] = {"within": "similar", "better": "local", "worse": "global"}[v]
            st["local_vs_global_method"] = method_tex(best["method"]) if "method" in best else None
            self.add("StrategyLocalPPL", fmt_ppl(per_target["local"]), e, f"mean test_ppl target=local, method={best.get('method')}, {where}")
            self.add("StrategyGlobalPPL", fmt_ppl(per_target["global"]), e, f"mean test_ppl target=global, method={best.get('method')}, {where}")
        if "zero" in per_target:
            self.add("StrategyZeroPPL", fmt_ppl(per_target["zero"]), e, f"mean test_ppl target=zero, method={best.get('method')}, {where}")
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
            self.add("StrategyTeacherPPL", fmt_ppl(per_target["teacher"]), e, f"mean test_ppl target=teacher, method={best.get('method')}, {where}")
            st["teacher"] = True
            st["teacher_best"] = per_target["teacher"] <= min(r["test_ppl"] for r in recs)

    # -------------------------------------------------------------- TinyStories
    def tinystories(self) -> None:
        e = self.R.exp("tinystories")
        self.c["tiny"] = None
        cap = "TinyStories (BPE tokenizer)"
        if not e.available:
            self._no_table("tinystories", cap, ["tinystories"])
            self.c["samples"] = None
            return
        self.tables["tinystories"] = generic_table(e, "tinystories", cap, ["method"],
                                                   PPL_COLS + [ACC_COL, PIL_S_COL,
                                                               Col("total_s", r"Total (s) $\downarrow$", fmt_seconds, "lower")])
        agg, keys = e.agg()
        sl, sel = primary_slice(agg, keys, "method") if "method" in keys else (agg, {})
        where = ", ".join(f"{k}={v}" for k, v in sel.items()) or "all rows"
        ppl = {str(r.get("method")): float(r["test_ppl"]) for r in _records(sl) if _finite(r.get("test_ppl"))}
        ty = self.c["tiny"] = {}
        if "baseline" in ppl:
            self.add("TinyBaselinePPL", fmt_ppl(ppl["baseline"]), e, f"mean test_ppl of baseline, {where}")
        if "attn_only" in ppl:
            self.add("TinyAttnOnlyPPL", fmt_ppl(ppl["attn_only"]), e, f"mean test_ppl of attn_only, {where}")
        hyb = {m: v for m, v in ppl.items() if m in PIL_METHODS}
        val = {str(r.get("method")): float(r["valid_ppl"]) for r in _records(sl) if _finite(r.get("valid_ppl"))}
        if hyb:
            h = min(hyb, key=lambda m: val.get(m, hyb[m]))  # chosen on validation
            self.add("TinyPILPPL", fmt_ppl(hyb[h]), e, f"mean test_ppl of the PIL method with the lowest mean "
                     f"valid_ppl ({h}), {where}")
            self.add("TinyPILMethod", method_tex(h), e, f"PIL method with the lowest mean valid_ppl, {where}")
            if "baseline" in ppl:
                ty["verdict"] = verdict(hyb[h], ppl["baseline"])
        self.c["samples"] = _samples(e)

    # -------------------------------------------------------------- count-based anchor
    def ngram(self) -> None:
        """Interpolated modified Kneser–Ney (``pillm.ngram``), one row per order, beside KenLM's figures."""
        e = self.R.exp("ngram")
        self.c["ngram"] = None
        # The KenLM reference figures in summary.csv come from outside this repository (a check of the
        # implementation, asserted in tests/test_ngram.py); the paper shows only what the code computed.
        cap = (r"Interpolated modified Kneser--Ney $n$-gram models on WikiText-2 (no gradients; counts on the "
               r"training split; each line a sentence with its end token predicted)")
        if not e.available or "order" not in e.df.columns:
            self._no_table("ngram", cap, ["ngram"])
            return
        df = e.df.sort_values("order")
        rows = [[str(int(r.order)), fmt_ppl(r.valid_ppl), fmt_ppl(r.test_ppl)] for r in df.itertuples()]
        self.tables["ngram"] = TableSpec(name="ngram", caption=cap, label="tab:ngram",
                                         header=["Order", "Valid PPL", "Test PPL"], rows=rows, align="rrr",
                                         sources=[e])
        top = df.iloc[-1]
        self.c["ngram"] = {"order": int(top.order)}
        self.add("KNOrder", str(int(top.order)), e, "highest order in ngram/summary.csv")
        self.add("KNTestPPL", fmt_ppl(float(top.test_ppl)), e, "test_ppl of the highest order")
        self.add("KNValidPPL", fmt_ppl(float(top.valid_ppl)), e, "valid_ppl of the highest order")
        if 1 in set(df["order"]):
            uni = float(df.loc[df["order"] == 1, "test_ppl"].iloc[0])
            self.add("KNUnigramPPL", fmt_ppl(uni), e, "test_ppl of order 1 in ngram/summary.csv", uni)
            pure = (self.c.get("bench") or {}).get("pure_ppl")
            if pure is not None:
                self.c["ngram"]["pure_vs_unigram"] = "better" if pure < uni else "worse"
                self.c["ngram"]["pure_vs_top"] = "better" if pure < float(top.test_ppl) else "worse"

    # -------------------------------------------------------------- gap & bench
    def gap(self) -> None:
        e = self.R.exp("gap")
        self.c["gap"] = None
        data, path = e.json("summary.json")
        if not isinstance(data, dict):
            return
        g = self.c["gap"] = {}
        names = {"baseline_test_ppl": "GapBaselinePPL", "attn_only_test_ppl": "GapAttnOnlyPPL",
                 "best_hybrid_test_ppl": "GapHybridPPL", "pure_pil_test_ppl": "GapPurePPL", "kn5_test_ppl": "GapKNPPL"}
        for k, macro in names.items():
            if _finite(data.get(k)):
                self.add(macro, fmt_ppl(float(data[k])), path, f"{k} in gap/summary.json", float(data[k]))
        if data.get("best_hybrid_name"):
            self.add("GapHybridMethod", variant_tex(data["best_hybrid_name"]), path, "best_hybrid_name in gap/summary.json")
        if _finite(data.get("kn5_test_ppl")):
            kn = float(data["kn5_test_ppl"])
            if _finite(data.get("pure_pil_test_ppl")):
                g["pure_vs_kn"] = "better" if float(data["pure_pil_test_ppl"]) < kn else "worse"
            if _finite(data.get("best_hybrid_test_ppl")):
                g["hybrid_vs_kn"] = "better" if float(data["best_hybrid_test_ppl"]) < kn else "worse"
            if _finite(data.get("baseline_test_ppl")):
                g["baseline_vs_kn"] = "better" if float(data["baseline_test_ppl"]) < kn else "worse"
        self._head_calibration(e)

    def _head_calibration(self, e: Experiment) -> None:
        """Whether the solved heads' unigram mixture weight, chosen on validation, sits at the largest
        value of its search grid (``solves`` of phase ``head``: ``mix`` and the searched ``search``)."""
        chosen, tops = [], []
        for r in e.runs():
            heads = [s_ for s_ in r.get("solves", []) if s_.get("phase") == "head" and s_.get("search")]
            if heads:
                tops.append(max(float(row["mix"]) for row in heads[-1]["search"]))
                chosen.append(float(heads[-1]["mix"]) >= tops[-1])
        if not chosen:
            return
        top = max(tops)
        self.add("HeadMixRuns", str(len(chosen)), e, "runs with a solved head (solves: phase=head)", len(chosen))
        self.add("HeadMixEdgeRuns", str(sum(chosen)), e, "of those, runs whose chosen mix is the grid's largest",
                 sum(chosen))
        self.add("HeadMixMax", fmt_fixed(top, 2), e, "largest mix in the heads' search grid", top)
        self.c["gap"]["head_mix_edge"] = sum(chosen)

    def teacher(self) -> None:
        """Teacher targets (``teacher`` notebook): trained baselines whose FFNs are refitted in closed
        form by fixed random features; ``teachers.csv``, ``summary.csv`` (students), ``summary.json``."""
        import pandas as pd

        e = self.R.exp("teacher")
        self.c["teacher"] = None
        data, path = e.json("summary.json")
        tpath = e.path / "teachers.csv"
        if not e.available or not isinstance(data, dict) or not tpath.is_file():
            self._no_table("teacher", TABLE_TITLES["teacher"], ["teacher"])
            return
        both = pd.concat([pd.read_csv(tpath), e.df], ignore_index=True)
        self.tables["teacher"] = generic_table(
            e, "teacher", "Trained FFNs refitted by fixed random features in closed form: the teacher (baseline "
            "trained by AdamW), the same model without FFNs, and with every FFN replaced by a random-feature "
            "readout solved to the teacher's FFN output (embeddings and attention kept, no gradient step)",
            ["variant"], PPL_COLS, df=both, hide=("bipil", "method"))  # the students are not pure PIL-LMs
        self.add("TeacherPPL", fmt_ppl(data["teacher_test_ppl"]), path, "teacher_test_ppl in teacher/summary.json",
                 data["teacher_test_ppl"])
        self.add("TeacherNoFFNPPL", fmt_ppl(data["no_ffn_test_ppl"]), path, "no_ffn_test_ppl in teacher/summary.json",
                 data["no_ffn_test_ppl"])
        # Each closed-form fit by its width (features per layer), narrowest first.
        agg = {str(r["variant"]): r for r in _records(e.agg()[0])}
        fits = sorted(((v, agg[v]) for v in (data.get("fits") or {}) if v in agg and _finite(agg[v].get("n_features"))
                       and _finite(agg[v].get("test_ppl"))), key=lambda vr: float(vr[1]["n_features"]))
        if not fits:
            return
        te = self.c["teacher"] = {"fits": [], "seeds": data.get("seeds"), "same": None, "rf": None}
        for tag, (v, r) in zip(_TAGS, fits):
            self.add(f"TeacherFit{tag}PPL", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, variant={v}", r["test_ppl"])
            self.add(f"TeacherFit{tag}Features", fmt_count(r["n_features"]), e, f"n_features, variant={v}",
                     r["n_features"])
            te["fits"].append({"tag": tag, "variant": tex_escape(v)})
        by_width = {int(float(r["n_features"])): (v, r) for v, r in fits}
        # PIL-LM's own width: the features per layer of the gap experiment's best hybrid.
        g = self.R.exp("gap")
        gap, _ = g.json("summary.json")
        hyb = gap.get("best_hybrid_name") if isinstance(gap, dict) else None
        hrow = None
        if hyb and g.available:
            hrow = next((h for h in _records(g.agg()[0]) if str(h.get("variant")) == hyb), None)
        if hrow is not None and _finite(hrow.get("n_features")) and _finite(hrow.get("test_ppl")):
            same = by_width.get(int(float(hrow["n_features"])))
            if same:
                v, r = same
                te["same"] = {"variant": tex_escape(v),
                              "vs_hybrid": verdict(float(r["test_ppl"]), float(hrow["test_ppl"]))
                              if beyond_seed_spread(r, hrow) else "on_par",
                              "vs_teacher": verdict(float(r["test_ppl"]), float(data["teacher_test_ppl"]))}
                self.add("TeacherSamePPL", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, variant={v} (the width of {hyb})",
                         r["test_ppl"])
                self.add("TeacherSameFeatures", fmt_count(r["n_features"]), g, f"n_features of {hyb}", r["n_features"])
        # As many random features with a readout trained by AdamW jointly with attention (benchmark).
        b = self.R.exp("benchmark")
        if b.available:
            rf = self._bench_rows(b)[0].get("rf_adamw")  # its test perplexity is \RFAdamWPPL (benchmark)
            width = self._rf_width(b)
            if rf is not None and width in by_width:
                v, r = by_width[width]
                te["rf"] = {"variant": tex_escape(v), "vs_fit": verdict(float(rf["test_ppl"]), float(r["test_ppl"]))}
                self.add("TeacherRFFitPPL", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, variant={v}", r["test_ppl"])

    def protocol(self) -> None:
        """Sliding-window rescoring (``protocol`` notebook): ``protocol.csv``, one row per run and stride."""
        import pandas as pd

        e = self.R.exp("protocol")
        self.c["protocol"] = None
        path = e.path / "protocol.csv"
        if not e.available or not path.is_file():
            self._no_table("protocol", TABLE_TITLES["protocol"], ["protocol"])
            return
        df = pd.read_csv(path).rename(columns={"ppl": "test_ppl"})
        src = Experiment("protocol", self.profile, e.path, df, path, e.provenance)
        self.tables["protocol"] = generic_table(
            src, "protocol", "Test perplexity of the same checkpoints scored with non-overlapping windows (stride = "
            "context length, the protocol of every other table) and with windows sliding by fewer tokens, so that "
            "every scored token sees at least context length minus stride tokens of context",
            ["method", "stride"], [Col("test_ppl", r"Test PPL $\downarrow$", fmt_ppl, "lower")])
        agg = {(str(r["method"]), int(r["stride"])): r["test_ppl"] for r in _records(src.agg()[0])}
        strides = sorted({s for _, s in agg})
        if len(strides) < 2:
            return
        slide, block = strides[0], strides[-1]
        self.c["protocol"] = {"strides": strides}
        self.add("ProtoStride", str(slide), path, "smallest stride in protocol.csv", slide)
        self.add("ProtoContext", str(block - slide), path, "context length minus that stride", block - slide)
        both = [m for m in ("baseline", *PIL_METHODS) if (m, slide) in agg and (m, block) in agg]
        pairs = [("baseline", "Baseline")] if "baseline" in both else []
        pil = [m for m in both if m in PIL_METHODS]
        if pil:
            self.add("ProtoPILMethod", method_tex(pil[0]), path, "PIL method in protocol.csv")
            pairs.append((pil[0], "PIL"))
        for m, tag in pairs:
            for kind, stride in (("Slide", slide), ("Block", block)):
                self.add(f"Proto{tag}{kind}", fmt_ppl(agg[m, stride]), path, f"mean ppl {m}, stride {stride}",
                         agg[m, stride])

    def adaptation(self) -> None:
        """Rapid adaptation (``adaptation`` notebook): per new domain and way of adapting, the new
        domain's test perplexity before and after, WikiText-2 after (forgetting), and seconds."""
        e = self.R.exp("adaptation")
        self.c["adapt"] = None
        if not e.available or not {"domain", "how"} <= set(e.df.columns):
            self._no_table("adaptation", TABLE_TITLES["adaptation"], ["adaptation"])
            return
        shared = concurrency(e) > 1  # timed beside other runs
        cols = [Col("before_new_test_ppl", r"Before $\downarrow$", fmt_ppl, None),
                Col("test_ppl", r"After $\downarrow$", fmt_ppl, "lower"),
                Col("before_wiki_test_ppl", r"WikiText-2 before", fmt_ppl, None),
                Col("wiki_test_ppl", r"WikiText-2 after $\downarrow$", fmt_ppl, "lower"),
                Col("adapt_s", "Seconds", fmt_seconds, None if shared else "lower"),  # shared GPUs: no claim
                Col("optimizer_steps", "Steps", fmt_count, None, std=False)]
        self.tables["adaptation"] = generic_table(
            e, "adaptation", "Adaptation of WikiText-2 models to a new domain, read with the pretraining vocabulary: "
            "test perplexity on the new domain before and after, WikiText-2 test perplexity before and after "
            "(forgetting), and the adaptation's wall-clock seconds and optimizer steps; \\texttt{resolve} re-solves "
            "the FFN readouts in closed form, \\texttt{lora} trains rank-$r$ adapters on attention, "
            "\\texttt{finetune} every weight, on the same tokens", ["how"], cols,
            hide=("bipil", "method"), blocks_by=("domain",))  # an adaptation run's method is its way of adapting
        recs = _records(e.agg()[0])
        tags = {"ptb": "PTB", "tinystories": "TinyStories"}
        hows = {"resolve": "Resolve", "lora": "LoRA", "finetune": "Finetune"}
        pre = sorted({str(m) for m in e.df.get("pretrained", e.df["method"]).dropna()})
        ad = self.c["adapt"] = {"domains": [], "pretrained": ", ".join(method_tex(m) for m in pre)}
        for d, dtag in tags.items():
            rows = {str(r["how"]): r for r in recs if str(r.get("domain")) == d and str(r.get("how")) in hows}
            if not rows:
                continue
            first = next(iter(rows.values()))
            self.add(f"Adapt{dtag}Before", fmt_ppl(first["before_new_test_ppl"]), e,
                     f"mean before_new_test_ppl, domain={d}", first["before_new_test_ppl"])
            if _finite(first.get("oov_rate")):
                self.add(f"Adapt{dtag}OOV", fmt_pct(100 * first["oov_rate"]), e, f"100*oov_rate, domain={d}",
                         100 * first["oov_rate"])
            for h, htag in hows.items():
                if h not in rows:
                    continue
                r = rows[h]
                self.add(f"Adapt{dtag}{htag}", fmt_ppl(r["test_ppl"]), e, f"mean test_ppl, domain={d}, how={h}",
                         r["test_ppl"])
                self.add(f"Adapt{dtag}{htag}Wiki", fmt_ppl(r["wiki_test_ppl"]), e,
                         f"mean wiki_test_ppl, domain={d}, how={h}", r["wiki_test_ppl"])
                self.add(f"Adapt{dtag}{htag}Sec", fmt_seconds(r["adapt_s"]), e, f"mean adapt_s, domain={d}, how={h}",
                         r["adapt_s"])
            best = min(rows, key=lambda h: rows[h]["valid_ppl"])  # chosen on the new domain's validation split
            seconds = sorted(rows, key=lambda h: rows[h]["adapt_s"])
            forgets = sorted(rows, key=lambda h: rows[h]["wiki_test_ppl"])  # WikiText-2 after: least forgetting first
            ad["domains"].append({"tag": dtag, "name": "PTB" if d == "ptb" else "TinyStories",
                                  "hows": [(hows[h], h) for h in hows if h in rows], "best": best,
                                  "resolve_fastest": seconds[0] == "resolve",
                                  "resolve_slowest": len(rows) > 1 and seconds[-1] == "resolve",
                                  "least_forgetting": forgets[0], "most_forgetting": forgets[-1],
                                  "best_forgets_most": len(rows) > 1 and forgets[-1] == best,
                                  "concurrent": shared})

    def first_layer(self) -> None:
        """Data-dependent first layers (``first_layer`` notebook): attention→PIL checkpoints re-solved
        with other projections; per width the kind best on validation against fresh random ones, and
        the control (the checkpoint's own projections) against the checkpoint."""
        e = self.R.exp("first_layer")
        self.c["first_layer"] = None
        if not e.available or not {"projection", "expansion"} <= set(e.df.columns):
            self._no_table("first_layer", TABLE_TITLES["first_layer"], ["first_layer"])
            return
        cols = [Col("before_test_ppl", "Checkpoint", fmt_ppl, None), *PPL_COLS,
                Col("n_features", "Features", fmt_count, None, std=False), COND_COL]
        self.tables["first_layer"] = generic_table(
            e, "first_layer", r"Attention$\rightarrow$PIL models whose FFN readouts are re-solved in closed form "
            "with other first layers (projections per layer drawn from its own inputs after the layers below are "
            "re-solved), at the hybrids' width and wider; embeddings and attention are the checkpoint's, no "
            r"optimizer step. \texttt{same}: the checkpoint's own projections (a control)",
            ["projection"], cols, hide=("bipil", "method"), blocks_by=("expansion",))
        recs = _records(e.agg()[0])
        fl = self.c["first_layer"] = {"widths": [], "control": None}
        same = next((r for r in recs if str(r.get("projection")) == "same"), None)
        if same is not None and _finite(same.get("test_ppl")) and _finite(same.get("before_test_ppl")):
            self.add("FirstLayerSamePPL", fmt_ppl(same["test_ppl"]), e, "mean test_ppl, projection=same",
                     same["test_ppl"])
            self.add("FirstLayerCheckpointPPL", fmt_ppl(same["before_test_ppl"]), e,
                     "mean before_test_ppl (the checkpoints), projection=same", same["before_test_ppl"])
            fl["control"] = "reproduces" if similar(float(same["test_ppl"]), float(same["before_test_ppl"])) else "differs"
        widths = sorted({float(r["expansion"]) for r in recs if _finite(r.get("expansion"))})
        for tag, x in zip(_TAGS, widths):
            rows = {str(r["projection"]): r for r in recs if _finite(r.get("expansion")) and float(r["expansion"]) == x
                    and str(r.get("projection")) != "same" and _finite(r.get("valid_ppl"))}
            if "random" not in rows or len(rows) < 2:
                continue
            best = min((k for k in rows if k != "random"), key=lambda k: float(rows[k]["valid_ppl"]))
            b, rnd = rows[best], rows["random"]
            where = f"expansion={x:g}"
            self.add(f"FirstLayer{tag}Features", fmt_count(b["n_features"]), e, f"n_features, {where}", b["n_features"])
            self.add(f"FirstLayer{tag}Best", tex_escape(best), e, f"projection (not random) with the lowest mean "
                     f"valid_ppl, {where}")
            self.add(f"FirstLayer{tag}BestPPL", fmt_ppl(b["test_ppl"]), e, f"mean test_ppl, projection={best}, {where}",
                     b["test_ppl"])
            self.add(f"FirstLayer{tag}RandomPPL", fmt_ppl(rnd["test_ppl"]), e, f"mean test_ppl, projection=random, {where}",
                     rnd["test_ppl"])
            # each seed re-solves its own checkpoint: compare the kinds on the same checkpoint as well
            diffs = paired_differences(e.df, "projection", best, "random", {"expansion": x})
            paired = None
            if len(diffs) > 1:  # one seed's difference is the sentence's own two numbers
                mean = sum(diffs) / len(diffs)
                self.add(f"FirstLayer{tag}PairedDiff", ("+" if mean >= 0 else "-") + fmt_fixed(abs(mean), 2), e,
                         f"mean over seeds of test_ppl(projection={best}) - test_ppl(projection=random), {where}", mean)
                self.add(f"FirstLayer{tag}PairedLower", f"{sum(d < 0 for d in diffs)} of {len(diffs)}", e,
                         f"seeds where projection={best} has the lower test_ppl than random, {where}")
                paired = "lower" if mean < 0 else "higher"
            # with one seed there is no spread to be within: the sentence says "one seed so far" instead
            one_seed = min(int(b.get("n", 1)), int(rnd.get("n", 1))) == 1
            fl["widths"].append({"tag": tag, "vs_random": spread_verdict(b, rnd), "paired": paired,
                                 "one_seed": one_seed})

    def tuning(self) -> None:
        """Fair tuning (``tuning`` notebook): the same lr × dropout grid per gradient-trained method,
        chosen on validation; ``chosen.csv`` has one row per method."""
        import pandas as pd

        e = self.R.exp("tuning")
        self.c["tuning"] = None
        path = e.path / "chosen.csv"
        cap = ("Learning rate and dropout chosen on validation perplexity, the same grid for every "
               "gradient-trained method (one seed per trial)")
        if not e.available or not path.is_file():
            self._no_table("tuning", cap, ["tuning"])
            self._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
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
        self.tables["tuning"] = TableSpec(
            name="tuning", caption=cap, label="tab:tuning", align="lrrrrrr",
            sources=[Experiment("tuning", self.profile, e.path, None, path, e.provenance)],
            header=["Method", "Trials", "lr", "Dropout", "Valid PPL (chosen)", "Valid PPL (common)", "Test PPL (chosen)"],
            rows=rows)
        src = path
        self.c["tuning"] = t = {"incomplete": [method_tex(m) for m in df.loc[~done, "method"]]}
        # Whether the main benchmark ran every method at the common (untuned) setting.
        default = (e.provenance.get("parameters") or {}).get("default") or {}
        bench = self.R.exp("benchmark").runs()
        used = {(r.get("train_config", {}).get("lr"), r.get("model_config", {}).get("dropout")) for r in bench}
        t["main_common"] = bool(bench) and used == {(default.get("lr"), default.get("dropout"))}
        self.add("TuneTrials", str(trials), src, "trials per method (largest)", trials)
        df = df[done]
        if not len(df):
            self._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
            return
        is_default = _flag(df["chosen_is_default"])
        n_default = int(is_default.sum())
        gain = 100 * (1 - df["valid_ppl"] / df["default_valid_ppl"])
        i = gain.idxmax()
        t["all_default"] = n_default == len(df)
        t["changed"] = [method_tex(m) for m in df.loc[~is_default, "method"]]
        self.add("TuneMethods", str(len(df)), src, "complete rows of tuning/chosen.csv", len(df))
        self.add("TuneDefaultCount", str(n_default), src, "complete rows with chosen_is_default", n_default)
        self.add("TuneMaxGainPct", fmt_pct(float(gain[i])), src,
                 "max over methods of 100*(1-valid_ppl/default_valid_ppl)", float(gain[i]))
        self.add("TuneMaxGainMethod", method_tex(df["method"][i]), src, "method with that largest gain")
        # A choice at the end of a grid of three or more values: the grid, not the data, stopped it. With two
        # values every choice is at an end; it is said only when every method chose the same end.
        t["edges"] = []
        for param in ("lr", "dropout"):
            grid = sorted({float(v) for v in e.df.get(param, []) if _finite(v)}) if e.available else []
            if len(grid) < 2:
                continue
            for end, value in (("largest", grid[-1]), ("smallest", grid[0])):
                at = [method_tex(m) for m, v in zip(df["method"], df[param]) if math.isclose(float(v), value)]
                every = len(df) > 1 and len(at) == len(df)
                if at and (len(grid) >= 3 or every):
                    tag = f"{'LR' if param == 'lr' else 'Dropout'}{'Top' if end == 'largest' else 'Bottom'}"
                    self.add(f"TuneEdge{tag}", fmt_sci(value) if param == "lr" else fmt_fixed(value, 2), e,
                             f"the {end} {param} of the tuning grid (summary.csv)", value)
                    t["edges"].append({"param": "learning rate" if param == "lr" else "dropout", "end": end,
                                       "macro": f"TuneEdge{tag}", "methods": ["every method"] if every else at,
                                       "every": every})
        self._tuned(e)

    def _tuned(self, e: Experiment) -> None:
        """``tuned.csv``: every method with a complete grid at its chosen setting, with more seeds."""
        import pandas as pd

        path = e.path / "tuned.csv"
        if not path.is_file():
            self._no_table("tuned", TABLE_TITLES["tuned"], ["tuning"])
            return
        tuned = Experiment("tuning", self.profile, e.path, pd.read_csv(path), path, e.provenance)
        self.tables["tuned"] = generic_table(
            tuned, "tuned", "Every method at its own learning rate and dropout chosen on validation "
            "(Table~\\ref{tab:tuning}), with the grid's seed and more", ["method"], PPL_COLS + [ACC_COL])
        by = {str(r["method"]): r for r in _records(tuned.agg()[0])}
        t = self.c["tuning"]
        if "baseline" in by:
            self.add("TunedBaselinePPL", fmt_ppl(by["baseline"]["test_ppl"]), path,
                     "mean test_ppl of baseline in tuning/tuned.csv", by["baseline"]["test_ppl"])
        pil = {m: r for m, r in by.items() if m in PIL_METHODS}
        if pil:  # the best PIL-LM hybrid at its own setting, chosen on validation
            m = min(pil, key=lambda k: pil[k]["valid_ppl"])
            t["tuned_pil"] = m
            self.add("TunedPILMethod", method_tex(m), path, "PIL method with the lowest mean valid_ppl in tuned.csv")
            self.add("TunedPILPPL", fmt_ppl(pil[m]["test_ppl"]), path, f"mean test_ppl of {m} in tuned.csv",
                     pil[m]["test_ppl"])
            if "baseline" in by:
                ratio = pil[m]["test_ppl"] / by["baseline"]["test_ppl"]
                self.add("TunedRatio", fmt_fixed(ratio, 2), path, f"test_ppl {m} / baseline in tuned.csv", ratio)
            if "attn_only" in by:  # the FFN's contribution at each method's own setting
                self.add("TunedAttnOnlyPPL", fmt_ppl(by["attn_only"]["test_ppl"]), path,
                         "mean test_ppl of attn_only in tuned.csv", by["attn_only"]["test_ppl"])
                t["tuned_pil_vs_attn"] = spread_verdict(pil[m], by["attn_only"])
        counts = tuned.df.groupby("method")["seed"].nunique()
        lo, hi = int(counts.min()), int(counts.max())
        t["tuned_seeds_vary"] = lo != hi
        self.add("TunedSeeds", str(hi), path, "most seeds of a method in tuned.csv", hi)
        self.add("TunedSeedsMin", str(lo), path, "fewest seeds of a method in tuned.csv", lo)

    def _eta_grid_top(self) -> None:
        """Per experiment, the searched solves (η chosen on validation) whose η is the grid's largest:
        there the grid, not the data, limited the step (``eta_at_edge`` at the top of ``search``)."""
        tops = []
        for name in PAPER_EXPERIMENTS:
            e = self.R.exp(name)
            if not e.available:
                continue
            searched = [s_ for r in e.runs() for s_ in _searched(r)]
            top = [s_ for s_ in searched if _eta_at_top(s_)]
            if top:
                tops.append((e, len(top), len(searched), max(s_["eta"] for s_ in top)))
        self.c["closing"]["eta_top"] = []
        for tag, (e, k, n, eta) in zip(_TAGS, sorted(tops, key=lambda t: -t[1])):
            self.add(f"EtaTop{tag}Solves", str(k), e, "searched solves whose eta is the grid's largest (eta_at_edge)", k)
            self.add(f"EtaTop{tag}Of", str(n), e, "searched solves (local/global/next_embedding targets)", n)
            self.add(f"EtaTop{tag}Eta", fmt_pow10(eta), e, "the largest eta of the grid", eta)
            self.c["closing"]["eta_top"].append({"tag": tag, "experiment": e.name})

    def _rf_width(self, e: Experiment) -> int | None:
        """Random features per layer of the benchmark's ``rf_adamw`` runs, added once as ``RFFeatures``."""
        width = _rf_features(e)
        if width and not self.n.has("RFFeatures"):
            self.add("RFFeatures", fmt_count(width), e, "features per layer of rf_adamw "
                     "(params_ffn_frozen_random / (n_layer * n_embd))", width)
        return width

    def _bench_rows(self, e: Experiment) -> tuple[dict, Any, dict, str]:
        """The benchmark's primary group: ``(row by method, its aggregate, the group's key values,
        their description)``."""
        agg, keys = e.agg()
        sl, sel = primary_slice(agg, keys, "method")
        return {str(r["method"]): r for r in _records(sl)}, sl, sel, ", ".join(f"{k}={v}" for k, v in sel.items())

    def closing(self) -> None:
        """Issue-7 diagnostics: where the gap to the baseline comes from (benchmark runs' curves and
        solves, the PIL ablations) and, when it was run, the ``gap`` experiment against its goals."""
        c = self.c
        c["closing"] = cl = {}
        e = self.R.exp("benchmark")
        if e.available:
            # the main configuration's runs only: other sizes and budgets would mix perplexity levels and steps
            by, _, primary, where = self._bench_rows(e)
            main_runs = _runs_where(e, primary)

            def curve_pairs(method):  # (valid ppl just before the last closed-form phase, just after)
                out = []
                for r in main_runs:
                    pts = r.get("curve") or []
                    if r.get("method") != method or len(pts) < 2 or pts[-1].get("phase") != "pil":
                        continue
                    out.append((float(pts[-2]["valid_ppl"]), float(pts[-1]["valid_ppl"])))
                return out

            pairs = curve_pairs("attn_then_pil")
            if pairs:
                before, after = st.mean(p[0] for p in pairs), st.mean(p[1] for p in pairs)
                src = ("attn_then_pil runs' curve, " + ", ".join(f"{k}={v}" for k, v in primary.items())
                       + ": mean valid_ppl of the last AdamW epoch / after the solve")
                self.add("SolveAfterAttnBefore", fmt_ppl(before), e, src + " (before)", before)
                self.add("SolveAfterAttnAfter", fmt_ppl(after), e, src + " (after)", after)
                self.add("SolveAfterAttnGainPct", fmt_pct(100 * (1 - after / before)), e,
                         "100*(1-after/before) of the above", 100 * (1 - after / before))
                cl["solve_gain"] = True
            init = [s_["eta"] for r in main_runs if r.get("method") == "pil_then_attn" for s_ in r.get("solves", [])
                    if s_.get("phase") == "pil" and _finite(s_.get("eta"))]
            trained = [s_["eta"] for r in main_runs for s_ in r.get("solves", [])
                       if (r.get("method") == "attn_then_pil" and s_.get("phase") == "pil")
                       or (r.get("method") == "alternating" and str(s_.get("phase", "")).startswith("resolve"))
                       if _finite(s_.get("eta"))]
            if init and trained:
                mi, mt = st.median(init), st.median(trained)
                self.add("EtaInitMedian", fmt_pow10(mi), e, f"median eta of {len(init)} solves of pil_then_attn "
                         f"(untrained model), {where}", mi)
                self.add("EtaTrainedMedian", fmt_pow10(mt), e, f"median eta of {len(trained)} solves after AdamW "
                         f"(attn_then_pil, alternating re-solves), {where}", mt)
                cl["eta"] = mt < mi
            if {"pil_then_attn", "attn_only"} <= set(by):
                pv, av = float(by["pil_then_attn"]["valid_ppl"]), float(by["attn_only"]["valid_ppl"])
                self.add("PilThenAttnValid", fmt_ppl(pv), e, f"mean valid_ppl of pil_then_attn, {where}", pv)
                self.add("AttnOnlyValid", fmt_ppl(av), e, f"mean valid_ppl of attn_only, {where}", av)
                cl["frozen_hurts"] = pv > av
            ppl = {m: float(r["test_ppl"]) for m, r in by.items()}
            if {"rf_adamw", "attn_only", "baseline"} <= set(by):
                ret = gap_recovered_pct(ppl, "rf_adamw")
                if ret is not None:
                    self.add("RFRetention", fmt_pct(ret), e, "100*(ln ppl[attn_only]-ln ppl[rf_adamw])/"
                             f"(ln ppl[attn_only]-ln ppl[baseline]), {where}", ret)
                    cl["rf_retention"] = ret
                    hyb = (c.get("bench") or {}).get("hybrid")
                    rf_d = self._rf_width(e)
                    hyb_d = by[hyb].get("n_features") if hyb in by else None
                    if rf_d and _finite(hyb_d):
                        self.add("HybridFeatures", fmt_count(hyb_d), e, f"n_features of {hyb}, {where}", hyb_d)
                        cl["rf_same_width"] = int(rf_d) == int(float(hyb_d))
                    if hyb in by:
                        cl["readout_share"] = ret - gap_recovered_pct(ppl, hyb)  # lost by the closed-form readout
                        cl["layer_share"] = 100 - ret  # lost by the frozen random first layer
        self._eta_grid_top()
        # the closed-form knobs: spread of every PIL ablation cell against the spread over seeds
        cells, stds, sources = [], [], []
        for name in ("ablation_bipil", "ablation_lambda", "ablation_expansion", "ablation_fusion"):
            a = self.R.exp(name)
            if not a.available or "test_ppl" not in a.df.columns:
                continue
            agg, _ = a.agg()
            cells += [float(v) for v in agg["test_ppl"] if _finite(v)]
            stds += [float(v) for v in agg.get("test_ppl_std", []) if _finite(v)]
            sources.append(a)
        if len(cells) > 1 and sources:
            lo, hi = min(cells), max(cells)
            src = sources[0]
            names = ", ".join(a.name for a in sources)
            self.add("AblCells", str(len(cells)), src, f"number of (cell) rows over {names}", len(cells))
            self.add("AblPPLMin", fmt_ppl(lo), src, f"min mean test_ppl over the cells of {names}", lo)
            self.add("AblPPLMax", fmt_ppl(hi), src, f"max mean test_ppl over the cells of {names}", hi)
            if stds:
                sd = st.median(stds)
                self.add("AblSeedStd", fmt_fixed(sd, 1), src, f"median over cells of the std over seeds, {names}", sd)
        # the gap experiment against the issue's goals
        g = self.R.exp("gap")
        gap, path = g.json("summary.json")
        if g.available and "variant" in g.df.columns:
            self.tables["gap"] = generic_table(g, "gap", "Closing the gap: every variant of the gap experiment "
                                               "(best hybrid and best pure variant chosen on validation)",
                                               ["variant"], PPL_COLS + [Col("total_s", r"Total (s)", fmt_seconds, None)],
                                               # the variant's name says its method and options in words
                                               hide=("bipil", "method", "final_resolve", "solve_head", "target",
                                                     "proj_init", "embed_init"))
        else:
            self._no_table("gap", TABLE_TITLES["gap"], ["gap"])
        if isinstance(gap, dict):
            ratio = gap.get("hybrid_over_baseline")
            if _finite(ratio):
                self.add("GapRatio", fmt_fixed(float(ratio), 2), path, "hybrid_over_baseline in gap/summary.json",
                         float(ratio))
                cl["hybrid_goal"] = float(ratio) <= GAP_GOAL
            if _finite(gap.get("pure_pil_test_ppl")) and _finite(gap.get("kn5_test_ppl")):
                cl["pure_goal"] = float(gap["pure_pil_test_ppl"]) < float(gap["kn5_test_ppl"])
            if gap.get("pure_pil_name"):
                self.add("GapPureMethod", variant_tex(gap["pure_pil_name"]), path, "pure_pil_name in gap/summary.json")

    def bench(self) -> None:
        """GPU micro-benchmarks (``pillm bench``): headline ratios merged over the files of one device
        (``<slug>.json`` and ``<slug>-2gpu.json``); quick (test-size) runs are ignored."""
        self.c["gpu"] = None
        files = [(p, d) for p, d in self.R.bench() if isinstance(d, dict) and not d.get("quick")]
        keys = ("gram_rate_ratio", "pil_phase_over_baseline_train", "pil_phase_speedup_2gpu")
        files = [(p, d) for p, d in files if any(_finite(d.get(k)) for k in keys)]
        if not files:
            return
        dev_of = lambda d: d.get("device_name") or (d.get("environment") or {}).get("device_name") or ""  # noqa: E731
        devices: dict[str, list] = {}
        for p, d in files:
            devices.setdefault(dev_of(d), []).append((p, d))
        dev = max(devices, key=lambda k: (sum(any(_finite(d.get(x)) for _, d in devices[k]) for x in keys), k))
        group = devices[dev]
        g = self.c["gpu"] = {}

        def first(key):
            return next(((p, d) for p, d in group if _finite(d.get(key))), (None, None))

        p0 = group[0][0]
        self.add("GPUDevice", tex_escape(dev or p0.stem), p0, "device_name of the benchmark file")
        p, d = first("gram_rate_ratio")
        if p:
            self.add("GPUGramRateRatio", fmt_ratio(float(d["gram_rate_ratio"])), p, "gram_rate_ratio")
            g["gram"] = float(d["gram_rate_ratio"])
            if _finite(d.get("gram_rate_ratio_D")):
                self.add("GPUGramD", fmt_count(d["gram_rate_ratio_D"]), p, "gram_rate_ratio_D")
        p, d = first("pil_phase_over_baseline_train")
        if p:
            v = float(d["pil_phase_over_baseline_train"])
            self.add("GPUPILOverBaseline", fmt_ratio(v) if v >= 0.01 else fmt_sci(v, 1), p, "pil_phase_over_baseline_train", v)
            self.add("GPUPILOverBaselinePct", fmt_fixed(100 * v, 2 if v < 0.1 else 1), p, "100*pil_phase_over_baseline_train")
            g["pil_over_baseline"] = v
            g["projected"] = bool((d.get("training") or {}).get("baseline_train_projected", d.get("baseline_train_projected")))
        p, d = first("pil_phase_speedup_2gpu")
        if p:
            self.add("GPUSpeedupTwo", fmt_ratio(float(d["pil_phase_speedup_2gpu"])), p, "pil_phase_speedup_2gpu")
            g["two"] = float(d["pil_phase_speedup_2gpu"])

    # -------------------------------------------------------------- complexity
    def complexity(self) -> None:
        """Complexity: the notebook's least-squares fit ``t ≈ a·N·D² + b·D³`` of the per-layer
        closed-form time (``fit.csv``/``fit.json`` with ``a``, ``b``, ``r2``; ``solves.csv`` per layer),
        or any ``fit.json`` with a ``crossover`` / exponents."""
        e = self.R.exp("complexity")
        self.c["complexity"] = None
        fit, fit_path = _complexity_fit(e) if e.available else (None, None)
        two_part = isinstance(fit, dict) and _finite(fit.get("c")) and _finite(fit.get("r2_stream"))
        cap = (r"Least-squares fits of the two measured parts of a layer's closed-form phase (median over layers "
               r"per $(N, D)$): the streaming pass, $e + c\,N + a\,N D^2$, and the solve, $s + b\,D^3$" if two_part else
               r"Least-squares fit of the measured time of the closed-form phase per layer, $t \approx a\,N D^2 + b\,D^3$")
        if not e.available:
            self._no_table("complexity_fit", cap, ["complexity"])
            return
        solves, solves_path = _complexity_solves(e)
        cx = self.c["complexity"] = {"x": _complexity_x(e.df, fit if isinstance(fit, dict) else None),
                                     "two_part": two_part}
        a, b = (fit or {}).get("a") if isinstance(fit, dict) else None, (fit or {}).get("b") if isinstance(fit, dict) else None
        if _finite(a) and _finite(b):
            a, b = float(a), float(b)
            cx["model"] = True
            r2 = (fit or {}).get("r2")
            cx["concurrent"] = concurrency(e)
            # A fit that explains little of the timings locates no crossover, whatever its coefficients.
            cx["why"] = ("one coefficient is not positive" if not (a > 0 and b > 0) else
                         f"{'an' if two_part else 'its'} $R^2$ is below {FIT_MIN_R2}"
                         if _finite(r2) and float(r2) < FIT_MIN_R2 else None)
            cx["resolved"] = cx["why"] is None
            src = Experiment("complexity", self.profile, e.path, None, fit_path, e.provenance)
            model = ("the fits e + c*N + a*N*D^2 (streaming) and s + b*D^3 (solve)" if two_part
                     else "the fit t = a*N*D^2 + b*D^3")
            self.add("ComplexityA", fmt_sci(a, 2), fit_path, f"a in {model}")
            self.add("ComplexityB", fmt_sci(b, 2), fit_path, f"b in {model}")
            rows = [[r"$a$ (s per $N D^2$)", fmt_sci(a, 2)], [r"$b$ (s per $D^3$)", fmt_sci(b, 2)]]
            if two_part:
                c, r2s, r2v = float(fit["c"]), float(fit["r2_stream"]), float(fit["r2_solve"])
                self.add("ComplexityC", fmt_sci(c, 2), fit_path, "c in the streaming fit e + c*N + a*N*D^2")
                self.add("ComplexityRTwoStream", fmt_fixed(r2s, 3), fit_path, "r2_stream")
                self.add("ComplexityRTwoSolve", fmt_fixed(r2v, 3), fit_path, "r2_solve")
                rows += [[r"$c$ (s per token, independent of $D$)", fmt_sci(c, 2)],
                         [r"$R^2$ streaming pass", fmt_fixed(r2s, 3)], [r"$R^2$ solve", fmt_fixed(r2v, 3)]]
                if a > 0 and c > 0:
                    d_star = math.sqrt(c / a)
                    self.add("ComplexityStreamD", fmt_count(d_star), fit_path,
                             "sqrt(c/a): the HtH term a*N*D^2 exceeds the D-independent c*N for D above it", d_star)
                    self.add("ComplexityGramTFLOPS", fmt_fixed(2 / a / 1e12, 0), fit_path,
                             "2/a / 1e12: 2*N*D^2 flops of HtH per a*N*D^2 seconds", 2 / a / 1e12)
                    rows += [[r"$\sqrt{c/a}$ ($a N D^2 > c N$ above this $D$)", fmt_count(d_star)],
                             [r"$2/a$ (TFLOP/s of the $H^\top H$ update)", fmt_fixed(2 / a / 1e12, 0)]]
                    cx["stream_d"] = d_star
            elif _finite(r2):
                self.add("ComplexityRTwo", fmt_fixed(float(r2), 3), fit_path, "r2 of the fit")
                rows.append([r"$R^2$", fmt_fixed(float(r2), 3)])
            if not cx["resolved"]:
                self.tables["complexity_fit"] = TableSpec(
                    name="complexity_fit", caption=cap, label="tab:complexity_fit", header=["Quantity", "Value"],
                    rows=rows, align="lr", sources=[src])
                return
            ratio = b / a
            self.add("ComplexityCrossRatio", fmt_sci(ratio, 1) if ratio >= 1e4 or ratio < 1 else fmt_fixed(ratio, 1),
                     fit_path, "b/a: the accumulation term a*N*D^2 exceeds the solve term b*D^3 for N > (b/a)*D")
            rows.append([r"$b/a$ (crossover $N^\ast = (b/a)\,D$)", fmt_fixed(ratio, 1) if 1 <= ratio < 1e4 else fmt_sci(ratio)])
            dcol = solves if solves is not None and "n_features" in solves.columns else e.df
            dmax = float(dcol["n_features"].max()) if "n_features" in dcol.columns and _finite(dcol["n_features"].max()) else None
            if dmax:
                dsrc = solves_path if dcol is solves else e.source
                cross = ratio * dmax
                self.add("ComplexityMaxD", fmt_count(dmax), dsrc, "largest number of features D measured")
                if cx.get("stream_d"):
                    cx["stream_dominates"] = dmax < cx["stream_d"]
                self.add("ComplexityCrossTokens", fmt_count(cross), fit_path,
                         f"(b/a)*D at the largest D={dmax:g} (D from {rel(dsrc)})")
                rows.append([f"$N^\\ast$ at $D={group_digits(int(dmax))}$", fmt_count(cross)])
                tcol = solves if solves is not None and "tokens" in solves.columns else None
                if tcol is not None and _finite(tcol["tokens"].max()):
                    nmax = float(tcol["tokens"].max())
                    self.add("ComplexityMaxTokens", fmt_count(nmax), solves_path, "largest token count N measured")
                    cx["beyond"] = nmax > cross
            cx["crossover"] = True
            self.tables["complexity_fit"] = TableSpec(
                name="complexity_fit", caption=cap + r"; the accumulation term dominates for $N > N^\ast = (b/a)\,D$",
                label="tab:complexity_fit", header=["Quantity", "Value"], rows=rows, align="lr", sources=[src])
            return
        # any other fit: a crossover and exponents, when given
        leaves = dict(_numeric_leaves(fit)) if isinstance(fit, (dict, list)) else {}
        x = cx["x"]
        crossover = next(((v, fit_path, k) for k, v in leaves.items() if "crossover" in k.lower()), None)
        if crossover is None and x:
            est = _estimate_crossover(e.df, x)
            if est is not None:
                crossover = (est, e.source, "power-law fits of pil_s (PIL methods) and train_s (baseline) by pillm.report")
        fits = _fits(e.df, x) if x else None
        if fits:
            cx["pil_cheaper_above"] = fits[0][1] < fits[1][1]
        if crossover is not None and _finite(crossover[0]) and x:
            self.add("ComplexityCrossover", fmt_count(crossover[0]) if crossover[0] >= 100 else fmt_sci(crossover[0]),
                     crossover[1], f"crossover ({crossover[2]})")
            self.add("ComplexityVariable", r"\texttt{" + tex_escape(x) + "}", e, "varied parameter of complexity/summary.csv")
            cx["crossover_x"] = True
        for k, v in leaves.items():
            low = k.lower()
            if not any(w in low for w in ("exponent", "slope")):
                continue
            if "pil" in low and not self.n.has("ComplexityPILExponent"):
                self.add("ComplexityPILExponent", fmt_fixed(v, 2), fit_path, f"{k} in {fit_path.name}")
            elif ("adamw" in low or "baseline" in low) and not self.n.has("ComplexityAdamWExponent"):
                self.add("ComplexityAdamWExponent", fmt_fixed(v, 2), fit_path, f"{k} in {fit_path.name}")
        rows = [[tex_escape(k), fmt_sci(v, 2) if abs(v) >= 1e3 or (0 < abs(v) < 1e-2) else fmt_fixed(v, 3)]
                for k, v in leaves.items()]
        if rows:
            src = Experiment("complexity", self.profile, e.path, None, fit_path, e.provenance)
            self.tables["complexity_fit"] = TableSpec(
                name="complexity_fit", caption=f"Fit of the measured training time (\\texttt{{{fit_path.name}}})",
                label="tab:complexity_fit", header=["Quantity", "Value"], rows=rows, align="lr", sources=[src])
        else:
            self._no_table("complexity_fit", cap, ["complexity"])

    # -------------------------------------------------------------- curves
    def curves(self) -> None:
        e = self.R.exp("training_curves")
        self.c["curves"] = None
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
        cv = self.c["curves"] = {}
        self.add("CurvesBaselinePPL", fmt_ppl(bppl), e, "mean final valid_ppl of the baseline curves (result.json)")
        if _finite(bwall):
            self.add("CurvesBaselineWall", fmt_seconds(bwall), e, "mean final wall_s of the baseline curves (result.json)")
        pil = {m: mean([p for p, _ in v]) for m, v in final.items() if m in PIL_METHODS}
        if not pil:
            return
        m = min(pil, key=pil.get)
        cv["best"] = m
        self.add("CurvesPILMethod", method_tex(m), e, "PIL method with the lowest mean final valid_ppl (result.json)")
        self.add("CurvesPILPPL", fmt_ppl(pil[m]), e, f"mean final valid_ppl of {m} (result.json)")
        # time to reach the baseline's final validation perplexity
        hits = []
        for r in runs:
            if str(r.get("method")) != m:
                continue
            hit = [float(p["wall_s"]) for p in r["curve"] if _finite(p.get("valid_ppl")) and _finite(p.get("wall_s"))
                   and float(p["valid_ppl"]) <= bppl]
            hits.append(min(hit) if hit else None)
        cv["reaches"] = bool(hits) and all(h is not None for h in hits)
        if cv["reaches"] and _finite(bwall):
            t = mean(hits)
            self.add("CurvesTimeToBaseline", fmt_seconds(t), e, f"mean first wall_s at which {m} reaches the baseline's final valid_ppl")
            ratio = bwall / t if t > 0 else math.inf
            self.add("CurvesTimeRatio", fmt_ratio(max(ratio, 1 / ratio)) if t > 0 else r"\ensuremath{\infty}", e,
                     f"baseline final wall_s / time-to-baseline of {m} (or its inverse when <1)", ratio)
        solved = [p for r in runs if str(r.get("method")) == m for p in r["curve"]
                  if p.get("phase") == "pil" and _finite(p.get("valid_ppl"))]
        init = [p for r in runs if str(r.get("method")) == m for p in r["curve"]
                if p.get("phase") == "init" and _finite(p.get("valid_ppl"))]
        if solved and init:
            self.add("CurvesInitPPL", fmt_ppl(mean([float(p["valid_ppl"]) for p in init])), e,
                     f"mean valid_ppl of {m} at initialisation (phase=init)")
            self.add("CurvesSolvedPPL", fmt_ppl(mean([float(p["valid_ppl"]) for p in solved])), e,
                     f"mean valid_ppl of {m} right after its closed-form phase (phase=pil)")
            cv["solve_point"] = True

    # -------------------------------------------------------------- setup tables
    def setup_tables(self) -> None:
        """Model configurations, datasets, hyper-parameters and hardware (from code + results)."""
        from ..model import PRESETS

        all_exps = [self.R.exp(n) for n in PAPER_EXPERIMENTS if n != "gap"]
        avail = [e for e in all_exps if e.available and e.df is not None]
        sizes: dict[str, dict] = {}
        for e in avail:
            if "size" not in e.df.columns:
                continue
            for s in e.df["size"].dropna().unique():
                sizes.setdefault(str(s), {"exps": set()})["exps"].add(e.name)
        runs = [(e, r) for e in avail for r in e.runs()]
        # models
        rows = []
        srcs = [e for e in avail if "size" in e.df.columns]
        for s in sorted(sizes, key=_natural_key):
            p = PRESETS.get(s)
            if p is None:
                continue
            mc = next((r.get("model_config") for _, r in runs if r.get("size") == s and r.get("model_config")), None) or {}
            block = mc.get("block_size", p.get("block_size"))
            exp_ = mc.get("expansion")
            base = [e for e in srcs if s in e.df["size"].astype(str).values and "method" in e.df.columns]
            ptot = None
            for e in base:
                sel = e.df[(e.df["size"].astype(str) == s) & (e.df["method"] == "baseline")]
                if len(sel) and "params_total" in sel.columns and _finite(sel["params_total"].iloc[0]):
                    ptot = float(sel["params_total"].iloc[0])
                    break
            rows.append([tex_escape(s), str(p["n_layer"]), str(p["n_embd"]), str(p["n_head"]),
                         str(block) if block else "--", fmt_plain(float(exp_)) if exp_ is not None else "--",
                         fmt_params(ptot) if ptot else "--"])
        if rows:
            self.tables["models"] = TableSpec(
                "models", "Model configurations used in the experiments (presets of \\texttt{pillm.model}; "
                "context length and expansion as recorded in the runs; parameters of the baseline including "
                "embeddings)", "tab:models",
                ["Size", "Layers", r"$d_{\mathrm{model}}$", "Heads", "Context", "Expansion", "Params"],
                rows, align="lrrrrrr", sources=srcs)
        else:
            self._no_table("models", "Model configurations", ["benchmark"])
        # datasets
        drows, seen = [], set()
        for e, r in runs:
            d = r.get("dataset")
            if not d or d in seen or not r.get("train_tokens"):
                continue
            seen.add(d)
            spec = r.get("spec") or {}
            mc = r.get("model_config") or {}
            tok = spec.get("tokenizer", "auto")
            if tok == "auto":  # pillm.data: word-level for WikiText-2/PTB, byte-level BPE for TinyStories
                tok = {"wikitext2": "word", "ptb": "word", "tinystories": "bpe"}.get(d, tok)
            drows.append([dataset_tex(d), {"word": "word-level", "bpe": "byte-level BPE"}.get(tok, tex_escape(tok)),
                          fmt_count(mc["vocab_size"]) if mc.get("vocab_size") else "--",
                          fmt_count(r["train_tokens"]), fmt_count(r["test_tokens"]) if r.get("test_tokens") else "--"])
        drows.sort(key=lambda row: row[0])
        dsrc = sorted({e.name for e, r in runs if r.get("dataset") in seen})
        if drows:
            self.tables["datasets"] = TableSpec(
                "datasets", "Corpora as tokenized by the runs (train tokens after any \\texttt{max\\_train\\_tokens} "
                "cap; scored test tokens)", "tab:datasets", ["Corpus", "Tokenizer", "Vocabulary", "Train tokens",
                                                             "Test tokens"],
                drows, align="llrrr", sources=[self.R.exp(n) for n in dsrc])
        else:
            self._no_table("datasets", "Corpora and token counts", ["benchmark"])
        # hyper-parameters of the main benchmark
        b = self.R.exp("benchmark")
        bruns = _runs_where(b, _main_configuration(b)) if b.available else []  # not another budget's or size's
        keys = ("epochs", "batch_size", "lr", "min_lr_ratio", "warmup_frac", "weight_decay", "grad_clip", "lam",
                "target", "iterations", "search_tokens", "max_train_tokens", "max_eval_tokens")
        hrows = []
        methods = []
        for r in bruns:
            if r.get("method") not in methods and r.get("train_config"):
                methods.append(r["method"])
        methods.sort(key=_natural_key)
        if methods:
            cfgs = {m: next(r["train_config"] for r in bruns if r.get("method") == m and r.get("train_config"))
                    for m in methods}
            for k in keys:
                vals = [cfgs[m].get(k) for m in methods]
                if all(v is None for v in vals):
                    continue
                uniq = []
                for v in vals:
                    if v not in uniq:
                        uniq.append(v)
                cell = fmt_plain(uniq[0]) if len(uniq) == 1 else "; ".join(
                    f"{fmt_plain(v)} ({', '.join(METHOD_PLAIN.get(m, m) for m, vv in zip(methods, vals) if vv == v)})"
                    .replace("→", r"$\rightarrow$") for v in uniq)
                hrows.append([r"\texttt{" + tex_escape(k) + "}", cell if cell != "None" else "--"])
            self.tables["hparams"] = TableSpec(
                "hparams", "Training hyper-parameters of the main benchmark runs (\\texttt{train\\_config} in each "
                "\\texttt{result.json}); where methods differ, the methods are named", "tab:hparams",
                ["Setting", "Value"], hrows, align="lp{0.6\\linewidth}", sources=[b])
        else:
            self._no_table("hparams", "Training hyper-parameters of the main benchmark", ["benchmark"])
        # hardware and provenance
        from ..experiments import run_provenance  # experiments imports this module: import when used

        prow = []
        psrc = []
        for e in [self.R.exp(n) for n in PAPER_EXPERIMENTS]:
            if not e.available:
                continue
            env = e.provenance.get("environment") or {}
            # where the runs were computed (the notebook may have run elsewhere); result.json as already read
            runs = run_provenance(e.path, {r["_path"]: r for r in e.runs()})
            date = str(e.provenance.get("finished") or e.provenance.get("date") or env.get("date") or "")[:10]
            prow.append([r"\texttt{" + tex_escape(e.name) + "}", fmt_count(runs["count"]) if runs["count"] else "--",
                         _tally(runs["device_name"]), _tally(runs["torch"]),
                         _tally(runs["git_commit"], lambda c: c[:8]),
                         tex_escape(f"{env.get('device_name', '--')}, torch {env.get('torch', '--')}"),
                         tex_escape(date) if date else "--", r"\texttt{" + e.sha + "}"])
            psrc.append(e)
        if prow:
            self.tables["hardware"] = TableSpec(
                "hardware", "Hardware, software and provenance of every result in this paper "
                "(\\texttt{provenance.json}): where the runs were computed (device, torch and commit of "
                "their \\texttt{result.json}, with counts where they differ) and where the notebook that "
                "collected them last executed. A run is used only while its key (its resolved configuration "
                "and a hash of the library code it ran) matches the current code, so runs recorded at "
                "different commits computed the same thing", "tab:hardware",
                ["Experiment", "Runs", "Device (runs)", "torch (runs)", "Commit (runs)", "Notebook executed on",
                 "Date", "Results"], prow, align="lrllllll", sources=psrc, star=True)
        else:
            self._no_table("hardware", "Hardware and provenance", list(PAPER_EXPERIMENTS))

    # -------------------------------------------------------------- everything
    def compute(self) -> None:
        """Every section; one whose results cannot be read is reported as not available (and the
        error is kept in ``errors`` for the build log) instead of stopping the build."""
        steps = (("benchmark", self.benchmark, ("benchmark",), "bench"),
                 ("lambada", self.lambada, ("lambada",), "lambada"),
                 ("ablation_bipil", self.ablation_bipil, ("ablation_bipil",), "bipil"),
                 ("ablation_lambda", self.ablation_lambda, ("ablation_lambda",), "lam"),
                 ("ablation_expansion", self.ablation_expansion, ("ablation_expansion",), "expansion"),
                 ("ablation_fusion", self.ablation_fusion, ("ablation_fusion",), "fusion"),
                 ("training_strategy", self.strategy, ("training_strategy",), "strategy"),
                 ("tinystories", self.tinystories, ("tinystories",), "tiny"),
                 ("gap", self.gap, (), "gap"),
                 ("teacher", self.teacher, ("teacher",), "teacher"),
                 ("adaptation", self.adaptation, ("adaptation",), "adapt"),
                 ("first_layer", self.first_layer, ("first_layer",), "first_layer"),
                 ("protocol", self.protocol, ("protocol",), "protocol"),
                 ("ngram", self.ngram, ("ngram",), "ngram"),
                 ("bench", self.bench, (), "gpu"),
                 ("complexity", self.complexity, ("complexity_fit",), "complexity"),
                 ("training_curves", self.curves, (), "curves"),
                 ("closing", self.closing, ("gap",), "closing"),
                 ("tuning", self.tuning, ("tuning", "tuned"), "tuning"),
                 ("setup", self.setup_tables, ("models", "datasets", "hparams", "hardware"), None))
        for name, fn, tables, claim in steps:
            try:
                if name in PAPER_EXPERIMENTS and self.R.exp(name).error:  # e.g. its notebook failed
                    raise ReportError(self.R.exp(name).error)
                fn()
            except Exception as err:  # a malformed results file must not stop the paper build
                self.errors.append(f"{name}: {type(err).__name__}: {err}")
                if claim:
                    self.c[claim] = None
                if name == "tinystories":
                    self.c["samples"] = None
                for t in tables:
                    self._no_table(t, TABLE_TITLES[t], [name])
                    self.broken.add(t)
        self.c["missing"] = self.R.missing()
        self.c["partial"] = [{"name": e.name, **g} for e in self.R.partial() for g in e.unfinished]
        self.c["outdated"] = [{"name": e.name, "changes": [(tex_escape(k), _param_tex(a), _param_tex(b))
                                                           for k, a, b in e.outdated]} for e in self.R.outdated()]
        self.c["profile"] = self.profile
