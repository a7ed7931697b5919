"""The paper build (pillm.report): results → tables, numbers, figures, prose → PDF and arXiv bundle.

A small synthetic results tree is written into a temporary directory (never into the repository)
in the format the experiment notebooks produce; the real ``results/smoke`` tree is also built when
it exists. LaTeX tests skip only when latexmk is absent (CI installs TeX).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pillm import report
from pillm.report.analysis import _lambada_scores

REPO = Path(__file__).resolve().parent.parent
needs_tex = pytest.mark.skipif(not report.tex_available(), reason="latexmk/pdflatex not installed (make tex)")

METHODS = ("baseline", "attn_only", "lora", "rf_adamw", "pil_pure", "pil_then_attn", "attn_then_pil", "alternating")
PPL = {"baseline": 180.0, "attn_only": 260.0, "lora": 240.0, "rf_adamw": 215.0, "pil_pure": 900.0,
       "pil_then_attn": 205.0, "attn_then_pil": 225.0, "alternating": 198.0}
COLUMNS = ("experiment", "name", "method", "seed", "size", "dataset", "valid_ppl", "test_ppl", "test_acc",
           "valid_acc", "train_s", "pil_s", "total_s", "optimizer_steps", "params_embedding", "params_attention",
           "params_norm", "params_ffn_trainable", "params_ffn_solved", "params_ffn_frozen_random",
           "params_head_solved", "params_total", "max_cond", "any_fallback")
PLACEHOLDERS = re.compile(r"\[X\]|\bX\.X\b|\bTBD\b|\?\?|\bTODO\b|\bXXX\b")


# ------------------------------------------------------------------------------------------------
# A synthetic results tree in the notebooks' format
# ------------------------------------------------------------------------------------------------


def _row(exp: str, method: str, seed: int, rng: random.Random, dataset="wikitext2", size="tiny", ppl=None, **extra):
    ppl = (ppl or PPL[method]) * (1 + 0.02 * rng.uniform(-1, 1))
    pil = method.startswith("pil") or method in ("attn_then_pil", "alternating")
    steps = 0 if method == "pil_pure" else 1200
    solved = 4 * 64 * 2 * 256 if pil else 0
    row = dict(experiment=exp, name=f"{method}_s{seed}", method=method, seed=seed, size=size, dataset=dataset,
               valid_ppl=ppl * 1.05, test_ppl=ppl, test_acc=0.9 / math.log(ppl), valid_acc=0.88 / math.log(ppl),
               train_s=0.0 if method == "pil_pure" else 30.0 + rng.random(), pil_s=4.0 + rng.random() if pil else 0.0,
               optimizer_steps=steps, params_embedding=2_130_000, params_attention=66_000, params_norm=640,
               params_ffn_trainable=66_000 if method in ("baseline", "rf_adamw") else (8_000 if method == "lora" else 0),
               params_ffn_solved=solved, params_ffn_frozen_random=2 * 64 * 256 if pil or method in ("lora", "rf_adamw") else 0,
               params_head_solved=0, max_cond=(3e5 * (1 + seed)) if pil else float("nan"), any_fallback=False)
    row["total_s"] = row["train_s"] + row["pil_s"] + 1.0
    row["params_total"] = sum(v for k, v in row.items() if k.startswith("params_"))
    row["n_features"] = 512 if pil else float("nan")
    row.update(extra)
    return row


def _result(row: dict, curve_epochs: int = 3) -> dict:
    method = row["method"]
    pil = row["pil_s"] > 0
    curve = [{"epoch": 0, "wall_s": 0.5, "valid_ppl": 30000.0, "phase": "init"}]
    if pil and method != "attn_then_pil":
        curve.append({"epoch": 0, "wall_s": 0.5 + row["pil_s"], "valid_ppl": 2000.0, "phase": "pil"})
    for ep in range(1, curve_epochs + 1):
        curve.append({"epoch": ep, "wall_s": 0.5 + row["pil_s"] + 10.0 * ep,
                      "valid_ppl": row["valid_ppl"] * (1 + 2.0 / ep - 2.0 / curve_epochs), "phase": "adamw"})
    solves = [{"layer": i, "cond": row["max_cond"] / (4 - i), "solver": "cholesky", "fallback": False, "r2": 0.3,
               "eta": 0.1, "lam": 1e-4, "seconds": 0.5} for i in range(4)] if pil else []
    return {**{k: v for k, v in row.items() if k in ("method", "dataset", "size", "seed", "valid_ppl", "test_ppl")},
            "spec": {"tokenizer": "word"}, "model_config": {"vocab_size": 33278, "block_size": 64, "expansion": 4.0,
                                                          "n_layer": 4, "n_embd": 64},
            "params": {"ffn_frozen_random": row["params_ffn_frozen_random"]},
            "train_config": {"epochs": curve_epochs, "batch_size": 32, "lr": 1e-3, "lam": 1e-4, "target": "local",
                             "weight_decay": 0.1, "max_train_tokens": 200000},
            "train_tokens": 200000, "test_tokens": 245569, "curve": curve, "solves": solves, "complete": True}


def _write_csv(path: Path, rows: list[dict], fieldnames=None) -> None:
    """Write ``rows`` as a CSV file (columns: ``fieldnames``, else the first row's keys)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames or list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_exp(root: Path, profile: str, exp: str, rows: list[dict], runs: bool = True) -> Path:
    d = root / profile / exp
    d.mkdir(parents=True, exist_ok=True)
    cols = list(COLUMNS) + [k for k in rows[0] if k not in COLUMNS]
    _write_csv(d / "summary.csv", rows, cols)
    (d / "provenance.json").write_text(json.dumps({
        "experiment": exp, "profile": profile, "hash": "abc", "notebook": f"notebooks/{exp}.ipynb",
        "git_commit": "0123456789abcdef", "wall_s": 123.4, "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:02:03+00:00", "environment": {"device_name": "cpu", "torch": "2.13.0"},
        "parameters": {"profile": profile}}))
    if runs:
        for r in rows:
            p = d / "runs" / r["name"] / "result.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(_result(r)))
    return d


def write_fake_results(root: Path, profile: str = "smoke", only: tuple[str, ...] | None = None) -> Path:
    """A complete synthetic results tree (every experiment the paper uses) under ``root``."""
    rng = random.Random(0)
    want = lambda name: only is None or name in only  # noqa: E731
    if want("benchmark"):  # like notebooks/benchmark.ipynb: budgets [2, 1] and a scaling subset
        rows = [_row("benchmark", m, s, rng, epochs=ep, ppl=PPL[m] * (1 if ep == 2 else 1.3))
                for ep in (2, 1) for m in METHODS for s in (0, 1)]
        rows += [_row("benchmark", m, 0, rng, size="small", epochs=2, ppl=PPL[m] * 0.8)
                 for m in ("baseline", "attn_only", "pil_then_attn", "alternating")]
        for r in rows:
            r["name"] = f"{r['method']},size={r['size']},epochs={r['epochs']},seed={r['seed']}"
        _write_exp(root, profile, "benchmark", rows)
    if want("training_curves"):
        _write_exp(root, profile, "training_curves",
                   [_row("training_curves", m, 0, rng) for m in ("baseline", "pil_then_attn", "alternating", "attn_only")])
    if want("lambada"):  # like notebooks/lambada.ipynb: a run grid plus lambada.csv
        rows = [_row("lambada", m, 0, rng) for m in ("baseline", "pil_then_attn", "alternating")]
        d = _write_exp(root, profile, "lambada", rows, runs=False)
        with open(d / "lambada.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "method", "seed", "test_ppl", "lambada_acc", "lambada_word_ppl", "lambada_oov_rate"])
            for r in rows:
                w.writerow([r["name"], r["method"], 0, r["test_ppl"], 0.02 + 0.01 * (r["method"] == "baseline"),
                            PPL[r["method"]] * 9, 0.031])
    if want("ablation_bipil"):  # like notebooks/ablation_bipil.ipynb
        _write_exp(root, profile, "ablation_bipil",
                   [_row("ablation_bipil", "pil_then_attn", s, rng, variant=v, bipil=b, expansion=x, ppl=p)
                    for v, b, x, p in (("Bi-PIL (concat)", True, 2, 205.0), ("PIL, same expansion", False, 2, 214.0),
                                       ("PIL, 2x expansion", False, 4, 206.0)) for s in (0, 1)])
    if want("ablation_lambda"):
        _write_exp(root, profile, "ablation_lambda",
                   [_row("ablation_lambda", "pil_then_attn", 0, rng, lam=lam, ppl=205 * (1 + 0.1 * abs(math.log10(lam) + 4)),
                         max_cond=1e3 / lam, any_fallback=lam < 1e-7) for lam in (1e-8, 1e-6, 1e-4, 1e-2)])
    if want("ablation_expansion"):
        _write_exp(root, profile, "ablation_expansion",
                   [_row("ablation_expansion", "pil_then_attn", 0, rng, expansion=x, ppl=240 - 8 * x) for x in (1, 2, 4)])
    if want("ablation_fusion"):
        _write_exp(root, profile, "ablation_fusion",
                   [_row("ablation_fusion", "pil_then_attn", 0, rng, fusion=f, ppl=p)
                    for f, p in (("concat", 205.0), ("sum", 209.0), ("gate", 221.0))])
    if want("training_strategy"):
        _write_exp(root, profile, "training_strategy",
                   [_row("training_strategy", m, 0, rng, target=t, ppl=p)
                    for m in ("pil_then_attn", "alternating")
                    for t, p in (("local", 205.0), ("global", 203.0), ("next_embedding", 230.0), ("zero", 260.0))])
    if want("tinystories"):
        d = _write_exp(root, profile, "tinystories",
                       [_row("tinystories", m, 0, rng, dataset="tinystories", ppl=PPL[m] / 20)
                        for m in ("baseline", "attn_only", "pil_then_attn")])
        (d / "samples.json").write_text(json.dumps(
            [{"method": m, "run_seed": 0, "prompt": p, "seed": sd, "temperature": 0.8, "top_k": 40,
              "text": f" there was a little dog named Max & his 100% friend_Tom ({m}, {sd})."}
             for m in ("baseline", "pil_then_attn") for p in ("Once upon a time", "The little dog was") for sd in (0, 1)]))
    if want("complexity"):  # like notebooks/complexity.ipynb: solves.csv and fit.csv (t = a N D^2 + b D^3)
        a, b = 2e-11, 4e-9
        rows, layers = [], []
        for tokens in (2048, 4096, 8192):
            for x in (1, 2):
                r = _row("complexity", "pil_pure", 0, rng, max_train_tokens=tokens, expansion=x, n_features=64 * x)
                r["name"] = f"max_train_tokens={tokens},expansion={x},seed=0"
                rows.append(r)
                for layer in range(2):
                    t = a * tokens * (64 * x) ** 2 + b * (64 * x) ** 3
                    layers.append({"name": r["name"], "phase": "pil", "layer": layer, "cond": 1e4, "tokens": tokens,
                                   "n_features": 64 * x, "seconds": t * 0.9, "seconds_total": t,
                                   "max_train_tokens": tokens, "expansion": x, "seed": 0, "fitted_s": t})
        d = _write_exp(root, profile, "complexity", rows, runs=False)
        _write_csv(d / "solves.csv", layers)
        # like pillm.experiments.fit_complexity: streaming e + c·N + a·N·D², solve s + b·D³
        (d / "fit.csv").write_text(f"a,b,c,e,s,r2_stream,r2_solve,r2,cells\n{a},{b},1e-5,0.001,0.001,0.991,0.987,0.987,6\n")
    if want("tuning"):  # like notebooks/tuning.ipynb: a grid per method and chosen.csv
        d = _write_exp(root, profile, "tuning",
                       [_row("tuning", m, 0, rng, lr=lr, dropout=p, ppl=PPL[m] * (1 + abs(lr - 1e-3) * 50 + p / 10))
                        for m in ("baseline", "pil_then_attn") for lr in (1e-3, 2e-3) for p in (0.1, 0.2)], runs=False)
        (d / "chosen.csv").write_text("method,trials,lr,dropout,valid_ppl,test_ppl,default_valid_ppl,chosen_is_default\n"
                                      "baseline,4,0.002,0.1,185.0,181.0,190.0,False\n"
                                      "pil_then_attn,4,0.001,0.1,210.0,205.0,210.0,True\n")
        tuned = [_row("tuning", m, sd, rng, lr=lr, dropout=0.1, ppl=pp)
                 for m, lr, pp in (("baseline", 0.002, 181.0), ("pil_then_attn", 0.001, 205.0)) for sd in (0, 1, 2)]
        _write_csv(d / "tuned.csv", tuned)
    if want("gap"):
        d = _write_exp(root, profile, "gap", [_row("gap", m, s, rng, variant=v, ppl=p)
                                              for m, v, p in (("baseline", "baseline", 180.0),
                                                              ("alternating", "alternating", 198.0),
                                                              ("pil_pure", "pil_pure+head", 900.0)) for s in (0, 1)],
                       runs=False)
        (d / "summary.json").write_text(json.dumps({"baseline_test_ppl": 180.0, "attn_only_test_ppl": 260.0,
                                                    "best_hybrid_test_ppl": 198.0, "best_hybrid_name": "alternating",
                                                    "pure_pil_test_ppl": 900.0, "kn5_test_ppl": 290.0,
                                                    "pure_pil_name": "pil_pure+head", "pure_pil_valid_ppl": 945.0,
                                                    "hybrid_over_baseline": 1.1}))
    if want("teacher"):  # like notebooks/teacher.ipynb: teachers.csv, students in summary.csv, summary.json
        d = _write_exp(root, profile, "teacher", [_row("teacher", "pil_pure", s, rng, variant=v, ppl=p, n_features=x)
                                                  for v, p, x in (("no FFN", 300.0, 128), ("RF 4x", 230.0, 128),
                                                                  ("RF 8x", 220.0, 512)) for s in (0, 1)], runs=False)
        teachers = [_row("teacher", "baseline", s, rng, variant="teacher", ppl=180.0) for s in (0, 1)]
        _write_csv(d / "teachers.csv", teachers)
        (d / "summary.json").write_text(json.dumps({
            "teacher_test_ppl": 180.0, "no_ffn_test_ppl": 300.0, "seeds": 2,
            "fits": {"RF 4x": {"test_ppl": 230.0, "retention_pct": 51.8}, "RF 8x": {"test_ppl": 220.0, "retention_pct": 60.7}}}))
    if want("adaptation"):  # like notebooks/adaptation.ipynb: adapted models per domain and way
        rows = []
        for d, before in (("ptb", 900.0), ("tinystories", 700.0)):
            for h, after, wiki, sec in (("resolve", 400.0, 200.0, 3.0), ("lora", 450.0, 185.0, 20.0),
                                        ("finetune", 300.0, 260.0, 30.0)):
                for sd in (0, 1):
                    r = _row("adaptation", "attn_then_pil", sd, rng, ppl=after, domain=d, how=h, wiki_test_ppl=wiki,
                             adapt_s=sec, before_new_test_ppl=before, before_wiki_test_ppl=180.0, oov_rate=0.05)
                    r["name"] = f"{h},{d},seed={sd}"
                    rows.append(r)
        _write_exp(root, profile, "adaptation", rows, runs=False)
    if want("first_layer"):  # like notebooks/first_layer.ipynb: re-solved checkpoints per kind and width
        rows = []
        for sd in (0, 1):
            same = _row("first_layer", "attn_then_pil", sd, rng, ppl=150.0, projection="same", expansion=4.0)
            # every run of a seed re-solves that seed's checkpoint: its perplexities come with each row
            before = {"before_test_ppl": same["test_ppl"], "before_valid_ppl": same["valid_ppl"]}
            rows.append(same | before)
            for x in (4.0, 16.0):
                for kind, p in (("random", 152.0), ("landmarks", 140.0), ("whitened", 156.0)):
                    rows.append(_row("first_layer", "attn_then_pil", sd, rng, ppl=p * (0.95 if x == 16 else 1.0),
                                     projection=kind, expansion=x, **before))
        for r in rows:
            r["name"] = f"{r['projection']},x{r['expansion']:g},seed={r['seed']}"
        _write_exp(root, profile, "first_layer", rows, runs=False)
    if want("lambda_path"):  # like notebooks/lambda_path.ipynb: control and per-layer λ re-solves, lambda_search.csv
        rows, search = [], []
        for sd in (0, 1):
            # the control reproduces its checkpoint; the per-layer λ is lower on each seed, within the spread
            ctl = _row("lambda_path", "attn_then_pil", sd, rng, variant="control", target="global") | {
                "test_ppl": 150.0 + sd, "valid_ppl": 158.0 + sd}
            before = {"before_test_ppl": ctl["test_ppl"], "before_valid_ppl": ctl["valid_ppl"], "before_lam": 1e-4}
            rows += [ctl | before, _row("lambda_path", "attn_then_pil", sd, rng, variant="path", target="global",
                                        **before) | {"test_ppl": 149.6 + sd, "valid_ppl": 157.5 + sd}]
            for layer in (0, 1):  # layer 0 chooses the grid's smallest λ, layer 1 a middle one
                for lam, loss in ((1e-4, 5.0), (1e-2, 5.001 - 0.002 * layer), (1.0, 5.003)):
                    search.append({"name": f"path,target=global,seed={sd}", "layer": layer, "lam": lam,
                                   "search_loss": loss, "chosen": lam == (1e-4 if layer == 0 else 1e-2)})
        for r in rows:
            r["name"] = f"{r['variant']},target=global,seed={r['seed']}"
        d = _write_exp(root, profile, "lambda_path", rows, runs=False)
        _write_csv(d / "lambda_search.csv", search)
    if want("pure_attention"):  # like notebooks/pure_attention.ipynb: fixed heads against random attention
        rows = [_row("pure_attention", "pil_pure", sd, rng, ppl=p, heads=h)
                for h, p in (("random", 900.0), ("prev1-avg", 860.0), ("avg-avg", 905.0)) for sd in (0, 1)]
        for r in rows:
            r["name"] = f"{r['heads']},seed={r['seed']}"
        _write_exp(root, profile, "pure_attention", rows, runs=False)
    if want("protocol"):  # like notebooks/protocol.ipynb: runs, then protocol.csv per run and stride
        d = _write_exp(root, profile, "protocol", [_row("protocol", m, sd, rng) for m in ("baseline", "attn_then_pil")
                                                   for sd in (0, 1)], runs=False)
        (d / "protocol.csv").write_text("method,seed,split,stride,ppl,tokens\n" + "".join(
            f"{m},{sd},test,{st},{PPL[m] * (0.9 if st == 16 else 1.0) + sd},245569\n"
            for m in ("baseline", "attn_then_pil") for sd in (0, 1) for st in (64, 16)))
    if want("ngram"):  # like notebooks/ngram.ipynb (no runs: counts, not training)
        d = root / profile / "ngram"
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.csv").write_text("experiment,method,order,valid_ppl,test_ppl,tokens,seconds\n" + "".join(
            f"ngram,kn{o},{o},{v},{t},245569,1.0\n" for o, v, t in ((1, 965.1, 911.7), (2, 284.7, 264.0),
                                                                     (3, 242.3, 226.1))))
        (d / "provenance.json").write_text(json.dumps({"git_commit": "0123456789abcdef"}))
    if only is None:
        (root / "bench").mkdir(parents=True, exist_ok=True)
        (root / "bench" / "nvidia-h200.json").write_text(json.dumps(
            {"quick": False, "device_name": "NVIDIA H200", "gram_rate_ratio": 0.93, "gram_rate_ratio_D": 8192,
             "pil_phase_over_baseline_train": 0.004, "training": {"baseline_train_projected": True}}))
        (root / "bench" / "nvidia-h200-2gpu.json").write_text(json.dumps(
            {"quick": False, "device_name": "NVIDIA H200", "pil_phase_speedup_2gpu": 1.85}))
        (root / "bench" / "cpu.json").write_text(json.dumps(  # a quick test run: ignored by the paper
            {"quick": True, "device_name": "cpu", "gram_rate_ratio": 0.5}))
    return root


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

