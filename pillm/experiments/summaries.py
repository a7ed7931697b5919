"""What notebooks compute from finished grids: choices on validation, headline summaries, loaded runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..stats import log_gap_share
from ..run import load
from .files import experiment_dir
from .grid import make_run, partial_allowed

#: Methods that solve FFNs in closed form and also take optimizer steps: their ridge λ is searched per
#: method, at each one's chosen learning rate and dropout (pure PIL takes no step: it has no lr to tune).
LAMBDA_TUNED = ("pil_then_attn", "attn_then_pil", "alternating")


def teacher_summary(teachers: pd.DataFrame, students: pd.DataFrame) -> dict:
    """How well fixed random features represent trained FFNs (a diagnosis).

    ``teachers``: the trained baselines. ``students``: runs labelled by ``variant`` that keep a
    teacher's embeddings and attention and fit every FFN readout in closed form to the teacher's FFN
    output (``target='teacher'``, zero gradient steps), one variant ``no FFN`` (``target='zero'``).
    Retention of a variant: the share of the teacher's log-perplexity gain over "no FFN" that the
    random-feature fit keeps, ``100·(ln ppl[no FFN] − ln ppl[variant]) / (ln ppl[no FFN] − ln ppl[teacher])``
    on the means over seeds of test perplexity."""
    ppl = students.groupby("variant", sort=False)["test_ppl"].mean().to_dict()
    if "no FFN" not in ppl:
        raise ValueError(f"teacher_summary: no 'no FFN' variant among {sorted(ppl)}")
    teacher = float(teachers["test_ppl"].mean())
    share = {v: log_gap_share(ppl["no FFN"], teacher, x) for v, x in ppl.items() if v != "no FFN"}
    fits = {v: {"test_ppl": float(ppl[v]), "retention_pct": math.nan if r is None else r} for v, r in share.items()}
    return {"teacher_test_ppl": teacher, "no_ffn_test_ppl": float(ppl["no FFN"]), "fits": fits,
            "seeds": int(teachers["seed"].nunique())}


def gap_summary(df: pd.DataFrame, roles: dict, ngram: pd.DataFrame | None = None) -> dict:
    """Headline numbers from a run grid labelled by ``variant`` (means over seeds).

    ``roles`` names the ``baseline`` and ``attn_only`` variants, the ``pure`` PIL candidates and the
    ``controls`` (fair baselines; one label or a list each); every other variant is a hybrid candidate.
    The best hybrid and the best pure variant are chosen on **validation** perplexity only; their test
    perplexities are then reported. ``ngram`` is the ``ngram`` experiment's summary (``kn5_test_ppl`` is
    its order-5 row; None when it was not run).
    """
    means = df.groupby("variant")[["valid_ppl", "test_ppl", "total_s"]].mean()
    seeds = df.groupby("variant")["seed"].nunique()
    pure, controls = ([v] if isinstance(v, str) else list(v or []) for v in (roles.get("pure"), roles.get("controls")))
    fixed = {roles.get("baseline"), roles.get("attn_only"), *pure, *controls}

    def get(label, col: str):
        return float(means.loc[label, col]) if label in means.index else None

    def best_of(labels):
        labels = [v for v in labels if v in means.index]
        return min(labels, key=lambda v: means.loc[v, "valid_ppl"]) if labels else None

    hybrids = [v for v in means.index if v not in fixed]
    best, best_pure = best_of(hybrids), best_of(pure)
    kn5 = None
    if ngram is not None and len(ngram) and 5 in set(ngram["order"]):
        kn5 = float(ngram.loc[ngram["order"] == 5, "test_ppl"].iloc[0])
    out = {"baseline_test_ppl": get(roles.get("baseline"), "test_ppl"),
           "attn_only_test_ppl": get(roles.get("attn_only"), "test_ppl"),
           "best_hybrid_test_ppl": get(best, "test_ppl"), "best_hybrid_valid_ppl": get(best, "valid_ppl"),
           "best_hybrid_name": best, "pure_pil_test_ppl": get(best_pure, "test_ppl"),
           "pure_pil_valid_ppl": get(best_pure, "valid_ppl"), "pure_pil_name": best_pure, "kn5_test_ppl": kn5,
           "baseline_total_s": get(roles.get("baseline"), "total_s"), "best_hybrid_total_s": get(best, "total_s"),
           "selection": "lowest mean valid_ppl among hybrids (and among pure variants)", "hybrids": hybrids,
           "pure_candidates": [v for v in pure if v in means.index], "seeds": {k: int(v) for k, v in seeds.items()}}
    if controls:
        out["controls"] = {v: get(v, "test_ppl") for v in controls if v in means.index}
    if out["baseline_test_ppl"] and out["best_hybrid_test_ppl"]:
        out["hybrid_over_baseline"] = out["best_hybrid_test_ppl"] / out["baseline_test_ppl"]
    return out


def choose_on_validation(df: pd.DataFrame, by: str, params: list[str], default: dict | None = None) -> pd.DataFrame:
    """Per value of ``by`` (e.g. each method), the trial with the lowest mean validation perplexity.

    Every group must have the same trials (same budget for every method). Under
    ``PILLM_FINISHED_ONLY=1`` (a partial summary) a group with fewer trials than the largest gets no
    choice instead: its row has ``complete`` False and no parameters or perplexities.
    ``default`` names the setting the other experiments use (e.g. ``{"lr": 1e-3, "dropout": 0.1}``);
    its validation perplexity is reported beside the choice. Test perplexity is reported for the
    chosen trial only.
    """
    missing = [c for c in [by, *params, "valid_ppl", "test_ppl"] if c not in df.columns]
    if missing:
        raise ValueError(f"choose_on_validation: columns {missing} are not in the summary")
    means = df.groupby([by, *params], dropna=False)[["valid_ppl", "test_ppl"]].mean().reset_index()
    trials = means.groupby(by).size()
    incomplete = {}
    if trials.nunique() > 1:
        if not partial_allowed():
            raise ValueError(f"unequal tuning budgets: trials per {by} = {trials.to_dict()}; "
                             f"give every {by} the same grid")
        incomplete = {k: int(n) for k, n in trials.items() if n < trials.max()}
        print(f"choose_on_validation: grid incomplete for {incomplete} (of {trials.max()} trials): not chosen")
    rows = []
    for key, g in means.groupby(by, sort=False):
        if key in incomplete:
            rows.append({by: key, "trials": len(g), "complete": False})
            continue
        best = g.loc[g["valid_ppl"].idxmin()]
        row = {by: key, "trials": len(g), "complete": True, **{p: best[p] for p in params},
               "valid_ppl": float(best["valid_ppl"]), "test_ppl": float(best["test_ppl"])}
        if default:
            d = g
            for p, v in default.items():
                d = d[d[p] == v]
            row["default_valid_ppl"] = float(d["valid_ppl"].iloc[0]) if len(d) else math.nan
            row["chosen_is_default"] = bool(len(d)) and all(best[p] == v for p, v in default.items())
        rows.append(row)
    return pd.DataFrame(rows)


def lambda_trials(base: dict, chosen: pd.DataFrame, lams: list[float], seeds: list[int]) -> list[dict]:
    """The ridge-λ search, the same way as the learning-rate × dropout search: for each method of
    ``chosen`` (:func:`choose_on_validation`'s rows) in :data:`LAMBDA_TUNED` whose setting was chosen, one run
    per λ of ``lams`` and seed at that setting. The trial at the common λ is the chosen run itself (same run
    key: reused, not rerun). Empty when ``lams`` is."""
    bad = [x for x in lams if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0]
    if bad:
        raise ValueError(f"lams must be positive relative ridge values (e.g. [1e-4, 1e-2, 1.0]), got {bad}")
    if len(set(lams)) != len(lams):
        raise ValueError(f"lams has repeated values: {lams}")
    done = chosen[chosen["method"].isin(LAMBDA_TUNED) & chosen["complete"].astype(bool)]
    return [make_run(base, method=r.method, lr=float(r.lr), dropout=float(r.dropout), lam=float(lam), seed=seed)
            for r in done.itertuples() for lam in lams for seed in seeds]


def choose_lambda(trials: pd.DataFrame, base: dict) -> pd.DataFrame:
    """Per method, the λ of :func:`lambda_trials` with the lowest mean validation perplexity (rows as
    :func:`choose_on_validation`'s, beside the common λ: ``train.lam`` of ``base``, else TrainConfig's)."""
    from ..train import TrainConfig

    common = float(base.get("train", {}).get("lam", TrainConfig.lam))
    return choose_on_validation(trials, "method", ["lam"], default={"lam": common})


def confirmation_runs(base: dict, chosen: pd.DataFrame, seeds: list[int],
                      lambdas: pd.DataFrame | None = None) -> list[dict]:
    """Every method at its own chosen setting (``chosen``: lr and dropout; ``lambdas``: :func:`choose_lambda`'s
    λ, for the methods it has) on each of ``seeds``. A method whose choice is incomplete (a partial grid) gets
    no runs; λ enters a run only where it differs from the common λ, so those runs keep their names."""
    lam_of, waiting = {}, set()
    if lambdas is not None:
        for r in lambdas.itertuples():
            if not bool(r.complete):
                waiting.add(r.method)
            elif not bool(r.chosen_is_default):
                lam_of[r.method] = float(r.lam)
    done = chosen[chosen["complete"].astype(bool) & ~chosen["method"].isin(waiting)]
    # named like lambda_trials' runs (method, lr, dropout[, lam], seed): the grid's own seed is the same run
    return [make_run(base, method=r.method, lr=float(r.lr), dropout=float(r.dropout),
                     **({"lam": lam_of[r.method]} if r.method in lam_of else {}), seed=seed)
            for r in done.itertuples() for seed in seeds]


def run_dir(experiment: str, name: str, profile: str, results_root=None) -> Path:
    return experiment_dir(experiment, profile, results_root) / "runs" / name


def load_result(experiment: str, name: str, profile: str, results_root=None) -> dict:
    return json.loads((run_dir(experiment, name, profile, results_root) / "result.json").read_text())


def evaluate_checkpoint(experiment: str, name: str, profile: str, results_root=None, *, split: str = "test",
                        stride: int | None = None, max_tokens: int | None = None, batch_size: int = 32,
                        device: str = "auto") -> dict:
    """Perplexity of a finished run's checkpoint on ``split`` of its own dataset, scored with windows
    that slide by ``stride`` tokens (None: non-overlapping, as in every run's ``result.json``): with
    ``stride = s`` every scored token sees at least ``T − s`` tokens of context."""
    from ..data import load_tokenized
    from ..evaluate import evaluate_stream
    from ..train import resolve_device

    result = load_result(experiment, name, profile, results_root)
    model, _ = load(run_dir(experiment, name, profile, results_root), device=str(resolve_device(device)))
    corpus = load_tokenized(result["dataset"], result["spec"].get("tokenizer", "auto"))
    ids = getattr(corpus, split).to(next(model.parameters()).device)
    r = evaluate_stream(model, ids, batch_size=batch_size, stride=stride, max_tokens=max_tokens)
    return {"split": split, "stride": stride or model.config.block_size, "ppl": r["ppl"], "tokens": r["tokens"]}
