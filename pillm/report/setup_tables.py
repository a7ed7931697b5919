"""The experimental setup's tables: models, datasets, hyperparameters, hardware."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import METHOD_PLAIN, PAPER_EXPERIMENTS
from .fmt import _finite, _natural_key, dataset_tex, fmt_count, fmt_params, fmt_plain, tex_escape
from .results import _main_configuration, _runs_where, _tally
from .tables import TableSpec

if TYPE_CHECKING:
    from .sections import Report


def setup_tables(rep: Report) -> None:
    """Model configurations, datasets, hyper-parameters and hardware (from code + results)."""
    from ..model import PRESETS

    all_exps = [rep.R.exp(n) for n in PAPER_EXPERIMENTS if n != "gap"]
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
        rep.tables["models"] = TableSpec(
            "models", "Model configurations used in the experiments (presets of \\texttt{pillm.model}; "
            "context length and expansion as recorded in the runs; parameters of the baseline including "
            "embeddings)", "tab:models",
            ["Size", "Layers", r"$d_{\mathrm{model}}$", "Heads", "Context", "Expansion", "Params"],
            rows, align="lrrrrrr", sources=srcs)
    else:
        rep._no_table("models", "Model configurations", ["benchmark"])
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
        rep.tables["datasets"] = TableSpec(
            "datasets", "Corpora as tokenized by the runs (train tokens after any \\texttt{max\\_train\\_tokens} "
            "cap; scored test tokens)", "tab:datasets", ["Corpus", "Tokenizer", "Vocabulary", "Train tokens",
                                                         "Test tokens"],
            drows, align="llrrr", sources=[rep.R.exp(n) for n in dsrc])
    else:
        rep._no_table("datasets", "Corpora and token counts", ["benchmark"])
    # hyper-parameters of the main benchmark
    b = rep.R.exp("benchmark")
    bruns = _runs_where(b, _main_configuration(b)) if b.available else []  # not another budget's or size's
    keys = ("epochs", "batch_size", "lr", "dropout", "min_lr_ratio", "warmup_frac", "weight_decay", "grad_clip", "lam",
            "target", "iterations", "search_tokens", "max_train_tokens", "max_eval_tokens")
    hrows = []
    methods = []
    for r in bruns:
        if r.get("method") not in methods and r.get("train_config"):
            methods.append(r["method"])
    methods.sort(key=_natural_key)
    if methods:
        # train_config, and the model's dropout (tuned with the learning rate: the appendix's common setting)
        cfgs = {m: next(r["train_config"] | {"dropout": (r.get("model_config") or {}).get("dropout")}
                        for r in bruns if r.get("method") == m and r.get("train_config"))
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
        rep.tables["hparams"] = TableSpec(
            "hparams", "Training hyper-parameters of the main benchmark runs (\\texttt{train\\_config} and the "
            "model's dropout in each \\texttt{result.json}); where methods differ, the methods are named", "tab:hparams",
            ["Setting", "Value"], hrows, align="lp{0.6\\linewidth}", sources=[b])
    else:
        rep._no_table("hparams", "Training hyper-parameters of the main benchmark", ["benchmark"])
    # hardware and provenance
    from ..experiments import run_provenance  # experiments imports this module: import when used

    prow = []
    psrc = []
    for e in [rep.R.exp(n) for n in PAPER_EXPERIMENTS]:
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
        rep.tables["hardware"] = TableSpec(
            "hardware", "Hardware, software and provenance of every result in this paper "
            "(\\texttt{provenance.json}): where the runs were computed (device, torch and commit of "
            "their \\texttt{result.json}, with counts where they differ) and where the notebook that "
            "collected them last executed. A run is used only while its key (its resolved configuration "
            "and a hash of the library code it ran) matches the current code, so runs recorded at "
            "different commits computed the same thing", "tab:hardware",
            ["Experiment", "Runs", "Device (runs)", "torch (runs)", "Commit (runs)", "Notebook executed on",
             "Date", "Results"], prow, align="lrllllll", sources=psrc, star=True)
    else:
        rep._no_table("hardware", "Hardware and provenance", list(PAPER_EXPERIMENTS))