NEWCOMMAND = re.compile(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}\s*$")
SOURCE_COMMENT = re.compile(r"^% ([A-Za-z]+): (\S+) \(sha256 ([0-9a-f]{8})\): (.+)$")


def parse_numbers(path: Path) -> dict[str, dict]:
    """``{macro: {"value", "source", "sha", "note"}}``; every macro must follow its source comment."""
    out, pending = {}, None
    for line in path.read_text().splitlines():
        m = SOURCE_COMMENT.match(line)
        if m:
            pending = {"name": m.group(1), "source": m.group(2), "sha": m.group(3), "note": m.group(4)}
            continue
        m = NEWCOMMAND.match(line)
        if m:
            assert pending and pending["name"] == m.group(1), f"\\{m.group(1)} has no source comment above it"
            out[m.group(1)] = {**pending, "value": m.group(2)}
            pending = None
    return out


def tex_sources(src: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(src.rglob("*.tex"))}


def placeholders(text: str) -> list[str]:
    return PLACEHOLDERS.findall(text)


def _render(root: Path, tmp_path: Path, figures: bool = False):
    """Render the smoke paper sources of the results tree ``root`` into ``tmp_path/out``; its dirs."""
    dirs = report.default_dirs("smoke", tmp_path / "out")
    report.render("smoke", root, dirs, with_figures=figures)
    return dirs


def _prose(dirs, name: str) -> str:
    """The generated ``name``.tex with its line breaks and runs of spaces read as single spaces."""
    return " ".join((dirs.generated / f"{name}.tex").read_text().split())


