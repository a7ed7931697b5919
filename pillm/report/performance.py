"""Performance: the GPU benchmarks of the streaming solve and the measured complexity."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .config import FIT_MIN_R2
from .files import rel
from .fmt import _finite, fmt_count, fmt_fixed, fmt_ratio, fmt_sci, group_digits, tex_escape
from .results import concurrency, Experiment
from .tables import TableSpec
from .analysis import (
    _complexity_fit, _complexity_solves, _complexity_x, _estimate_crossover, _fits, _numeric_leaves,
)

if TYPE_CHECKING:
    from .sections import Report


def bench(rep: Report) -> None:
    """GPU micro-benchmarks (``pillm bench``): headline ratios merged over the files of one device
    (``<slug>.json`` and ``<slug>-2gpu.json``); quick (test-size) runs are ignored."""
    rep.c["gpu"] = None
    files = [(p, d) for p, d in rep.R.bench() if isinstance(d, dict) and not d.get("quick")]
    keys = ("gram_rate_ratio", "pil_phase_over_baseline_train", "pil_phase_speedup_2gpu", "hybrid_over_baseline_train")
    files = [(p, d) for p, d in files if any(_finite(d.get(k)) for k in keys)]
    if not files:
        return
    dev_of = lambda d: d.get("device_name") or (d.get("environment") or {}).get("device_name") or ""  # noqa: E731
    devices: dict[str, list] = {}
    for p, d in files:
        devices.setdefault(dev_of(d), []).append((p, d))
    dev = max(devices, key=lambda k: (sum(any(_finite(d.get(x)) for _, d in devices[k]) for x in keys), k))
    group = devices[dev]
    g = rep.c["gpu"] = {}

    def first(key):
        return next(((p, d) for p, d in group if _finite(d.get(key))), (None, None))

    p0 = group[0][0]
    rep.add("GPUDevice", tex_escape(dev or p0.stem), p0, "device_name of the benchmark file")
    p, d = first("gram_rate_ratio")
    if p:
        rep.add("GPUGramRateRatio", fmt_ratio(float(d["gram_rate_ratio"])), p, "gram_rate_ratio")
        g["gram"] = float(d["gram_rate_ratio"])
        if _finite(d.get("gram_rate_ratio_D")):
            rep.add("GPUGramD", fmt_count(d["gram_rate_ratio_D"]), p, "gram_rate_ratio_D")
        # the headline ratio is measured at the largest width; the smallest measured width goes with it
        sizes = [r for r in ((d.get("gram") or {}).get("per_size") or [])
                 if _finite(r.get("D")) and _finite(r.get("gram_rate_ratio"))]
        low = min(sizes, key=lambda r: r["D"]) if sizes else None
        if low and low["D"] != d.get("gram_rate_ratio_D"):
            rep.add("GPUGramRatioLow", fmt_ratio(float(low["gram_rate_ratio"])), p,
                    f"gram.per_size gram_rate_ratio at the smallest D ({low['D']})", float(low["gram_rate_ratio"]))
            rep.add("GPUGramDLow", fmt_count(low["D"]), p, "smallest D of gram.per_size", low["D"])
            g["gram_rising"] = float(low["gram_rate_ratio"]) < g["gram"]
    p, d = first("pil_phase_over_baseline_train")
    if p:
        v = float(d["pil_phase_over_baseline_train"])
        rep.add("GPUPILOverBaseline", fmt_ratio(v) if v >= 0.01 else fmt_sci(v, 1), p, "pil_phase_over_baseline_train", v)
        rep.add("GPUPILOverBaselinePct", fmt_fixed(100 * v, 2 if v < 0.1 else 1), p, "100*pil_phase_over_baseline_train")
        g["pil_over_baseline"] = v
        g["projected"] = bool((d.get("training") or {}).get("baseline_train_projected", d.get("baseline_train_projected")))
    p, d = first("hybrid_over_baseline_train")
    if p:  # a gap variant's whole training timed against the baseline's in the same run (bench part 5)
        v, h = float(d["hybrid_over_baseline_train"]), d.get("hybrid") or {}
        rep.add("GPUHybridOverBaseline", fmt_ratio(v), p, f"hybrid_over_baseline_train ({h.get('variant')})", v)
        goal = (d.get("goals") or {}).get("hybrid_over_baseline_train") or {}
        g["hybrid"] = {"variant": h.get("variant"), "ratio": v, "met": bool(goal.get("met")),
                       "projected": bool(h.get("baseline_train_projected")),
                       "method": (h.get("train_config") or {}).get("method") or (h.get("options") or {}).get("method")}
        base = h.get("baseline_train_seconds")
        if base and h.get("adamw_seconds") is not None and h.get("pil_seconds") is not None:
            # where the hybrid's time goes: its AdamW phase and its closed-form sweeps, each over the baseline's run
            adamw, sweeps = float(h["adamw_seconds"]) / float(base), float(h["pil_seconds"]) / float(base)
            rep.add("GPUHybridAdamWOverBaseline", fmt_ratio(adamw), p,
                    "hybrid.adamw_seconds / hybrid.baseline_train_seconds", adamw)
            rep.add("GPUHybridSweepsOverBaseline", fmt_ratio(sweeps), p,
                    "hybrid.pil_seconds / hybrid.baseline_train_seconds", sweeps)
            g["hybrid"] |= {"adamw": adamw, "sweeps": sweeps}
    p, d = first("pil_phase_speedup_2gpu")
    if p:
        rep.add("GPUSpeedupTwo", fmt_ratio(float(d["pil_phase_speedup_2gpu"])), p, "pil_phase_speedup_2gpu")
        g["two"] = float(d["pil_phase_speedup_2gpu"])


def complexity(rep: Report) -> None:
    """Complexity: the notebook's least-squares fit ``t ≈ a·N·D² + b·D³`` of the per-layer
    closed-form time (``fit.csv``/``fit.json`` with ``a``, ``b``, ``r2``; ``solves.csv`` per layer),
    or any ``fit.json`` with a ``crossover`` / exponents."""
    e = rep.R.exp("complexity")
    rep.c["complexity"] = None
    fit, fit_path = _complexity_fit(e) if e.available else (None, None)
    two_part = isinstance(fit, dict) and _finite(fit.get("c")) and _finite(fit.get("r2_stream"))
    cap = (r"Least-squares fits of the two measured parts of a layer's closed-form phase (median over layers "
           r"per $(N, D)$): the streaming pass, $e + c\,N + a\,N D^2$, and the solve, $s + b\,D^3$" if two_part else
           r"Least-squares fit of the measured time of the closed-form phase per layer, $t \approx a\,N D^2 + b\,D^3$")
    if not e.available:
        rep._no_table("complexity_fit", cap, ["complexity"])
        return
    solves, solves_path = _complexity_solves(e)
    cx = rep.c["complexity"] = {"x": _complexity_x(e.df, fit if isinstance(fit, dict) else None),
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
        src = Experiment("complexity", rep.profile, e.path, None, fit_path, e.provenance)
        model = ("the fits e + c*N + a*N*D^2 (streaming) and s + b*D^3 (solve)" if two_part
                 else "the fit t = a*N*D^2 + b*D^3")
        rep.add("ComplexityA", fmt_sci(a, 2), fit_path, f"a in {model}")
        rep.add("ComplexityB", fmt_sci(b, 2), fit_path, f"b in {model}")
        rows = [[r"$a$ (s per $N D^2$)", fmt_sci(a, 2)], [r"$b$ (s per $D^3$)", fmt_sci(b, 2)]]
        if two_part:
            c, r2s, r2v = float(fit["c"]), float(fit["r2_stream"]), float(fit["r2_solve"])
            rep.add("ComplexityC", fmt_sci(c, 2), fit_path, "c in the streaming fit e + c*N + a*N*D^2")
            rep.add("ComplexityRTwoStream", fmt_fixed(r2s, 3), fit_path, "r2_stream")
            rep.add("ComplexityRTwoSolve", fmt_fixed(r2v, 3), fit_path, "r2_solve")
            rows += [[r"$c$ (s per token, independent of $D$)", fmt_sci(c, 2)],
                     [r"$R^2$ streaming pass", fmt_fixed(r2s, 3)], [r"$R^2$ solve", fmt_fixed(r2v, 3)]]
            if a > 0 and c > 0:
                d_star = math.sqrt(c / a)
                rep.add("ComplexityStreamD", fmt_count(d_star), fit_path,
                        "sqrt(c/a): the HtH term a*N*D^2 exceeds the D-independent c*N for D above it", d_star)
                rep.add("ComplexityGramTFLOPS", fmt_fixed(2 / a / 1e12, 0), fit_path,
                        "2/a / 1e12: 2*N*D^2 flops of HtH per a*N*D^2 seconds", 2 / a / 1e12)
                rows += [[r"$\sqrt{c/a}$ ($a N D^2 > c N$ above this $D$)", fmt_count(d_star)],
                         [r"$2/a$ (TFLOP/s of the $H^\top H$ update)", fmt_fixed(2 / a / 1e12, 0)]]
                cx["stream_d"] = d_star
        elif _finite(r2):
            rep.add("ComplexityRTwo", fmt_fixed(float(r2), 3), fit_path, "r2 of the fit")
            rows.append([r"$R^2$", fmt_fixed(float(r2), 3)])
        if not cx["resolved"]:
            rep.tables["complexity_fit"] = TableSpec(
                name="complexity_fit", caption=cap, label="tab:complexity_fit", header=["Quantity", "Value"],
                rows=rows, align="lr", sources=[src])
            return
        ratio = b / a
        rep.add("ComplexityCrossRatio", fmt_sci(ratio, 1) if ratio >= 1e4 or ratio < 1 else fmt_fixed(ratio, 1),
                fit_path, "b/a: the accumulation term a*N*D^2 exceeds the solve term b*D^3 for N > (b/a)*D")
        rows.append([r"$b/a$ (crossover $N^\ast = (b/a)\,D$)", fmt_fixed(ratio, 1) if 1 <= ratio < 1e4 else fmt_sci(ratio)])
        dcol = solves if solves is not None and "n_features" in solves.columns else e.df
        dmax = float(dcol["n_features"].max()) if "n_features" in dcol.columns and _finite(dcol["n_features"].max()) else None
        if dmax:
            dsrc = solves_path if dcol is solves else e.source
            cross = ratio * dmax
            rep.add("ComplexityMaxD", fmt_count(dmax), dsrc, "largest number of features D measured")
            if cx.get("stream_d"):
                cx["stream_dominates"] = dmax < cx["stream_d"]
            rep.add("ComplexityCrossTokens", fmt_count(cross), fit_path,
                    f"(b/a)*D at the largest D={dmax:g} (D from {rel(dsrc)})")
            rows.append([f"$N^\\ast$ at $D={group_digits(int(dmax))}$", fmt_count(cross)])
            tcol = solves if solves is not None and "tokens" in solves.columns else None
            if tcol is not None and _finite(tcol["tokens"].max()):
                nmax = float(tcol["tokens"].max())
                rep.add("ComplexityMaxTokens", fmt_count(nmax), solves_path, "largest token count N measured")
                cx["beyond"] = nmax > cross
        cx["crossover"] = True
        rep.tables["complexity_fit"] = TableSpec(
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
        rep.add("ComplexityCrossover", fmt_count(crossover[0]) if crossover[0] >= 100 else fmt_sci(crossover[0]),
                crossover[1], f"crossover ({crossover[2]})")
        rep.add("ComplexityVariable", r"\texttt{" + tex_escape(x) + "}", e, "varied parameter of complexity/summary.csv")
        cx["crossover_x"] = True
    for k, v in leaves.items():
        low = k.lower()
        if not any(w in low for w in ("exponent", "slope")):
            continue
        if "pil" in low and not rep.n.has("ComplexityPILExponent"):
            rep.add("ComplexityPILExponent", fmt_fixed(v, 2), fit_path, f"{k} in {fit_path.name}")
        elif ("adamw" in low or "baseline" in low) and not rep.n.has("ComplexityAdamWExponent"):
            rep.add("ComplexityAdamWExponent", fmt_fixed(v, 2), fit_path, f"{k} in {fit_path.name}")
    rows = [[tex_escape(k), fmt_sci(v, 2) if abs(v) >= 1e3 or (0 < abs(v) < 1e-2) else fmt_fixed(v, 3)]
            for k, v in leaves.items()]
    if rows:
        src = Experiment("complexity", rep.profile, e.path, None, fit_path, e.provenance)
        rep.tables["complexity_fit"] = TableSpec(
            name="complexity_fit", caption=f"Fit of the measured training time (\\texttt{{{fit_path.name}}})",
            label="tab:complexity_fit", header=["Quantity", "Value"], rows=rows, align="lr", sources=[src])
    else:
        rep._no_table("complexity_fit", cap, ["complexity"])