def build(tmp_path: Path, results: Path, profile: str = "smoke", name: str = "build") -> dict:
    return report.build_paper(profile, results_root=results, out=tmp_path / name, run_missing=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A complete synthetic results tree and its rendered (not compiled) paper sources."""
    tmp = tmp_path_factory.mktemp("paper")
    root = write_fake_results(tmp / "results")
    out = tmp / "render"
    dirs = report.default_dirs("smoke", out)
    rendered = report.render("smoke", root, dirs)
    return {"tmp": tmp, "root": root, "dirs": dirs, "rendered": rendered}


@pytest.fixture(scope="module")
def synthetic_pdf(synthetic):
    if not report.tex_available():
        pytest.skip("latexmk/pdflatex not installed (make tex)")
    s = report.build_paper("smoke", results_root=synthetic["root"], out=synthetic["tmp"] / "pdf", run_missing=False,
                           log=lambda *a: None)
    return s


# ------------------------------------------------------------------------------------------------
# Rendering (no LaTeX needed)
# ------------------------------------------------------------------------------------------------


def test_and_join():
    assert [report.and_join(x) for x in ([], ["a"], ["a", "b"], ["a", "b", "c"])] == ["", "a", "a and b", "a, b and c"]


def test_perplexities_group_thousands_with_a_thin_space_in_tex_and_a_space_in_figures():
    from pillm.report.fmt import fmt_ppl

    assert [fmt_ppl(x) for x in (1.234, 146.08, 1082.4, 13408.2)] == ["1.23", "146.1", r"1\,082", r"13\,408"]
    assert fmt_ppl(13408.2, sep=" ") == "13 408"
    from pillm.report.fmt import fmt_sci  # condition numbers: four digits grouped too, larger in powers of ten

    assert [fmt_sci(x) for x in (977.2, 8192.2, 3.4e5)] == ["977", r"8\,192", r"\ensuremath{3.4\times 10^{5}}"]


def test_verdict_rules():
    assert report.verdict(100, 100) == "on_par"
    assert report.verdict(98, 100) == "better"
    assert report.verdict(104.9, 100) == "competitive"
    assert report.verdict(105.1, 100) == "worse"
    assert report.verdict(0.30, 0.30, lower_is_better=False) == "on_par"
    assert report.verdict(0.20, 0.30, lower_is_better=False) == "worse"


def test_templates_cannot_use_a_number_that_was_not_computed():
    import jinja2

    n = report.Numbers()
    n.add("BaselinePPL", "181.0", REPO / "pyproject.toml", "test")
    env = report.jinja_env()
    assert env.from_string(r"\VAR{n.BaselinePPL}").render(n=n) == r"\BaselinePPL{}"
    assert n.used == {"BaselinePPL"}
    with pytest.raises(jinja2.UndefinedError):
        env.from_string(r"PIL reaches \VAR{n.PILBestPPL}.").render(n=n)
    assert env.from_string(r"\BLOCK{ if n.has('PILBestPPL') }\VAR{n.PILBestPPL}\BLOCK{ else }n/a\BLOCK{ endif }"
                           ).render(n=n) == "n/a"


def test_synthetic_results_render_without_errors(synthetic):
    assert synthetic["rendered"].report.errors == []
    assert synthetic["rendered"].missing == []


def test_rendering_twice_gives_identical_files(synthetic, tmp_path):
    again = report.default_dirs("smoke", tmp_path / "again")
    report.render("smoke", synthetic["root"], again)
    first = synthetic["dirs"]
    for sub in ("tables", "figures", "generated"):
        a = {p.name: p.read_bytes() for p in sorted(getattr(first, sub).iterdir())}
        b = {p.name: p.read_bytes() for p in sorted(getattr(again, sub).iterdir())}
        assert a.keys() == b.keys(), sub
        diff = [name for name in a if a[name] != b[name]]
        assert not diff, f"{sub}: rendering twice from the same results changed {diff}"


def test_every_macro_has_a_results_source_and_is_used(synthetic):
    dirs = synthetic["dirs"]
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert len(numbers) >= 40, "the synthetic tree should exercise most numbers"
    for name, n in numbers.items():
        src = Path(n["source"])
        src = src if src.is_absolute() else REPO / src
        assert src.is_file(), f"\\{name}: source {n['source']} does not exist"
        assert report.sha256_short(src) == n["sha"], f"\\{name}: hash of {src} does not match"
        assert "results" in src.parts, f"\\{name}: {src} is not a results file"
        assert n["value"].strip(), f"\\{name} is empty"
    text = "\n".join(t for p, t in tex_sources(dirs.build).items() if p.name != "numbers.tex")
    text += "\n".join(p.read_text() for p in (REPO / "paper" / "sections").glob("*.tex"))
    unused = [name for name in numbers if not re.search(rf"\\{name}(?![A-Za-z])", text)]
    assert not unused, f"macros defined but not used in the .tex sources: {unused}"


def test_no_placeholders_and_no_typed_numbers_in_sources(synthetic):
    for p in sorted((REPO / "paper").rglob("*")):
        if p.is_file() and p.suffix in (".tex", ".j2") and "build" not in p.parts:
            assert not placeholders(p.read_text()), f"placeholder in {p}"
    for p, text in tex_sources(synthetic["dirs"].build).items():
        assert not placeholders(text), f"placeholder in rendered {p}: {placeholders(text)}"
    # the hand-written text carries no result numbers: decimals and percentages come from macros
    static = list((REPO / "paper" / "sections").glob("*.tex")) + [REPO / "paper" / "main.tex"]
    static += list((REPO / "paper" / "templates").glob("*.tex.j2"))
    for p in static:
        prose = re.sub(r"\\VAR\{[^}]*\}|\\BLOCK\{[^}]*\}|^%.*$", "", p.read_text(), flags=re.M)
        hits = re.findall(r"(?<![\w.{^_])\d+\.\d+(?![\w}])|\d+\s*\\%", prose)
        assert not hits, f"{p.name} has hand-typed numbers {hits}"


def test_captions_name_notebook_profile_and_hash(synthetic):
    dirs = synthetic["dirs"]
    for p in list(dirs.tables.glob("*.tex")) + list(dirs.figures.glob("*.tex")):
        if p.name == "numbers.tex":
            continue
        text = p.read_text()
        assert "\\caption" in text and "\\label" in text, p.name
        if "Not available" not in text:
            assert re.search(r"\.ipynb\}", text), f"{p.name}: no notebook in the caption"
            assert "profile \\texttt{smoke}" in text, f"{p.name}: no profile in the caption"
            assert re.search(r"\\texttt\{[0-9a-f]{8}\}", text), f"{p.name}: no results hash in the caption"


def test_repo_url_links_notebooks(tmp_path, monkeypatch):
    monkeypatch.setenv("PILLM_REPO_URL", "https://example.org/pillm")
    root = write_fake_results(tmp_path / "results", only=("ablation_fusion",))
    dirs = _render(root, tmp_path)
    text = (dirs.tables / "ablation_fusion.tex").read_text()
    assert "\\href{https://example.org/pillm/blob/0123456789abcdef/notebooks/ablation_fusion.ipynb}" in text


def test_missing_results_say_not_available(tmp_path):
    root = write_fake_results(tmp_path / "results", only=("benchmark",))
    dirs = report.default_dirs("smoke", tmp_path / "out")
    r = report.render("smoke", root, dirs, with_figures=False)
    assert "benchmark" not in r.missing and "lambada" in r.missing
    for name in ("lambada", "ablation_lambda", "tinystories"):
        text = (dirs.tables / f"{name}.tex").read_text()
        assert "not run in this profile" in text and f"\\label{{tab:{name}}}" in text
    assert "not run in this profile" in (dirs.figures / "lambda.tex").read_text()
    assert "not run in this profile" in (dirs.generated / "ablations.tex").read_text() \
        or "Not run in this profile" in (dirs.generated / "ablations.tex").read_text()
    # nothing at all: still renders, and the abstract makes no claim
    empty = report.default_dirs("paper", tmp_path / "empty")
    r = report.render("paper", tmp_path / "nothing", empty, with_figures=False)
    assert set(r.missing) == set(report.PAPER_EXPERIMENTS)
    assert "makes no claim" in (empty.generated / "abstract.tex").read_text()
    assert not parse_numbers(empty.tables / "numbers.tex")


def test_unreadable_results_do_not_stop_the_build(tmp_path):
    root = write_fake_results(tmp_path / "results", only=("benchmark", "ablation_fusion"))
    (root / "smoke" / "ablation_fusion" / "summary.csv").write_text('a,b\n1,2,3,"4\n')  # malformed CSV
    next((root / "smoke" / "benchmark" / "runs").glob("*/result.json")).write_text("{not json")
    dirs = report.default_dirs("smoke", tmp_path / "out")
    r = report.render("smoke", root, dirs, with_figures=False)
    assert any("ablation_fusion" in e for e in r.report.errors)
    assert "could not be rendered" in (dirs.tables / "ablation_fusion.tex").read_text()
    assert "Not available" not in (dirs.tables / "benchmark.tex").read_text()


@pytest.mark.parametrize("hybrid, expected", [(186.0, "competitive with the baseline"),
                                               (230.0, "PIL-LM does not match the baseline"),
                                               (170.0, "improves on the baseline")])
def test_wording_follows_the_measurements(tmp_path, hybrid, expected):
    root = write_fake_results(tmp_path / "results", only=("benchmark",))
    path = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    for r in rows:  # exact values: baseline 180, every hybrid `hybrid`
        if r["method"] == "baseline":
            r["test_ppl"] = "180.0"
        elif r["method"] in ("pil_then_attn", "attn_then_pil", "alternating"):
            r["test_ppl"] = str(hybrid)
    _write_csv(path, rows)
    dirs = _render(root, tmp_path)
    text = (dirs.generated / "results_main.tex").read_text()
    assert expected in text
    if expected != "competitive with the baseline":
        assert "competitive" not in (dirs.generated / "abstract.tex").read_text()


def test_lambada_near_zero_is_reported_as_passage_counts(tmp_path):
    """When every accuracy is below the floor, a relative verdict ("does not match the baseline") would
    compare a handful of passages: the text gives the counts instead. Above the floor, the verdict stays."""
    def render(acc_baseline, acc_pil, name):
        root = write_fake_results(tmp_path / name, only=("lambada",))
        path = root / "smoke" / "lambada" / "lambada.csv"
        rows = list(csv.DictReader(path.open()))
        for r in rows:
            r["lambada_acc"] = acc_baseline if r["method"] == "baseline" else acc_pil
            r["lambada_n"] = 5000
        _write_csv(path, rows)
        dirs = report.default_dirs("smoke", tmp_path / f"out-{name}")
        report.render("smoke", root, dirs, with_figures=False)
        return (dirs.generated / "results_lambada.tex").read_text(), parse_numbers(dirs.tables / "numbers.tex")

    text, numbers = render(0.0012, 0.001, "low")
    assert "passages, against" in text and "does not match" not in text and "does not separate" in text
    assert (numbers["LambadaBaselineHits"]["value"], numbers["LambadaPILHits"]["value"]) == ("6.0", "5.0")
    assert numbers["LambadaPassages"]["value"] == r"5\,000"
    text, numbers = render(0.30, 0.20, "high")
    assert "does not match the baseline" in text and "LambadaPILHits" not in numbers


def test_lambada_pil_method_is_chosen_on_validation_not_on_lambada(tmp_path):
    """alternating has the lower WikiText-2 validation perplexity in the fake results (198 against 205):
    it is the one quoted even when pil_then_attn scores higher on LAMBADA itself."""
    root = write_fake_results(tmp_path / "r", only=("lambada",))
    (root / "smoke" / "lambada" / "lambada.csv").unlink()  # the scores in summary.csv, beside valid_ppl
    path = root / "smoke" / "lambada" / "summary.csv"
    rows = [r | {"acc": 0.3 if r["method"] == "pil_then_attn" else 0.2, "word_ppl": 900.0, "oov_rate": 0.03}
            for r in csv.DictReader(path.open())]
    _write_csv(path, rows)
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["LambadaPILMethod"]["value"] == "Alternating" and numbers["LambadaPILAcc"]["value"] == "20.0"
    assert "the one best on WikiText-2 validation" in _prose(dirs, "results_lambada")


def test_diagnosis_splits_the_gap_into_the_first_layer_and_the_closed_form_readout(synthetic):
    """What the random first layer leaves open (100 - RF retention) and what the closed-form readout leaves
    open beyond it (RF retention - the better of the main table's and the gap section's best hybrid)."""
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    val = lambda k: float(numbers[k]["value"])  # noqa: E731
    assert abs(val("LayerShare") - (100 - val("RFRetention"))) < 0.11
    assert abs(val("ReadoutShare") - (val("RFRetention") - max(val("Retention"), val("GapRetention")))) < 0.11
    text = (synthetic["dirs"].generated / "closing.tex").read_text()
    assert r"leaves a further \ReadoutShare{}\% open" in text and r"\GapRetention{}\%" in text


def test_lambada_scores_from_summary_or_lambada_csv(tmp_path):
    root = write_fake_results(tmp_path / "results", only=("lambada",))
    e = report.Results(root, "smoke").exp("lambada")
    scored = _lambada_scores(e)
    assert scored.source.name == "lambada.csv" and {"acc", "word_ppl", "oov_rate"} <= set(scored.df.columns)
    df = scored.df.assign(experiment="lambada")
    df.to_csv(e.path / "summary.csv", index=False)  # the brief's format: acc columns in summary.csv
    again = _lambada_scores(report.Results(root, "smoke").exp("lambada"))
    assert again.source.name == "summary.csv" and "acc" in again.df.columns


def test_cli_paper_render_only(tmp_path, capsys):
    from pillm import cli

    root = write_fake_results(tmp_path / "results", only=("benchmark", "ablation_fusion"))
    rc = cli.main(["paper", "--profile", "smoke", "--results", str(root), "--out", str(tmp_path / "out"),
                   "--no-run", "--no-compile"])
    assert rc == 0
    assert (tmp_path / "out" / "tables" / "numbers.tex").is_file()
    assert "not available in profile smoke" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# LaTeX builds
# ------------------------------------------------------------------------------------------------


def _pdf_text(pdf: Path) -> str | None:
    if shutil.which("pdftotext") is None:
        return None
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def _check_build(s: dict) -> None:
    dirs = s["dirs"]
    assert s["pdf"] is not None and s["pdf"].is_file()
    assert s["problems"] == [], s["problems"]
    log = (dirs.build / "main.log").read_text(errors="replace")
    assert "undefined" not in log.lower(), [line for line in log.splitlines() if "undefined" in line.lower()]
    assert "Citation" not in log or "undefined" not in log
    for p, text in tex_sources(dirs.src).items():
        assert not placeholders(text), f"{p}: {placeholders(text)}"
    text = _pdf_text(s["pdf"])
    if text is not None:
        assert "??" not in text, "unresolved reference (??) in the PDF"


@needs_tex
def test_smoke_pdf_from_synthetic_results(synthetic_pdf):
    _check_build(synthetic_pdf)
    dirs = synthetic_pdf["dirs"]
    assert "draftwatermark" in (dirs.src / "generated" / "preamble.tex").read_text()
    assert "SMOKE RESULTS" in (dirs.src / "generated" / "preamble.tex").read_text()
    assert "draftwatermark.sty" in (dirs.build / "main.log").read_text(errors="replace")
    bbl = (dirs.build / "main.bbl").read_text()
    assert "wang2025bipil" in bbl and "huang2006elm" in bbl


@needs_tex
def test_arxiv_bundle_compiles(synthetic_pdf):
    import tarfile

    tar = report.build_arxiv("smoke", out=synthetic_pdf["dirs"].build, log=lambda *a: None)
    with tarfile.open(tar) as t:
        names = set(t.getnames())
    assert {"main.tex", "main.bbl", "tables/numbers.tex", "generated/abstract.tex"} <= names
    assert any(n.startswith("figures/") and n.endswith(".pdf") for n in names)
    assert not any(n.startswith("/") or ".." in n for n in names)
    assert "references.bib" not in names and not any(n.endswith((".aux", ".log")) for n in names)


@needs_tex
def test_build_with_missing_experiments(tmp_path):
    root = write_fake_results(tmp_path / "results", only=("benchmark", "ablation_lambda"))
    s = build(tmp_path, root)
    _check_build(s)
    text = _pdf_text(s["pdf"])
    if text is not None:
        assert "not run in this profile" in text


@needs_tex
@pytest.mark.skipif(not (REPO / "results" / "smoke").is_dir(), reason="no results/smoke in this checkout")
def test_smoke_pdf_from_repository_results(tmp_path):
    s = report.build_paper("smoke", results_root=REPO / "results", out=tmp_path / "repo", run_missing=False,
                           log=lambda *a: None)
    _check_build(s)
    numbers = parse_numbers(s["dirs"].tables / "numbers.tex")
    for name, n in numbers.items():
        assert (REPO / n["source"]).is_file(), f"\\{name}: {n['source']}"


@pytest.mark.skipif(not (REPO / "results" / "paper").is_dir(), reason="no results/paper in this checkout")
def test_committed_paper_is_what_the_committed_results_render(tmp_path):
    """The committed prose, tables and figure captions are exactly what the committed paper results render
    to, with no part failing to render: a report or template change that was not regenerated, or a result
    that no longer renders (the report only warns and builds without it), fails here."""
    dirs = report.default_dirs("paper", tmp_path)
    rendered = report.render("paper", REPO / "results", dirs)
    assert rendered.report.errors == []
    committed = {"generated": REPO / "paper" / "generated", "tables": REPO / "tables", "figures": REPO / "figures"}
    stale = [f"{kind}/{p.name}" for kind, ref in committed.items() for p in sorted(getattr(dirs, kind).glob("*.tex"))
             if not (ref / p.name).is_file() or (ref / p.name).read_text() != p.read_text()]
    assert stale == [], f"run `make paper` and commit: {stale}"


def test_differences_within_the_seed_spread_are_not_effects():
    a = {"test_ppl": 160.0, "test_ppl_std": 3.0}
    assert not report.beyond_seed_spread(a, {"test_ppl": 162.0, "test_ppl_std": 3.0})  # error bars overlap
    assert report.beyond_seed_spread(a, {"test_ppl": 170.0, "test_ppl_std": 3.0})
    assert report.beyond_seed_spread({"test_ppl": 160.0}, {"test_ppl": 170.0})  # one seed: the tolerance only
    assert not report.beyond_seed_spread({"test_ppl": 160.0}, {"test_ppl": 160.5})
    # with seeds, the spread alone decides, however small the difference (results/paper/benchmark, medium:
    # attention->PIL 131.5 +- 0.02 against attention only 132.4 +- 0.58, lower on every seed)
    assert report.beyond_seed_spread({"test_ppl": 131.5, "test_ppl_std": 0.02}, {"test_ppl": 132.4, "test_ppl_std": 0.58})


@pytest.mark.parametrize("ppl, expected", [
    # results/paper/ablation_expansion: the ends differ beyond the spread, neighbouring widths do not
    ({1: (161.0, 166.0), 2: (159.5, 161.9), 4: (158.6, 162.6), 8: (158.5, 159.5)},
     "falls with the width of the random features"),
    ({1: (160.8, 165.7), 8: (155.0, 154.0)}, "falls with the width of the random features"),
    ({1: (160.8, 165.7), 8: (158.9, 166.3)}, "Width makes no difference beyond the spread over seeds"),
])
def test_width_trend_is_read_against_the_seed_spread(tmp_path, ppl, expected):
    rng = random.Random(0)
    root = tmp_path / "r"
    rows = [_row("ablation_expansion", "pil_then_attn", s, rng, expansion=x) | {"test_ppl": v, "valid_ppl": v}
            for x, vs in ppl.items() for s, v in enumerate(vs)]
    _write_exp(root, "smoke", "ablation_expansion", rows)
    text = _prose(_render(root, tmp_path), "ablations")
    assert expected in text
    steps_within = "each step between neighbouring widths is within the spread"
    assert (steps_within in text) == (len(ppl) > 2), text


def test_largest_condition_number_is_the_largest_of_any_run_not_of_a_seed_mean(tmp_path):
    dirs = _render(write_fake_results(tmp_path / "r", only=("benchmark",)), tmp_path)  # max_cond 3e5, 6e5 by seed
    assert parse_numbers(dirs.tables / "numbers.tex")["BenchMaxCond"]["value"] == r"\ensuremath{6.0\times 10^{5}}"


def test_contended_timings_make_no_speed_claim(tmp_path):
    """Runs timed while sharing the GPUs (environment.concurrent_runs > 1) keep their times in the
    table, flagged, but the text draws no speed comparison from them."""
    def render(concurrent: int) -> tuple[str, str, str]:
        root = write_fake_results(tmp_path / f"r{concurrent}", only=("benchmark",))
        path = root / "smoke" / "benchmark" / "summary.csv"
        rows = list(csv.DictReader(path.open()))
        _write_csv(path, [r | {"concurrent_runs": concurrent} for r in rows])
        dirs = report.default_dirs("smoke", tmp_path / f"out{concurrent}")
        report.render("smoke", root, dirs, with_figures=False)
        return ((dirs.generated / "results_main.tex").read_text(), (dirs.generated / "abstract.tex").read_text(),
                (dirs.tables / "benchmark.tex").read_text())

    alone, abstract_alone, table_alone = render(1)
    shared, abstract_shared, table_shared = render(16)
    assert r"\HybridSpeedup" in alone and r"\HybridSpeedup" in abstract_alone
    assert r"\HybridSpeedup" not in shared and r"\HybridSpeedup" not in abstract_shared
    assert r"\BenchConcurrent" in shared and "up to 16 runs sharing" in table_shared
    assert "sharing" not in table_alone

    def fastest_marked(table: str) -> bool:  # a bold total time (the last column)
        return any(r"\textbf" in line.rsplit("&", 1)[-1] for line in table.splitlines() if line.endswith(r"\\"))

    assert fastest_marked(table_alone) and not fastest_marked(table_shared)
    # the direction arrow of an unranked time column goes too; one sharing for every row needs no column
    assert r"Total (s) $\downarrow$" in table_alone and r"Total (s) $\downarrow$" not in table_shared
    assert "Shared" not in table_shared


def test_rows_timed_under_different_sharing_show_it(tmp_path):
    """A row whose runs shared the GPUs with 3 others and one whose runs shared with 12 are not comparable in time:
    the table gives each row's sharing (the most over its seeds) in a Shared column (the gap table showed two solve
    sweeps at half the time of one)."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    path = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    _write_csv(path, [r | {"concurrent_runs": 3 if r["method"] == "baseline" and r["seed"] == "0" else
                           (12 if r["method"] == "baseline" else 6)} for r in rows])
    table = (_render(root, tmp_path).tables / "benchmark.tex").read_text()
    assert "& Shared" in table and "rows with different values are not comparable in time" in table
    ends = [line.rstrip(" \\").rsplit("&", 1)[-1].strip() for line in table.splitlines()
            if line.startswith("Baseline")]
    assert ends == ["12", "12", "3"], ends  # seeds 0 (3) and 1 (12): the most; the small block ran seed 0 alone


def test_partial_and_failed_experiments_say_so(tmp_path):
    """An experiment summarized from some of its runs (partial.json) is rendered with a caption note
    naming the missing runs and listed in the status box; one whose notebook failed is not used."""
    root = write_fake_results(tmp_path / "results", only=("benchmark", "lambada"))
    (root / "smoke" / "benchmark" / "partial.json").write_text(json.dumps({
        "runs": 9, "finished": 6, "missing": ["method=alternating,seed=1", "method=alternating,seed=2", "x"]}))
    (root / "smoke" / "lambada" / "failed.json").write_text(json.dumps({"ename": "ValueError"}))
    dirs = report.default_dirs("smoke", tmp_path / "out")
    r = report.render("smoke", root, dirs, with_figures=False)
    table = (dirs.tables / "benchmark.tex").read_text()
    assert r"\textbf{Partial:} 6 of 9 runs of \texttt{benchmark}" in table
    assert "method=alternating (seeds 1, 2); x" in table
    status = (dirs.generated / "status.tex").read_text()
    assert "Partial results" in status and r"\texttt{benchmark} (6 of 9 runs)" in status
    assert "lambada" in r.missing and any("failed.json" in e for e in r.report.errors)
    assert "could not be rendered" in (dirs.tables / "lambada.tex").read_text()


def test_an_experiment_with_a_partial_second_grid_is_listed_as_partial(tmp_path):
    """tuning's trials can be complete while its confirmation seeds (tuned.csv) are not: the status
    box still lists it, naming the partial grid."""
    root = write_fake_results(tmp_path / "results", only=("benchmark", "tuning"))
    d = root / "smoke" / "tuning"
    (d / "tuned.partial.json").write_text(json.dumps({"runs": 6, "finished": 4, "missing": ["a", "b"]}))
    dirs = _render(root, tmp_path)
    assert r"\texttt{tuning} (\texttt{tuned.csv}: 4 of 6 runs)" in (dirs.generated / "status.tex").read_text()


def test_tuned_settings_are_compared_on_their_own_seeds(synthetic):
    text = (synthetic["dirs"].generated / "appendix_tuning.tex").read_text()
    assert r"\TunedBaselinePPL{}" in text and r"\TunedPILMethod{}" in text and r"\TunedSeeds{} seeds" in text
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["TunedSeeds"]["value"] == "3" and numbers["TunedSeeds"]["source"].endswith("tuned.csv")
    table = (synthetic["dirs"].tables / "tuned.tex").read_text()
    assert "tuned.csv" in table and r"\label{tab:tuned}" in table


def test_adaptation_paragraph_reports_every_domain_and_way(synthetic):
    text = (synthetic["dirs"].generated / "closing.tex").read_text()
    for macro in ("AdaptPTBBefore", "AdaptPTBResolve", "AdaptPTBLoRASec", "AdaptTinyStoriesFinetuneWiki",
                  "AdaptTinyStoriesOOV"):
        assert f"\\{macro}{{}}" in text, macro
    assert r"\texttt{finetune} adapts best" in text  # lowest validation perplexity in the fake results
    assert "The closed-form re-solve is the fastest way to adapt on PTB and TinyStories." in " ".join(text.split())
    # finetune adapts best (validation) and has the highest WikiText-2 perplexity afterwards in the fake results
    assert r"\texttt{finetune} adapts best, but it forgets most of WikiText-2" in text
    assert r"\texttt{lora} keeps WikiText-2 best" in text
    table = (synthetic["dirs"].tables / "adaptation.tex").read_text()
    assert "new domain: ptb" in table and "LoRA FFN" not in table  # blocks per domain; the how, not a method
    assert r"\label{tab:adaptation}" in (synthetic["dirs"].tables / "adaptation.tex").read_text()


def test_shared_gpu_adaptation_timings_are_qualified_once(tmp_path):
    """Timed beside other runs, the adaptation seconds are qualified once for the paragraph, not once per
    domain as well (the paper said "in shared-GPU timings" per domain and then again for all)."""
    root = write_fake_results(tmp_path / "r", only=("adaptation",))
    summary = root / "smoke" / "adaptation" / "summary.csv"
    rows = [r | {"concurrent_runs": "4", "adapt_s": "60.0" if r["how"] == "resolve" else r["adapt_s"]}
            for r in csv.DictReader(summary.open())]
    _write_csv(summary, rows)
    dirs = _render(root, tmp_path)
    text = _prose(dirs, "closing")
    # both domains give the same verdicts in the fake results: stated once, after each domain's numbers
    assert text.count(r"On both domains, on their validation splits, \texttt{finetune} adapts best") == 1
    assert "shared-GPU" not in text
    # shared timings rank nothing, slowest included (the paper said "it took the longest" once per domain)
    assert text.count("These runs shared the GPUs with others, so their seconds do not rank the methods.") == 1
    assert "took the longest" not in text and "fastest" not in text
    assert text.count("By construction the re-solve does more work than fine-tuning") == 1
    _write_csv(summary, [r | {"concurrent_runs": "1"} for r in rows])  # timed alone: ranked, once for both domains
    text = _prose(_render(root, tmp_path), "closing")
    assert text.count("The closed-form re-solve took the longest on PTB and TinyStories.") == 1


def test_adaptation_verdicts_per_domain_when_they_differ_and_forgetting_within_the_spread(tmp_path):
    """'keeps WikiText-2 best' only beyond the seed spread of the next; otherwise both are named."""
    root = write_fake_results(tmp_path / "r", only=("adaptation",))
    summary = root / "smoke" / "adaptation" / "summary.csv"
    close = {("resolve", "0"): "190.0", ("resolve", "1"): "200.0", ("lora", "0"): "186.0", ("lora", "1"): "198.0"}
    rows = [r | {"wiki_test_ppl": close.get((r["how"], r["seed"]), r["wiki_test_ppl"])} if r["domain"] == "tinystories"
            else r for r in csv.DictReader(summary.open())]
    _write_csv(summary, rows)
    text = _prose(_render(root, tmp_path), "closing")
    assert "On both domains" not in text and text.count(r"On its validation split \texttt{finetune} adapts best") == 2
    assert r"\texttt{lora} keeps WikiText-2 best" in text  # PTB: 185 against 200, no spread
    assert r"\texttt{lora} and \texttt{resolve} keep WikiText-2 best, within the seed spread of each other" in text


def test_rf_adamw_is_not_called_the_same_features_when_its_width_differs(synthetic):
    """RF + AdamW has one projection; the fake hybrids have 512 features, rf_adamw 2·64·256/(4·64) = 128."""
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["RFFeatures"]["value"] == "128" and numbers["HybridFeatures"]["value"] == "512"
    for part in ("abstract", "closing"):
        text = (synthetic["dirs"].generated / f"{part}.tex").read_text()
        assert "The same random features" not in text and "of the same kind" in text, part


def test_teacher_fit_is_compared_at_pil_lms_width(synthetic):
    """The closed-form fit to a trained model's FFNs is reported by width, and the one with PIL-LM's
    number of features (the gap's best hybrid: 512 here) is compared with that hybrid."""
    text = (synthetic["dirs"].generated / "closing.tex").read_text()
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["TeacherFitAFeatures"]["value"] == "128" and numbers["TeacherFitBFeatures"]["value"] == "512"
    assert numbers["TeacherSamePPL"]["value"] == numbers["TeacherFitBPPL"]["value"]
    assert numbers["TeacherSameFeatures"]["source"].endswith("gap/summary.csv")
    # RF 8x (220 ± 2%) against the hybrid (198 ± 2%): beyond the spread over seeds, worse
    assert "reaches \\TeacherSamePPL{},\nabove the best hybrid's \\GapHybridPPL{}: even the trained" in text
    assert "retention" not in (synthetic["dirs"].generated / "abstract.tex").read_text()
    assert r"only \TeacherSamePPL{} (the baseline: \TeacherPPL{})" in (synthetic["dirs"].generated / "abstract.tex").read_text()
    table = (synthetic["dirs"].tables / "teacher.tex").read_text()
    assert "Pure PIL" not in table  # the students keep a trained model's attention: not pure PIL-LMs
    # RF + AdamW (215) beats the closed-form fit with as many features (RF 4x: 128 features, 230)
    assert r"reaches \RFAdamWPPL{}, against \TeacherRFFitPPL{}" in text
    conclusion = (synthetic["dirs"].generated / "conclusion.tex").read_text()
    assert "each\nreadout is fitted alone, to a fixed layer-wise target" in conclusion


def test_first_layers_are_compared_with_fresh_random_ones_per_width(synthetic):
    text = (synthetic["dirs"].generated / "closing.tex").read_text()
    assert r"\paragraph{Data-dependent first layers.}" in text and r"\FirstLayerSamePPL{}" in text
    assert "(not the same" not in text  # the control reproduces its checkpoint
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["FirstLayerABest"]["value"] == "landmarks" and numbers["FirstLayerBBest"]["value"] == "landmarks"
    assert numbers["FirstLayerABestPPL"]["note"].endswith("expansion=4")
    # paired by checkpoint: landmarks (140) below random (152) on both seeds
    assert numbers["FirstLayerAPairedLower"]["value"] == "2 of 2" and numbers["FirstLayerAPairedDiff"]["value"].startswith("-")
    assert r"is lower on \FirstLayerAPairedLower{} seeds" in text
    table = (synthetic["dirs"].tables / "first_layer.tex").read_text()
    body = table[table.index(r"\midrule"):table.index(r"\bottomrule")]
    # one row per kind and width, averaged over the seeds (the checkpoints' perplexities are measurements,
    # not keys that would split the rows per seed)
    assert sum(line.startswith("landmarks &") for line in body.splitlines()) == 2
    assert "before" not in table and r"$\pm$ std over 2 seeds" in table


def test_a_first_layer_width_with_one_seed_says_so(tmp_path):
    """With one seed of a width there is no spread over seeds to be within, and a paired "average" is that
    one seed: the sentence says "one seed so far" instead, while the width with every seed keeps both."""
    root = write_fake_results(tmp_path / "r", only=("first_layer",))
    summary = root / "smoke" / "first_layer" / "summary.csv"
    rows = [r for r in csv.DictReader(summary.open()) if not (r["expansion"] == "16.0" and r["seed"] == "1")]
    _write_csv(summary, rows)
    dirs = _render(root, tmp_path)
    text = _prose(dirs, "closing")
    widths = text[text.index(r"With \FirstLayerAFeatures{}"):].split("Solving the FFNs")[0]
    first, second = widths.split(r"With \FirstLayerBFeatures{}")
    assert "one seed so far" not in first and r"\FirstLayerAPairedLower{}" in first
    assert "(one seed so far)" in second and "spread over seeds" not in second
    assert r"\FirstLayerBPairedLower{}" not in second


def test_every_target_is_read_against_the_zero_target_of_its_method(tmp_path):
    """The zero target reproduces attention-only training: the paper says which targets beat it, which are
    within its seed spread and which are worse (the solves then hurt), and names the method its local/global
    comparison holds for (it once said "the global target beats the local one" where that held for one
    method only)."""
    rng = random.Random(0)
    ppl = {("attn_then_pil", "zero"): 147.0, ("attn_then_pil", "global"): 140.0, ("attn_then_pil", "local"): 146.5,
           ("pil_then_attn", "zero"): 147.0, ("pil_then_attn", "global"): 161.0, ("pil_then_attn", "local"): 160.0}
    rows = [_row("training_strategy", m, sd, rng, target=t, ppl=p + sd) for (m, t), p in ppl.items() for sd in (0, 1)]
    root = tmp_path / "r"
    _write_exp(root, "smoke", "training_strategy", rows, runs=False)
    dirs = _render(root, tmp_path)
    text = _prose(dirs, "ablations")
    assert r"With attention$\rightarrow$PIL, the global target" in text
    assert (r"Beyond the spread over seeds, only attention$\rightarrow$PIL with the global target beats it, and "
            r"PIL$\rightarrow$attention with the global and local targets are worse than it") in text
    assert r"attention$\rightarrow$PIL with the local target is within its spread." in text


def test_generated_tex_has_no_control_characters(synthetic):
    """A "\t" or "\r" in a non-raw Python string becomes a tab or carriage return, and LaTeX then
    prints "exttt" or "ightarrow"."""
    for d in (synthetic["dirs"].tables, synthetic["dirs"].generated):
        for f in d.glob("*.tex"):
            bad = {c for c in f.read_text() if ord(c) < 32 and c != "\n"}
            assert not bad, f"{f.name}: control characters {sorted(map(ord, bad))}"


def test_sliding_window_protocol_is_reported_beside_the_ngram(synthetic):
    text = (synthetic["dirs"].generated / "results_main.tex").read_text()
    assert r"slide by \ProtoStride{} tokens" in text and r"\ProtoBaselineSlide{}" in text and r"\ProtoPILSlide{}" in text
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["ProtoStride"]["value"] == "16" and numbers["ProtoContext"]["value"] == "48"


def test_main_table_ends_with_the_kneser_ney_anchor_only_when_it_was_computed(tmp_path):
    """Issue 7: the n-gram model is the main table's gradient-free anchor, from ngram/summary.csv."""
    with_kn = _render(write_fake_results(tmp_path / "a", only=("benchmark", "ngram")), tmp_path / "a")
    table = (with_kn.tables / "benchmark.tex").read_text()
    kn_row = next(line for line in table.splitlines() if line.startswith("Kneser--Ney"))
    cells = [c.strip() for c in kn_row.rstrip(" \\").split("&")]
    # the highest order's row (order, valid_ppl, test_ppl in columns 2-4): its perplexities, no gradient step
    top = (tmp_path / "a" / "smoke" / "ngram" / "summary.csv").read_text().splitlines()[-1].split(",")
    assert cells[0] == f"Kneser--Ney {top[2]}-gram" and cells[1] == f"{float(top[4]):.1f}" \
        and cells[2] == f"{float(top[3]):.1f}" and cells[4:6] == ["0", "0"]
    assert r"\emph{gradient-free anchor}" in table and "ngram.ipynb" in table and r"\ref{tab:ngram}" in table
    without = _render(write_fake_results(tmp_path / "b", only=("benchmark",)), tmp_path / "b")
    assert "Kneser--Ney" not in (without.tables / "benchmark.tex").read_text()


def test_head_calibration_at_the_grid_edge_is_reported(tmp_path):
    """Runs with a solved head record the (temperature, mix) search; a chosen mix at the grid's
    largest value is reported as the grid stopping the calibration."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    grid = [{"temperature": t, "mix": m, "valid_loss": 5.0 - m} for t in (1.0, 2.0) for m in (0.0, 0.1, 0.3)]
    for name, mix in (("pil_pure+head,seed=0", 0.3), ("pil_pure+head,seed=1", 0.1)):
        d = root / "smoke" / "gap" / "runs" / name
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"method": "pil_pure", "solves": [
            {"phase": "head", "layer": "head", "temperature": 2.0, "mix": mix, "search": grid}]}))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert (numbers["HeadMixRuns"]["value"], numbers["HeadMixEdgeRuns"]["value"], numbers["HeadMixMax"]["value"]) \
        == ("2", "1", "0.30")
    assert "the grid, not the data, stopped the calibration" in (dirs.generated / "closing.tex").read_text()


def test_step_sizes_at_the_top_of_their_grid_are_reported(tmp_path):
    root = write_fake_results(tmp_path / "r", only=("benchmark", "tinystories"))
    grid = [{"eta": eta, "valid_loss": 1.0 / eta} for eta in (1e-4, 1e-2, 1.0)]
    d = root / "smoke" / "tinystories" / "runs" / "pil_then_attn_s0"
    result = json.loads((d / "result.json").read_text())
    result["solves"] = [{"layer": i, "eta": 1.0 if i < 3 else 1e-2, "eta_at_edge": i < 3, "search": grid,
                         "phase": "pil"} for i in range(4)] + [{"layer": 0, "eta": 1e-4, "eta_at_edge": True,
                                                                 "search": grid, "phase": "pil"}]  # bottom edge
    (d / "result.json").write_text(json.dumps(result))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert (numbers["EtaTopASolves"]["value"], numbers["EtaTopAOf"]["value"]) == ("3", "5")
    assert numbers["EtaTopASolves"]["source"].endswith("tinystories/summary.csv")
    assert "The step-size grid limited some solves from above" in (dirs.generated / "closing.tex").read_text()


def test_tuning_choices_at_the_end_of_the_grid_are_reported(tmp_path):
    root = write_fake_results(tmp_path / "r", only=("tuning", "benchmark"))
    summary = root / "smoke" / "tuning" / "summary.csv"
    rows = list(csv.DictReader(summary.open()))
    extra = [r | {"lr": "0.0005", "name": r["name"] + "_low"} for r in rows if r["lr"] == "0.001"]
    _write_csv(summary, rows + extra)  # a three-value learning-rate grid: 5e-4, 1e-3, 2e-3
    dirs = _render(root, tmp_path)
    text = (dirs.generated / "appendix_tuning.tex").read_text()
    # chosen.csv: baseline at lr 2e-3 (the top), pil_then_attn at 1e-3 (inside)
    assert "For Baseline (MLP FFN), the chosen learning rate is the largest of the grid" in text
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["TuneEdgeLRTop"]["source"].endswith("tuning/summary.csv")
    # the grid itself, as run, is named beside the number of trials
    assert numbers["TuneLRGrid"]["value"] == r"\ensuremath{5.0\times 10^{-4}}, \ensuremath{10^{-3}}, \ensuremath{2.0\times 10^{-3}}"
    assert numbers["TuneDropoutGrid"]["value"] == "0.10, 0.20"
    assert r"(learning rates \TuneLRGrid{}; dropout \TuneDropoutGrid{})" in " ".join(text.split())
    # a two-value grid (dropout 0.1, 0.2) is named only when every method chose the same end (both chose 0.1)
    assert "For every method, the chosen dropout is the smallest of the grid" in " ".join(text.split())
    assert "suit them better" in text.split("every method")[1]
    chosen = root / "smoke" / "tuning" / "chosen.csv"
    # a method whose grid is not complete has no choice: "every method" would include it (results/paper: alternating)
    rows = [r | {"complete": "True"} for r in csv.DictReader(chosen.open())]
    _write_csv(chosen, rows + [{k: "" for k in rows[0]} | {"method": "alternating", "trials": "3", "complete": "False"}])
    report.render("smoke", root, dirs, with_figures=False)
    text = " ".join((dirs.generated / "appendix_tuning.tex").read_text().split())
    assert "For every method with a complete grid, the chosen dropout is the smallest of the grid" in text
    rows = [r | ({"dropout": "0.2"} if r["method"] == "pil_then_attn" else {}) for r in csv.DictReader(chosen.open())]
    _write_csv(chosen, rows)
    report.render("smoke", root, dirs, with_figures=False)
    assert "chosen dropout" not in (dirs.generated / "appendix_tuning.tex").read_text()


def test_results_of_an_earlier_registry_configuration_say_so(tmp_path):
    """An experiment whose recorded parameters differ from the registry's (e.g. a budget added since)
    is named in the status box and in its captions: its tables show what ran, not what is asked."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    prov = root / "smoke" / "benchmark" / "provenance.json"
    prov.write_text(json.dumps(json.loads(prov.read_text()) | {"parameters": {"profile": "smoke", "budgets": [7]}}))
    dirs = _render(root, tmp_path)
    status = (dirs.generated / "status.tex").read_text()
    assert r"\textbf{Earlier configuration.}" in status and r"\texttt{benchmark} (budgets [7], now [1])" in status
    assert "ran with budgets [7] (now [1])" in (dirs.tables / "benchmark.tex").read_text()
    # results that record no registry parameters (the plain fake ones) are not called outdated
    plain = report.default_dirs("smoke", tmp_path / "plain")
    report.render("smoke", write_fake_results(tmp_path / "s", only=("benchmark",)), plain, with_figures=False)
    assert "Earlier configuration" not in (plain.generated / "status.tex").read_text()


def test_compress_runs_folds_seeds():
    assert report.compress_runs(["a,seed=0", "a,seed=2", "b,seed=1", "c"]) == "a (seeds 0, 2); b (seed 1); c"


def test_complexity_fit_that_explains_nothing_locates_no_crossover(tmp_path):
    def render(r2: float) -> str:
        root = write_fake_results(tmp_path / f"r{r2}", only=("complexity",))
        (root / "smoke" / "complexity" / "fit.csv").write_text(f"a,b,r2\n2e-11,4e-9,{r2}\n")
        dirs = report.default_dirs("smoke", tmp_path / f"out{r2}")
        report.render("smoke", root, dirs, with_figures=False)
        return (dirs.generated / "complexity.tex").read_text()

    assert r"\ComplexityCrossRatio" in render(0.99)
    poor = render(0.2)  # an older one-part fit.csv (a, b, r2) still renders
    assert r"\ComplexityCrossRatio" not in poor and "do not resolve both terms" in poor


def test_complexity_two_part_fit_names_what_dominates(synthetic):
    text = (synthetic["dirs"].generated / "complexity.tex").read_text()
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    # sqrt(c/a) = sqrt(1e-5 / 2e-11) ≈ 707 > the widest D measured (128): the D-independent pass dominates
    assert numbers["ComplexityStreamD"]["value"] == "707" and numbers["ComplexityRTwoSolve"]["value"] == "0.987"
    assert "at every width we measured, the\nclosed-form phase is dominated by that forward pass" in text
    assert r"\ComplexityRTwoStream" in text and r"\ComplexityCrossRatio" in text


def test_other_budgets_sizes_and_diverged_runs_are_reported(tmp_path):
    """Besides the main group, every other (size, budget) group of the benchmark gets a sentence, and
    a run whose validation perplexity ends far above its best is named as diverged, with its solves
    at the top of the step-size grid."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    summary = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(summary.open()))
    second = [r | {"seed": "1", "name": r["name"].replace("seed=0", "seed=1")} for r in rows if r["size"] == "small"]
    _write_csv(summary, rows + second)  # a second seed for the small model: its sentences may generalize
    d = root / "smoke" / "benchmark" / "runs" / "pil_then_attn,size=small,epochs=2,seed=0"
    result = json.loads((d / "result.json").read_text())
    result["curve"][-1]["valid_ppl"] = 5 * min(p["valid_ppl"] for p in result["curve"])
    grid = [{"eta": eta, "valid_loss": 1.0 / eta} for eta in (1e-4, 1e-2, 1.0)]
    result["solves"] = [{"layer": i, "eta": 1.0 if i else 1e-2, "eta_at_edge": bool(i), "search": grid}
                        for i in range(4)]
    (d / "result.json").write_text(json.dumps(result))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    # the primary group is tiny at 2 epochs; the others: the small model (a subset), then 1 epoch
    assert numbers["BenchGroupALabel"]["value"] == "the small model"
    assert numbers["BenchGroupBLabel"]["value"] == "1 epoch"
    assert numbers["BenchGroupAPILMethod"]["note"].endswith("size=small")
    assert (numbers["DivergedASize"]["value"], numbers["DivergedASeed"]["value"]) == ("small", "0")
    assert (numbers["DivergedAEtaTop"]["value"], numbers["DivergedASolves"]["value"]) == ("3", "4")
    assert "DivergedBSize" not in numbers  # the other runs' curves end at their best
    text = (dirs.generated / "results_main.tex").read_text()
    assert r"\paragraph{Other budgets and model sizes.}" in text and "One run diverged" in text
    assert "With larger models, the hybrid best on validation" in (dirs.generated / "conclusion.tex").read_text()
    # one seed per method is not enough for the conclusion or the abstract to speak of larger models
    one = report.default_dirs("smoke", tmp_path / "one")
    report.render("smoke", write_fake_results(tmp_path / "r1", only=("benchmark",)), one, with_figures=False)
    assert "With larger models" not in (one.generated / "conclusion.tex").read_text()
    assert "At larger sizes" not in (one.generated / "abstract.tex").read_text()


@pytest.mark.parametrize("ppl_by_seed, rising", [((130.0, 2000.0, 120.0), True), ((110.0, 2000.0, 120.0), False)])
def test_diverged_run_is_set_beside_its_other_seeds_steps(tmp_path, ppl_by_seed, rising):
    """A diverged run's configuration is listed over its seeds (median searched step, test perplexity);
    "the larger the steps, the worse" is said only when the test perplexity rises with the step."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    runs = root / "smoke" / "benchmark" / "runs"
    src = runs / "pil_then_attn,size=small,epochs=2,seed=0"
    result = json.loads((src / "result.json").read_text())
    result["spec"] = {"method": "pil_then_attn", "size": "small", "train": {"epochs": 2}}
    for seed, (eta, ppl) in enumerate(zip((1e5, 1e6, 1e3), ppl_by_seed)):
        grid = [{"eta": x, "valid_loss": 1.0 / x} for x in (1e3, 1e5, 1e6)]
        r = json.loads(json.dumps(result)) | {"seed": seed, "test_ppl": ppl,
                                              "name": f"pil_then_attn,size=small,epochs=2,seed={seed}"}
        r["spec"]["train"]["seed"] = seed
        r["solves"] = [{"layer": i, "eta": eta, "eta_at_edge": eta == 1e6, "search": grid} for i in range(2)]
        if seed == 1:  # this one diverges
            r["curve"][-1]["valid_ppl"] = 5 * min(p["valid_ppl"] for p in r["curve"])
        d = runs / r["name"]
        d.mkdir(exist_ok=True)
        (d / "result.json").write_text(json.dumps(r))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["DivergedASeed"]["value"] == "1" and "DivergedBSeed" not in numbers
    steps = numbers["DivergedASeedSteps"]["value"]
    assert steps.startswith(r"seed 0: \ensuremath{10^{5}}, ") and r"seed 2: \ensuremath{10^{3}}, 120.0" in steps
    text = (dirs.generated / "results_main.tex").read_text()
    assert r"\DivergedASeedSteps{}" in text
    assert ("the larger the steps, the worse the model" in text) == rising
    table = " ".join((dirs.tables / "benchmark.tex").read_text().split())
    assert (r"One run diverged and is kept in the mean of its row: PIL$\rightarrow$attention, small, seed 1"
            in table)


def test_every_gap_variant_reads_in_words():
    """The prose names the best gap variants in words: every variant of the registry must have them (a new
    "+modifier" without a wording would print its raw label, underscores and all)."""
    from pillm import experiments as ex

    gap = ex.load_registry()["gap"]["parameters"]
    names = {v for profile in gap.values() for v in profile["variants"]}
    assert {"attn_then_pil+global", "pil_pure+ppmi"} <= names
    for name in names:
        words = report.variant_tex(name)
        assert "_" not in words and "+" not in words, (name, words)
    assert report.variant_tex("attn_then_pil+global") == r"attention$\rightarrow$PIL with global targets"
    assert report.variant_tex("unknown+thing") == "unknown+thing"
    assert report.variant_tex("attn_then_pil+global+iter3") == (r"attention$\rightarrow$PIL with global targets "
                                                                "and three solve sweeps")
    assert report.variant_tex("attn_then_pil+iter1") == r"attn\_then\_pil+iter1"  # one sweep is no modifier
    assert report.variant_tex("attn_then_pil+global+scale0.5") == (r"attention$\rightarrow$PIL with global targets "
                                                                   "and projection scale 0.5")
    assert report.variant_tex("attn_then_pil+global+lam0.1") == (r"attention$\rightarrow$PIL with global targets "
                                                                  r"and $\lambda = 0.1$")


def test_gap_table_names_its_variants_in_words(synthetic):
    """The gap table's rows are the variants in words; their method and options, which the words say, are not
    repeated as mostly empty columns (they shrank the table to an unreadable size)."""
    table = (synthetic["dirs"].tables / "gap.tex").read_text()
    assert "Pure PIL with a solved output head &" in table and r"pil\_pure" not in table
    header = next(line for line in table.splitlines() if line.startswith("Variant &"))
    assert "solve" not in header and "Method" not in header


@pytest.mark.parametrize("attn_ppl, within", [(260.0, False), (None, True)])
def test_a_share_of_the_gap_within_the_seed_spread_is_called_so(tmp_path, attn_ppl, within):
    """"Recovers k% of the gap" must say when the hybrid is within attention only's seed spread, in the
    results, the abstract and the conclusion; at tuned settings, the abstract says when the best hybrid is
    no better than attention only."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "tuning"))
    bench = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(bench.open()))
    main = [r for r in rows if r["size"] == "tiny" and r["epochs"] == "2"]
    hybrid = [float(r["test_ppl"]) for r in main if r["method"] == "alternating"]  # the best hybrid on validation
    for r in main:
        if r["method"] == "attn_only":
            ppl = attn_ppl or (sum(hybrid) / len(hybrid)) * 1.004  # a hair worse: a share of the gap, within the spread
            r["test_ppl"], r["valid_ppl"] = ppl, ppl * 1.06
    _write_csv(bench, rows)
    tuned = root / "smoke" / "tuning" / "tuned.csv"
    rows = list(csv.DictReader(tuned.open()))
    extra = [r | {"method": "attn_only", "test_ppl": str(float(r["test_ppl"]) * (0.995 if within else 1.3))}
             for r in rows if r["method"] == "pil_then_attn"]
    _write_csv(tuned, rows + extra)
    if within:  # a method without a complete grid has no tuned row: the abstract's best hybrid is among the others
        chosen = root / "smoke" / "tuning" / "chosen.csv"
        rows = [r | {"complete": "True"} for r in csv.DictReader(chosen.open())]
        _write_csv(chosen, rows + [{k: "" for k in rows[0]} | {"method": "alternating", "trials": "3",
                                                                "complete": "False"}])
    dirs = _render(root, tmp_path)
    text = {name: _prose(dirs, name)
            for name in ("results_main", "abstract", "conclusion", "appendix_tuning")}
    assert ("the best hybrid whose grid is complete" in text["abstract"]) == within
    assert ("not distinguishable from none" in text["results_main"]) == within
    assert ("within the spread over seeds" in text["abstract"]) == within
    assert ("though within the spread over seeds of attention only" in text["conclusion"]) == within
    assert ("is no better than attention only" in text["abstract"]) == within
    assert r"attention only reaches \TunedAttnOnlyPPL{}" in text["appendix_tuning"]


@pytest.mark.parametrize("pure, above_unigram", [(1082.0, True), (500.0, False)])
def test_best_pure_variant_is_also_compared_with_the_unigram(tmp_path, pure, above_unigram):
    """results/paper: the best gradient-free variant (1,082) is above the 5-gram and the unigram (911.7)."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "gap", "ngram"))
    path = root / "smoke" / "gap" / "summary.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"pure_pil_test_ppl": pure}))
    dirs = _render(root, tmp_path)
    assert ("still above the unigram model" in _prose(dirs, "abstract")) == above_unigram
    closing = _prose(dirs, "closing")
    assert (r"above the unigram model's \KNUnigramPPL{}" in closing) == above_unigram
    assert (r"below the unigram model's \KNUnigramPPL{}" in closing) == (not above_unigram)


def test_conclusion_states_the_closed_form_cost_it_measured(synthetic):
    text = (synthetic["dirs"].generated / "conclusion.tex").read_text()
    assert r"takes \GPUPILOverBaselinePct{}\% of the" in text and "cheap" not in text


def test_curves_of_runs_that_shared_the_gpus_make_no_time_claim(tmp_path):
    root = write_fake_results(tmp_path / "r", only=("training_curves",))
    alone = _prose(_render(root, tmp_path / "alone"), "appendix_curves")
    assert "indicative only" not in alone
    summary = root / "smoke" / "training_curves" / "summary.csv"
    _write_csv(summary, [r | {"concurrent_runs": "4"} for r in csv.DictReader(summary.open())])
    shared = _prose(_render(root, tmp_path / "shared"), "appendix_curves")
    assert r"up to \CurvesShared{} at a time: the time axis is indicative only" in shared
    assert "sooner" not in shared and "later than" not in shared


def test_curves_figure_shows_the_trained_range_and_says_what_it_cuts(synthetic):
    """The untrained models' perplexity (epoch 0, ~30,000 in the fake curves) is left above the plotted
    range, so that the trained epochs are not compressed into the bottom of the axis; the caption says so."""
    cap = (synthetic["dirs"].figures / "curves.tex").read_text()
    assert r"the untrained models' perplexities (epoch 0, up to 30\,000) lie above the plotted range" in cap


@pytest.mark.skipif(not (REPO / "results" / "paper" / "complexity" / "fit.csv").is_file(),
                    reason="no results/paper/complexity in this checkout")
def test_complexity_figure_draws_the_model_the_notebook_fitted():
    """The dashed lines of the complexity figure are the whole fitted model (its caption says streaming
    e + cN + aND^2 plus solve s + bD^3): they reproduce the notebook's own fitted values, row by row.
    (They once drew a·N·D² + b·D³ only, far below the points, while the caption named the full model.)"""
    import pandas as pd

    fit = pd.read_csv(REPO / "results" / "paper" / "complexity" / "fit.csv").iloc[0].to_dict()
    solves = pd.read_csv(REPO / "results" / "paper" / "complexity" / "solves.csv")
    drawn = report.complexity_model_seconds(fit, solves["tokens"].astype(float), solves["n_features"].astype(float))
    assert ((drawn - solves["fitted_s"]).abs() <= 1e-9 + 1e-6 * solves["fitted_s"].abs()).all()
    assert report.complexity_model_seconds({"a": 1e-12, "b": 1e-9}, 1e6, 100) == pytest.approx(1e-12 * 1e6 * 1e4 + 1e-3)


def test_expansion_figure_says_when_its_times_were_shared(tmp_path):
    """The expansion figure plots the closed-form phase's time; measured beside other runs, that time is not
    the cost of width, and the caption says so (as the main table's note does); timed alone, it does not."""
    root = write_fake_results(tmp_path / "r", only=("ablation_expansion",))
    dirs = _render(root, tmp_path, figures=True)
    assert "sharing the GPUs" not in (dirs.figures / "expansion.tex").read_text()
    summary = root / "smoke" / "ablation_expansion" / "summary.csv"
    rows = [r | {"concurrent_runs": "4"} for r in csv.DictReader(summary.open())]
    _write_csv(summary, rows)
    report.render("smoke", root, dirs)
    assert "measured with up to 4 runs sharing the GPUs" in (dirs.figures / "expansion.tex").read_text()


def test_kappa_figure_uses_the_main_configuration(tmp_path):
    """κ per layer comes from the main configuration's runs: a deeper model of another size would add
    layers (and a budget other solves) that the main configuration does not have."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    d = root / "smoke" / "benchmark" / "runs" / "pil_then_attn,size=small,epochs=2,seed=0"
    result = json.loads((d / "result.json").read_text())
    result["solves"] = [{"layer": i, "cond": 1e5, "solver": "cholesky"} for i in range(8)]  # 8 layers
    (d / "result.json").write_text(json.dumps(result))
    rows, e, which = report.kappa_per_layer(report.Results(root, "smoke"))
    assert e.name == "benchmark" and which == ", in the main configuration's runs"
    assert max(r["layer"] for r in rows) == 3 and {r["run"] for r in rows} >= {"PIL→attn", "Alternating"}


def test_contribution_figure_leaves_out_a_method_off_the_scale_and_says_so(tmp_path):
    """Pure PIL's perplexity, far above the others, would flatten every bar: it is left out of the figure
    and its value given in the caption; a method on the others' scale stays in."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    dirs = _render(root, tmp_path, figures=True)
    cap = (dirs.figures / "contribution.tex").read_text()
    assert "off this scale and left out: Pure PIL (" in cap  # fake: 900 against attention only's 260
    summary = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(summary.open()))
    for r in rows:
        if r["method"] == "pil_pure":
            r["test_ppl"] = "500"
    _write_csv(summary, rows)
    report.render("smoke", root, dirs)
    assert "left out" not in (dirs.figures / "contribution.tex").read_text()


def test_sizes_figure_draws_a_diverged_seed_at_the_edge(tmp_path):
    """The model-size figure joins the medians over seeds of the methods run at every size; a seed far above
    its configuration's median is drawn at the top edge with its value (named in the caption), so that it
    does not flatten the others."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    dirs = _render(root, tmp_path, figures=True)
    fig = (dirs.figures / "sizes.tex").read_text()
    assert (dirs.figures / "sizes.pdf").is_file() and "medians over seeds" in fig and "triangle" not in fig
    assert r"Figure~\ref{fig:sizes}" in (dirs.generated / "results_main.tex").read_text()
    summary = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(summary.open()))
    extra = [r | {"seed": str(s), "name": r["name"].replace("seed=0", f"seed={s}"),
                  "test_ppl": str(float(r["test_ppl"]) * (20 if s == 2 else 1.01))}
             for r in rows if r["size"] == "small" and r["method"] == "pil_then_attn" for s in (1, 2)]
    _write_csv(summary, rows + extra)
    report.render("smoke", root, dirs)
    assert "a triangle at the top edge marks a seed" in (dirs.figures / "sizes.tex").read_text()
    # with one size only there is nothing to draw
    one = write_fake_results(tmp_path / "one", only=("benchmark",))
    summary = one / "smoke" / "benchmark" / "summary.csv"
    rows = [r for r in csv.DictReader(summary.open()) if r["size"] != "small"]
    _write_csv(summary, rows)
    single = report.default_dirs("smoke", tmp_path / "single")
    report.render("smoke", one, single)
    assert not (single.figures / "sizes.pdf").exists()
    assert "fig:sizes" not in (single.generated / "results_main.tex").read_text()


def test_larger_sizes_sentence_gives_one_verdict_or_one_per_size():
    """Abstract and conclusion share one sentence on the larger sizes: when every size agrees it states
    the verdict once; when they differ, each size carries its own (none is left unqualified)."""
    sizes = report.jinja_env().get_template("_sizes.tex.j2")
    n = {f"BenchGroup{t}{k}": f"{t}{k}" for t in "AB" for k in ("Label", "PILMethod", "PILPPL", "AttnOnlyPPL")}

    def sentence(*verdicts):
        sz = [{"tag": t, "pil_vs_attn": v} for t, v in zip("AB", verdicts)]
        return " ".join(str(sizes.make_module({"n": n}).sizes_vs_attn(sz, "Lead")).split())

    assert sentence("within", "within") == ("Lead the hybrid best on validation stays within the seed spread of "
                                            "attention only (ALabel: APILMethod APILPPL against AAttnOnlyPPL; "
                                            "BLabel: BPILMethod BPILPPL against BAttnOnlyPPL).")
    assert "stays behind attention only" in sentence("worse", "worse")
    mixed = sentence("worse", "better")
    assert "is on either side of attention only" in mixed
    assert "AAttnOnlyPPL, worse;" in mixed and "BAttnOnlyPPL, better)." in mixed
    assert "does no worse than attention only" in sentence("better", "within")  # the results/paper case
    assert "does no better than attention only" in sentence("within", "worse")


def test_main_configuration_numbers_leave_out_other_budgets(tmp_path):
    """The gain of attention→PIL's final solve, and the step sizes chosen before and after AdamW, are quoted
    beside the main table: runs of another epoch budget (or size) must not enter their means or medians."""
    root = write_fake_results(tmp_path / "r", only=("benchmark",))
    for epochs, (before, after) in ((2, (150.0, 148.5)), (1, (400.0, 300.0))):
        for seed in (0, 1):
            p = root / "smoke" / "benchmark" / "runs" / f"attn_then_pil,size=tiny,epochs={epochs},seed={seed}" / "result.json"
            result = json.loads(p.read_text())
            result["curve"] = result["curve"] + [{"epoch": epochs, "valid_ppl": before, "phase": "adamw"},
                                                 {"epoch": epochs, "valid_ppl": after, "phase": "pil"}]
            result["train_config"]["warmup_frac"] = 0.05 if epochs == 2 else 0.25
            result["solves"] = [{"layer": i, "phase": "pil", "eta": 10.0 if epochs == 2 else 1e5} for i in range(4)]
            p.write_text(json.dumps(result))
            p = p.parents[1] / f"pil_then_attn,size=tiny,epochs={epochs},seed={seed}" / "result.json"
            result = json.loads(p.read_text())
            result["solves"] = [{"layer": i, "phase": "pil", "eta": 1e3 if epochs == 2 else 1e6} for i in range(4)]
            p.write_text(json.dumps(result))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert (numbers["SolveAfterAttnBefore"]["value"], numbers["SolveAfterAttnAfter"]["value"]) == ("150.0", "148.5")
    assert "epochs=2" in numbers["SolveAfterAttnBefore"]["note"]
    # the step sizes before and after AdamW, quoted beside it, come from the same runs
    assert (numbers["EtaInitMedian"]["value"], numbers["EtaTrainedMedian"]["value"]) == (
        r"\ensuremath{10^{3}}", r"\ensuremath{10^{1}}")
    # the hyper-parameter table lists the main configuration's settings, not another budget's
    hparams = (dirs.tables / "hparams.tex").read_text()
    assert "0.05" in hparams and "0.25" not in hparams


@pytest.mark.parametrize("iterated, verdict, lower", [((141.2, 140.7, 142.4), "within", "3 of 3"),
                                                      ((130.0, 131.0, 129.5), "an improvement beyond", "3 of 3"),
                                                      ((143.5, 141.5, 144.0), "within", "1 of 3")])
def test_iterated_solves_are_compared_with_one_sweep_seed_by_seed(tmp_path, iterated, verdict, lower):
    """A ``+iterN`` gap variant is read against the same variant with one sweep, by the seed spread and seed by
    seed (results/paper: attn_then_pil+global 143.0 ± 0.82, with two sweeps 141.4 ± 0.87: within, 3 of 3 lower)."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    path = root / "smoke" / "gap" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    rng = random.Random(0)
    three = tuple(p - 5 for p in iterated)  # a third sweep, always better beyond the spread
    for v, ppls in (("attn_then_pil+global", (143.0, 142.1, 143.8)), ("attn_then_pil+global+iter2", iterated),
                    ("attn_then_pil+global+iter3", three)):
        for seed, ppl in enumerate(ppls):
            r = _row("gap", "attn_then_pil", seed, rng, variant=v, iterations=v[-1] if "iter" in v else "")
            r.update(name=f"{v},seed={seed}", test_ppl=ppl, valid_ppl=ppl * 1.06)
            rows.append({k: r.get(k, "") for k in rows[0]} | {"iterations": r["iterations"]})
    _write_csv(path, rows, fieldnames=list(rows[-1]))
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["GapIterASweeps"]["value"] == "2"
    assert numbers["GapIterAPairedLower"]["value"] == lower
    mean_diff = sum(i - b for i, b in zip(iterated, (143.0, 142.1, 143.8))) / 3
    assert float(numbers["GapIterAPairedDiff"]["value"]) == pytest.approx(mean_diff, abs=0.01)
    closing = _prose(dirs, "closing")
    assert (r"takes \GapIterAMethod{} from \GapIterABasePPL{} to \GapIterAPPL{}, " + verdict) in closing
    # a second count of sweeps on the same base continues the sentence instead of repeating it
    assert closing.count("Running the bottom-up solve") == 1 and numbers["GapIterBSweeps"]["value"] == "3"
    assert r"With \GapIterBSweeps{} sweeps instead of one it reaches \GapIterBPPL{}, an improvement beyond" in closing
    assert numbers["GapIterAMethod"]["value"] == r"attention$\rightarrow$PIL with global targets"
    assert "iter" not in (dirs.tables / "gap.tex").read_text().split(r"\midrule")[0]  # no iterations column


@pytest.mark.parametrize("rf, hybrid, words, abstract_words, conclusion_words", [
    ((55.0, 45.0), (5.0, 0.0), "is about as large a part of the problem", "about as much as",  # 47.5±3.5, 50±7.1
     r"What limits it at this scale is, about equally (\S\ref{sec:gap}), the frozen random first layer and that"),
    ((70.0, 72.0), (5.0, 6.0), "is a larger part of the problem at this scale than the random first layer",
     "limit PIL-LM more than the random first layer", "What limits it at this scale is that each readout"),
    ((20.0, 22.0), (5.0, 6.0), "the random first layer is the larger part of the problem",
     "the random first layer is the main limit", "Its limits are the expressiveness of fixed random features")])
def test_first_layer_and_readout_shares_are_compared_by_their_seed_spread(tmp_path, rf, hybrid, words,
                                                                          abstract_words, conclusion_words):
    """Which of the two parts of the gap is larger (what the random first layer leaves open, 100 − RF retention,
    and what the closed-form readout leaves beyond it) is said only beyond their spread over seeds (review of
    results/paper: 42.5% against 41.5%, larger on 2 of 3 seeds, was called "at least as large")."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "gap", "ngram", "teacher"))
    path = root / "smoke" / "gap" / "summary.json"  # the main table's hybrid is the best of either section
    path.write_text(json.dumps(json.loads(path.read_text()) | {"best_hybrid_test_ppl": 259.0}))
    bench = root / "smoke" / "benchmark" / "summary.csv"
    rows = list(csv.DictReader(bench.open()))
    attn, base = 260.0, 180.0
    ppl_at = lambda ret: math.exp(math.log(attn) - ret / 100 * (math.log(attn) - math.log(base)))  # noqa: E731
    for r in rows:
        if r["size"] != "tiny" or r["epochs"] != "2":
            continue
        sd = int(r["seed"])
        ppl = {"baseline": base, "attn_only": attn, "rf_adamw": ppl_at(rf[sd]), "alternating": ppl_at(hybrid[sd])}
        if r["method"] in ppl:
            r["test_ppl"] = ppl[r["method"]]
            r["valid_ppl"] = ppl[r["method"]] * 1.05
        elif r["method"] in ("pil_then_attn", "attn_then_pil"):
            r["valid_ppl"] = 1000.0  # alternating is the hybrid best on validation
    _write_csv(bench, rows)
    dirs = _render(root, tmp_path)
    assert words in _prose(dirs, "closing") and abstract_words in _prose(dirs, "abstract")
    assert conclusion_words in _prose(dirs, "conclusion")


@pytest.mark.parametrize("timed_is_best", [True, False])
def test_abstract_quotes_the_best_hybrids_time_only_from_a_timing_of_it(tmp_path, timed_is_best):
    """The abstract adds the best hybrid's training time (bench part 5) next to its perplexity ratio, but only
    when the benchmark timed that hybrid; a timing of another variant says nothing about it."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "gap", "ngram"))
    best = json.loads((root / "smoke" / "gap" / "summary.json").read_text())["best_hybrid_name"]
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "nvidia-h200.json").write_text(json.dumps(
        {"quick": False, "device_name": "NVIDIA H200", "pil_phase_over_baseline_train": 0.25,
         "hybrid_over_baseline_train": 2.25, "goals": {"hybrid_over_baseline_train": {"met": False}},
         "hybrid": {"variant": best if timed_is_best else best + "+other", "baseline_train_projected": False}}))
    dirs = _render(root, tmp_path)
    abstract = " ".join(_prose(dirs, "abstract").split())
    assert r"\GapRatio{}$\times$ the baseline" in abstract  # the sentence itself is there either way
    assert (r"at \GPUHybridOverBaseline{}$\times$ its training time" in abstract) == timed_is_best
    results = " ".join(_prose(dirs, "results_main").split())
    assert "We also timed the closed-form phase" in results
    assert (r"takes \GPUHybridOverBaseline{}$\times$ the baseline's." in results) == timed_is_best


@pytest.mark.parametrize("attn, words", [((260.0, 262.0), "better beyond the spread over seeds"),
                                         ((199.0, 197.0), "within the spread over seeds")])
def test_conclusion_reads_the_gap_sections_best_hybrid_against_attention_only(tmp_path, attn, words):
    """The conclusion quoted only the main table's hybrid (within attention only's spread) while the gap section's
    best hybrid beats attention only beyond it (results/paper: 141.4 ± 0.87 against 147.6 ± 0.56)."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "gap", "ngram"))
    path = root / "smoke" / "gap" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    rows += [r | {"name": f"attn_only,seed={r['seed']}", "variant": "attn_only", "method": "attn_only",
                  "test_ppl": str(attn[int(r["seed"])]), "valid_ppl": str(attn[int(r["seed"])] * 1.05)}
             for r in rows if r["variant"] == "baseline"]
    _write_csv(path, rows)
    dirs = _render(root, tmp_path)
    assert (r"The best hybrid of \S\ref{sec:gap} (\GapHybridMethod{}) reaches \GapHybridPPL{} against attention "
            r"only's \GapAttnOnlyPPL{}, " + words) in _prose(dirs, "conclusion")
    assert ("better than attention only beyond the seed spread" in _prose(dirs, "abstract")) == words.startswith("better")


def test_curves_caption_names_the_sharing_when_runs_were_timed_under_different_contention(tmp_path):
    """results/paper/training_curves: PIL→attention ran with 9 runs on the GPUs, the other curves with 16; the
    wall-clock panel must not read as a comparison, and the caption says which run shared with how many."""
    root = write_fake_results(tmp_path / "r", only=("training_curves",))
    runs = sorted((root / "smoke" / "training_curves" / "runs").glob("*/result.json"))
    for i, p in enumerate(runs):
        p.write_text(json.dumps(json.loads(p.read_text()) | {"environment": {"concurrent_runs": 9 if i == 0 else 16}}))
    caption = (_render(root, tmp_path, figures=True).figures / "curves.tex").read_text()
    assert "timed with different numbers of runs sharing the GPUs, so the wall-clock axis does not compare them" \
        in caption and ": 9;" in caption and caption.count("seed 0") == 2 * len(runs)  # short and long caption
    for p in runs:
        p.write_text(json.dumps(json.loads(p.read_text()) | {"environment": {"concurrent_runs": 16}}))
    assert "different numbers" not in (_render(root, tmp_path / "b", figures=True).figures / "curves.tex").read_text()


def test_the_appendix_says_lambda_is_not_tuned_per_method(synthetic, tmp_path):
    """Issue 8 asks for λ to be chosen on validation like the learning rate: the main comparison uses one λ for
    every closed-form method, and the appendix says so beside what the λ ablation chose (results/paper: 10⁻⁴ against
    10⁻¹, the top of its grid)."""
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert numbers["LambdaMain"]["value"] == r"\ensuremath{10^{-4}}"  # _result's train_config
    assert numbers["LambdaMain"]["source"].endswith("benchmark/summary.csv")
    text = _prose(synthetic["dirs"], "appendix_tuning")  # the fake ablation is best at 10⁻⁴ too
    assert (r"every closed-form method of the main comparison solves with $\lambda = \LambdaMain{}$ "
            r"(Table~\ref{tab:hparams}), the value the $\lambda$ ablation") in text
    root = write_fake_results(tmp_path / "r", only=("benchmark", "ablation_lambda"))
    path = root / "smoke" / "ablation_lambda" / "summary.csv"
    rows = [r | ({"valid_ppl": "150.0", "test_ppl": "145.0"} if float(r["lam"]) == 1e-2 else {})
            for r in csv.DictReader(path.open())]
    _write_csv(path, rows)
    text = _prose(_render(root, tmp_path), "appendix_tuning")
    assert r"while the $\lambda$ ablation (Table~\ref{tab:ablation_lambda}) chose $\lambda = \LambdaBest{}$ on " \
        r"validation, the largest value of its grid" in text


@pytest.mark.parametrize("best, words", [
    ("alternating", "hybrid runs one such sweep besides training attention"),
    ("attn_then_pil+global+iter3",
     "hybrid runs three such sweeps after training attention for as many epochs as the baseline")])
def test_the_time_half_of_the_gap_goal_is_said_to_be_unassessed(tmp_path, best, words):
    """Issue 7's goal bounds the best hybrid's wall-clock time by the baseline's; its runs shared the GPU, so the
    paper gives the measured cost of one sweep alone and how many sweeps the hybrid runs, and does not judge it."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    summary = root / "smoke" / "gap" / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"best_hybrid_name": best}))
    (root / "bench").mkdir(parents=True)  # the GPU timing the sentence quotes
    (root / "bench" / "nvidia-h200.json").write_text(json.dumps(
        {"quick": False, "device_name": "NVIDIA H200", "pil_phase_over_baseline_train": 0.258}))
    closing = _prose(_render(root, tmp_path), "closing")
    assert r"one closed-form sweep with local targets takes \GPUPILOverBaselinePct{}\% of the baseline's" in closing
    assert words in closing and "That half of the goal is therefore not assessed." in closing
    bare = write_fake_results(tmp_path / "nobench", only=("gap", "ngram"))
    assert "wall-clock time by the baseline's" not in _prose(_render(bare, tmp_path / "b"), "closing")


@pytest.mark.parametrize("timed, ratio, adamw, met, words", [
    ("attn_then_pil+global+iter3", 2.25, 1.07, False, "that half of the goal is not met."),  # results/bench (H200)
    ("attn_then_pil+global+iter3", 1.42, 0.80, False, "that half of the goal is not met."),
    ("attn_then_pil+global+iter3", 0.91, 0.60, True, "that half of the goal is met."),
    ("alternating", 0.91, 0.60, True, None)])  # a timing of another variant says nothing about the best hybrid
def test_the_time_half_of_the_gap_goal_is_judged_once_the_best_hybrid_is_timed_alone(tmp_path, timed, ratio, adamw, met,
                                                                                    words):
    """``pillm bench --parts train,hybrid`` times a gap variant's whole training against the baseline's in one run:
    when it is the best hybrid, the paper judges the time half of issue 7's goal from it (the bench's own verdict),
    and splits the time into the AdamW phase and the sweeps; only an AdamW phase that alone reaches the baseline's
    time is said to rule out meeting the goal by cheaper solves."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    summary = root / "smoke" / "gap" / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"best_hybrid_name": "attn_then_pil+global+iter3"}))
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "nvidia-h200.json").write_text(json.dumps(
        {"quick": False, "device_name": "NVIDIA H200", "pil_phase_over_baseline_train": 0.258,
         "hybrid_over_baseline_train": ratio, "goals": {"hybrid_over_baseline_train": {"met": met}},
         "hybrid": {"variant": timed, "baseline_train_projected": False, "baseline_train_seconds": 50.0,
                    "options": {"method": timed.split("+")[0]},
                    "adamw_seconds": 50.0 * adamw, "pil_seconds": 50.0 * (ratio - adamw)}}))
    dirs = _render(root, tmp_path)
    closing = _prose(dirs, "closing")
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    if words is None:
        assert "That half of the goal is therefore not assessed." in closing and "Timed alone, in one" not in closing
        assert "GPUHybridOverBaseline" not in numbers
    else:
        assert numbers["GPUHybridOverBaseline"]["value"] == f"{ratio:.2f}"
        assert numbers["GPUHybridOverBaseline"]["source"].endswith("bench/nvidia-h200.json")
        assert r"takes \GPUHybridOverBaseline{}$\times$ the baseline's AdamW training: " + words in closing
        assert "not assessed" not in closing and "projected" not in closing
        assert (numbers["GPUHybridAdamWOverBaseline"]["value"], numbers["GPUHybridSweepsOverBaseline"]["value"]) \
            == (f"{adamw:.2f}", f"{ratio - adamw:.2f}")
        assert r"Of that, AdamW on attention takes \GPUHybridAdamWOverBaseline{}$\times$" in closing
        flat = " ".join(closing.split())
        assert ("so cheaper solves alone cannot meet this half" in flat) == (adamw > 1)
        # why the AdamW phase costs that much is said of attention→PIL, whose readouts are zero while it trains
        assert ("whose readouts stay zero until they are solved" in flat) == (adamw > 1)
    # the conclusion quotes the whole hybrid's time only when it is the best hybrid's
    conclusion = " ".join(_prose(dirs, "conclusion").split())
    assert (r"\GPUHybridOverBaseline{}$\times$ the baseline's training time" in conclusion) == (words is not None)


def test_lambda_chosen_per_layer_is_read_against_the_control_and_the_grid(synthetic):
    """lambda_path: the per-layer λ re-solve against the control at the checkpoint's λ, and which λ each layer
    chose, counted from lambda_search.csv (results/paper: 8 of 12 solves at the grid's smallest, 1 at its largest)."""
    numbers = parse_numbers(synthetic["dirs"].tables / "numbers.tex")
    assert (numbers["LamPathSolves"]["value"], numbers["LamPathAtLow"]["value"], numbers["LamPathAtHigh"]["value"]) \
        == ("4", "2", "0")  # two seeds × two layers; layer 0 chose 10⁻⁴, layer 1 10⁻²
    assert numbers["LamPathAtLow"]["source"].endswith("lambda_path/lambda_search.csv")
    assert numbers["LamPathGridHigh"]["value"] == r"\ensuremath{10^{0}}"
    assert float(numbers["LamPathLossRange"]["value"]) == pytest.approx(0.004, abs=1e-4)  # layer 1: 4.999 … 5.003
    assert numbers["LamPathPairedLower"]["value"] == "2 of 2" and numbers["LamPathPairedDiff"]["value"] == "-0.40"
    closing = _prose(synthetic["dirs"], "closing")
    assert r"\paragraph{Ridge $\lambda$ per layer.}" in closing and r"the models reach \LamPathPPL{}," in closing
    # 0.004 nats is within the 1% tolerance: the paragraph may say λ does not limit the hybrid only then
    assert "is not what limits the hybrid" in closing
    assert r"gives \LamPathPPL{} against \LamPathControlPPL{} at the common" in _prose(synthetic["dirs"], "appendix_tuning")
    table = (synthetic["dirs"].tables / "lambda_path.tex").read_text()
    assert "control" in table and "Checkpoint" in table


def test_fixed_attention_is_chosen_on_validation_and_read_against_random_attention(tmp_path):
    """pure_attention: the pattern with the lowest validation perplexity (not test) is compared with random
    attention, and with the gap experiment's best pure variant on validation."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "gap", "ngram", "pure_attention"))
    path = root / "smoke" / "pure_attention" / "summary.csv"
    rows = list(csv.DictReader(path.open()))
    for r in rows:  # avg-avg: the lower test perplexity, but the higher validation perplexity
        if r["heads"] == "avg-avg":
            r.update(test_ppl="800.0", valid_ppl="990.0")
    _write_csv(path, rows)
    numbers = parse_numbers(_render(root, tmp_path).tables / "numbers.tex")
    assert numbers["PureAttnBest"]["value"] == "prev1-avg"
    closing = _prose(_render(root, tmp_path), "closing")
    assert r"The better of two patterns on validation, \texttt{\PureAttnBest{}}" in closing
    assert "It is the best pure variant on validation" in closing  # ~903 against the gap's 945
    assert r"above the Kneser--Ney 5-gram's \GapKNPPL{}" in closing
    # the abstract and the main results quote the best gradient-free variant of both experiments
    assert numbers["PureBestPPL"]["source"].endswith("pure_attention/summary.csv")
    assert r"(\PureBestMethod{}) \PureBestPPL{}, above" in _prose(_render(root, tmp_path), "abstract")
    summary = root / "smoke" / "gap" / "summary.json"  # a gap variant better on validation keeps its place
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"pure_pil_valid_ppl": 850.0}))
    dirs = _render(root, tmp_path / "b")
    assert parse_numbers(dirs.tables / "numbers.tex")["PureBestPPL"]["source"].endswith("gap/summary.json")
    assert "The best pure variant on validation remains the gap experiment's" in _prose(dirs, "closing")


def test_one_option_at_a_time_pairs_each_variant_with_the_spec_it_extends(tmp_path):
    """gap_changes: a variant is paired with the variant whose registry spec it extends by one option, by the
    specs (provenance), not by the names: pil_pure+ppmi (solve_head and embed_init) extends pil_pure+head."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    d = root / "smoke" / "gap"
    specs = {"pil_pure": {"method": "pil_pure"}, "pil_pure+head": {"method": "pil_pure", "solve_head": True},
             "pil_pure+ppmi": {"method": "pil_pure", "solve_head": True, "embed_init": "ppmi"},
             "alternating": {"method": "alternating"},
             "alternating+landmarks": {"method": "alternating", "proj_init": "landmarks"}}
    prov = json.loads((d / "provenance.json").read_text())
    prov["parameters"]["variants"] = specs
    (d / "provenance.json").write_text(json.dumps(prov))
    rows = list(csv.DictReader((d / "summary.csv").open()))
    rng = random.Random(1)
    for v, m, ppls in (("pil_pure", "pil_pure", (5000.0, 5100.0)), ("pil_pure+ppmi", "pil_pure", (700.0, 720.0)),
                       ("alternating+landmarks", "alternating", (197.0, 199.0))):
        for seed, ppl in enumerate(ppls):
            r = _row("gap", m, seed, rng, variant=v)
            rows.append({k: r.get(k, "") for k in rows[0]} | {"name": f"{v},seed={seed}", "test_ppl": ppl,
                                                              "valid_ppl": ppl * 1.05})
    _write_csv(d / "summary.csv", rows)
    dirs = _render(root, tmp_path)
    table = (dirs.tables / "gap_changes.tex").read_text()
    body = table[table.index(r"\midrule"):]
    assert body.count(r"\\") == 3  # three pairs; pil_pure+ppmi is not paired with pil_pure
    assert r"\texttt{embed\_init=ppmi}" in body and r"\texttt{solve\_head=True}" in body
    assert "Pure PIL with a solved output head & \\texttt{embed\\_init=ppmi}" in body
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert (numbers["GapChangesN"]["value"], numbers["GapChangesBetter"]["value"]) == ("3", "2")
    closing = _prose(dirs, "closing")
    assert r"of \GapChangesN{} such changes," in closing and "Pure PIL with a solved output head and" in closing


def test_the_largest_hybrid_change_is_named_and_pure_pils_are_not(tmp_path):
    """Of the one-option changes beyond the seed spread, the closing section names the hybrids' largest (by the
    mean per-seed difference), not pure PIL's, whose perplexities are orders of magnitude apart; and says when
    validation still prefers another hybrid (results/paper: alternating + global targets, 154.8 -> 141.7)."""
    root = write_fake_results(tmp_path / "r", only=("gap", "ngram"))
    d = root / "smoke" / "gap"
    specs = {"pil_pure": {"method": "pil_pure"}, "pil_pure+head": {"method": "pil_pure", "solve_head": True},
             "alternating": {"method": "alternating"},
             "alternating+global": {"method": "alternating", "target": "global"},
             "alternating+lam0.01": {"method": "alternating", "lam": 0.01}}
    prov = json.loads((d / "provenance.json").read_text())
    prov["parameters"]["variants"] = specs
    (d / "provenance.json").write_text(json.dumps(prov))
    rows = list(csv.DictReader((d / "summary.csv").open()))
    alt = {int(r["seed"]): float(r["test_ppl"]) for r in rows if r["variant"] == "alternating"}
    assert len(alt) >= 2
    rng = random.Random(1)
    for v, m, shift in (("pil_pure", "pil_pure", None), ("alternating+global", "alternating", -30.0),
                        ("alternating+lam0.01", "alternating", -10.0)):
        for seed, base in sorted(alt.items()):
            ppl = 5000.0 + seed if shift is None else base + shift + 0.1 * seed
            r = _row("gap", m, seed, rng, variant=v)
            rows.append({k: r.get(k, "") for k in rows[0]} | {"name": f"{v},seed={seed}", "test_ppl": ppl,
                                                              "valid_ppl": ppl * 1.05})
    _write_csv(d / "summary.csv", rows)
    dirs = _render(root, tmp_path)
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["GapChangeTopOption"]["value"] == r"\texttt{target=global}"
    assert numbers["GapChangeTopBase"]["value"] == "Alternating"
    mean_seed = sum(alt) / len(alt)  # per-seed differences -30 + 0.1·seed
    assert numbers["GapChangeTopPairedDiff"]["value"] == f"{-30.0 + 0.1 * mean_seed:.2f}"
    assert numbers["GapChangeTopPairedLower"]["value"] == f"{len(alt)} of {len(alt)}"
    closing = " ".join(_prose(dirs, "closing").split())
    assert r"Among the hybrids the largest of these gains is \GapChangeTopOption{} added to \GapChangeTopBase{}" in closing
    assert "Pure PIL with a solved output head" in closing  # a larger gain (5,000 -> ~900), but not a hybrid's
    best = json.loads((d / "summary.json").read_text())["best_hybrid_name"]
    assert ("validation still prefers" in closing) == (best != "alternating+global")


def test_signed_differences_drop_the_sign_of_nothing():
    from pillm.report.results import _signed

    assert (_signed(-0.001), _signed(0.004), _signed(-1.234), _signed(2.0), _signed(-12090.8)) == (
        "0.00", "0.00", "-1.23", "+2.00", "-12\\,091")


def test_lambda_chosen_per_method_in_tuning_is_reported_in_the_appendix(tmp_path):
    """tuning's λ search (chosen_lam.csv, lambda.csv): the appendix names each closed-form method's λ chosen on
    validation, and no longer says that they have none."""
    root = write_fake_results(tmp_path / "r", only=("benchmark", "tuning", "lambda_path"))
    d = root / "smoke" / "tuning"
    closing_free = _prose(_render(root, tmp_path / "a"), "appendix_tuning")
    assert "The other closed-form methods have not had" in closing_free and "then had $\\lambda$" not in closing_free
    _write_csv(d / "lambda.csv", [{"method": "pil_then_attn", "lam": lam, "seed": 0, "valid_ppl": v, "test_ppl": v}
                                  for lam, v in ((1e-4, 210.0), (1e-2, 205.0), (1.0, 208.0))])
    (d / "chosen_lam.csv").write_text("method,trials,complete,lam,valid_ppl,test_ppl,default_valid_ppl,chosen_is_default\n"
                                      "pil_then_attn,3,True,0.01,205.0,200.0,210.0,False\n"
                                      "attn_then_pil,3,True,0.0001,190.0,185.0,190.0,True\n"
                                      "alternating,1,False,,,,,\n")
    # confirmation runs as the notebook names them: lam only where it differs from the common λ
    rng = random.Random(0)
    _write_csv(d / "tuned.csv", [_row("tuning", m, sd, rng, lr=1e-3, dropout=0.1, lam=lam, ppl=pp)
                                 for m, lam, pp in (("baseline", "", 181.0), ("pil_then_attn", 0.01, 200.0),
                                                    ("attn_then_pil", "", 185.0), ("attn_only", "", 185.0))
                                 for sd in (0, 1, 2)])
    # pil_then_attn's lr × dropout trials (summary.csv: their λ is the common one), then its confirmation runs
    # at its chosen lr and dropout, at the chosen λ and at the common one, per seed; a λ trial at another λ
    def result(name, seed, lr, dropout, lam, ppl):
        run = d / "runs" / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "result.json").write_text(json.dumps({"method": "pil_then_attn", "seed": seed, "test_ppl": ppl,
                                                     "train_config": {"lam": lam, "lr": lr},
                                                     "model_config": {"dropout": dropout}}))
    with open(d / "summary.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["method"] == "pil_then_attn":
                result(r["name"], 0, float(r["lr"]), float(r["dropout"]), 1e-4, float(r["test_ppl"]))
    for seed, (at_chosen, at_common) in enumerate(((200.0, 203.0), (201.0, 200.5), (199.0, 204.0))):
        stem = "method=pil_then_attn,lr=0.001,dropout=0.1"
        result(f"{stem},lam=0.01,seed={seed}", seed, 1e-3, 0.1, 0.01, at_chosen)
        result(f"{stem},seed={seed}", seed, 1e-3, 0.1, 1e-4, at_common)
    result("method=pil_then_attn,lr=0.001,dropout=0.1,lam=1,seed=0", 0, 1e-3, 0.1, 1.0, 150.0)
    result("method=pil_then_attn,lr=0.002,dropout=0.1,lam=0.01,seed=1", 1, 2e-3, 0.1, 0.01, 150.0)  # other lr
    dirs = _render(root, tmp_path / "b")
    text = _prose(dirs, "appendix_tuning")
    assert r"\TunedLamAMethod{} chose \TunedLamA{} (validation perplexity \TunedLamAGainPct{}\% lower than" in text
    assert (r"runs each at that $\lambda$; there \TunedLamAMethod{} reaches \TunedLamAPPL{} against "
            r"\TunedLamACommonPPL{} at the common $\lambda$ (seed by seed \TunedLamAPairedDiff{}, lower on "
            r"\TunedLamAPairedLower{} seeds).") in text
    assert r"\TunedLamBMethod{} chose \TunedLamB{} (the common value)" in text
    table = {line.split("&")[0].strip(): line for line in (dirs.tables / "tuned.tex").read_text().splitlines()
             if "&" in line}
    # attention→PIL ran at the common λ (no lam in its runs' names); its row still says which λ that is
    assert r"& \ensuremath{10^{-4}} &" in table[r"attention$\rightarrow$PIL"]
    assert r"& \ensuremath{10^{-2}} &" in table[r"PIL$\rightarrow$attention"]
    assert r"\ensuremath{10^{-" not in table["Baseline (MLP FFN)"].split("&", 2)[2]  # no ridge at all
    assert "The other closed-form methods have not had" not in text and "value. The closed-form methods that also train" in text
    assert "the search of Alternating is incomplete" in text
    numbers = parse_numbers(dirs.tables / "numbers.tex")
    assert numbers["TunedLamA"]["value"] == r"\ensuremath{10^{-2}}"
    assert numbers["TunedLamAGainPct"]["value"] == "2.4" and "TunedLamBGainPct" not in numbers  # 1 - 205/210
    assert (numbers["TunedLamAPPL"]["value"], numbers["TunedLamACommonPPL"]["value"]) == ("200.0", "202.5")
    assert (numbers["TunedLamAPairedDiff"]["value"], numbers["TunedLamAPairedLower"]["value"]) == ("-2.50", "2 of 3")
    assert "TunedLamBPPL" not in numbers  # attention→PIL kept the common λ: nothing to compare
    # the abstract's tuned sentence (best hybrid against attention only) names λ among what was tuned
    assert "own tuned learning rate and dropout (and ridge $\\lambda$), the best hybrid" in _prose(dirs, "abstract")
    assert numbers["TunedLamAMethod"]["source"].endswith("tuning/chosen_lam.csv")
    assert (numbers["TunedLamGridLow"]["value"], numbers["TunedLamGridHigh"]["value"]) == (
        r"\ensuremath{10^{-4}}", r"\ensuremath{10^{0}}")
    assert "TunedLamC" not in numbers  # the incomplete search chose nothing
