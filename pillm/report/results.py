"""Reading results: summary tables per experiment, values by seed, JSON files and provenance.

A result that is not there raises :class:`NotRun`; callers render it as "not run".
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .config import BENCH, BEST_HYBRID, BEST_PURE, METHOD_ORDER, ReportError


class NotRun(LookupError):
    """The results a number or table needs are not in this results tree."""


class Results:
    """``results/<profile>/<experiment>/...`` plus ``results/bench/``; files are read once."""

    def __init__(self, root: Path, profile: str):
        self.root, self.profile = Path(root), profile
        self._frames: dict[Path, object] = {}

    def path(self, rel: str) -> Path:
        """``<experiment>/<file>`` under the profile, or ``bench/<file>`` under the root."""
        return self.root / rel if rel.startswith("bench/") else self.root / self.profile / rel

    def shown(self, rel: str) -> str:
        """``rel`` as the paper shows it, relative to the repository."""
        return f"results/{rel}" if rel.startswith("bench/") else f"results/{self.profile}/{rel}"

    def frame(self, rel: str):
        """The CSV ``rel`` (e.g. ``"gap/summary.csv"``) as a pandas DataFrame."""
        p = self.path(rel)
        if p not in self._frames:
            if not p.is_file():
                raise NotRun(rel)
            import pandas as pd

            self._frames[p] = pd.read_csv(p)
        return self._frames[p]

    def rows(self, rel: str, **where):
        df = self.frame(rel)
        for k, v in where.items():
            if k not in df.columns:
                raise NotRun(f"{rel} has no column {k!r}")
            col = df[k]
            df = df[col.astype(str) == str(v)] if isinstance(v, str) else df[col == v]
        if not len(df):
            raise NotRun(f"{rel} has no rows with {where}")
        return df

    def seeds(self, rel: str, metric: str = "test_ppl", **where) -> dict[int, float]:
        """``{seed: metric}`` of the rows that match ``where``; the rows must differ only by seed."""
        df = self.rows(rel, **where)
        if df["seed"].duplicated().any():
            raise ValueError(f"{rel} {where}: several rows per seed; add the column that tells them apart to where=")
        return {int(s): float(v) for s, v in zip(df["seed"], df[metric])}

    def json(self, rel: str):
        p = self.path(rel)
        if not p.is_file():
            raise NotRun(rel)
        return json.loads(p.read_text())

    def provenance(self, experiment: str) -> dict:
        rel = f"{experiment}/provenance.json"
        return self.json(rel) if self.path(rel).is_file() else {}

    def run_files(self, experiment: str, pattern: str = "*") -> list[Path]:
        files = sorted((self.root / self.profile / experiment / "runs").glob(f"{pattern}/result.json"))
        if not files:
            raise NotRun(f"{experiment}/runs/{pattern}/result.json")
        return files


#: Named series of per-seed values the numbers, claims, tables and figures share: (file, metric, where).
SERIES = {
    **{m: ("benchmark/summary.csv", "test_ppl", dict(method=m, size="small", epochs=10)) for m in METHOD_ORDER},
    "hybrid": ("gap/summary.csv", "test_ppl", dict(variant=BEST_HYBRID)),
    "hybrid_global": ("gap/summary.csv", "test_ppl", dict(variant="attn_then_pil+global")),  # one sweep
    "pure_best": ("gap/summary.csv", "test_ppl", dict(variant=BEST_PURE)),
    "teacher": ("teacher/teachers.csv", "test_ppl", {}),
    "teacher_4": ("teacher/summary.csv", "test_ppl", dict(variant="RF 4x")),
    "teacher_8": ("teacher/summary.csv", "test_ppl", dict(variant="RF 8x")),
    "teacher_16": ("teacher/summary.csv", "test_ppl", dict(variant="RF 16x")),
    "linear_4": ("first_layer/summary.csv", "test_ppl", dict(projection="random", expansion=4.0)),
    "linear_16": ("first_layer/summary.csv", "test_ppl", dict(projection="random", expansion=16.0)),
    "bipil": ("ablation_bipil/summary.csv", "test_ppl", dict(variant="Bi-PIL (concat)")),
    "single_same": ("ablation_bipil/summary.csv", "test_ppl", dict(variant="PIL, same expansion")),
    "single_wide": ("ablation_bipil/summary.csv", "test_ppl", dict(variant="PIL, 2x expansion")),
    "lam_low": ("ablation_lambda/summary.csv", "test_ppl", dict(lam=1e-9)),
    "lam_high": ("ablation_lambda/summary.csv", "test_ppl", dict(lam=0.1)),
    "exp_1": ("ablation_expansion/summary.csv", "test_ppl", dict(expansion=1)),
    "exp_8": ("ablation_expansion/summary.csv", "test_ppl", dict(expansion=8)),
    "medium_attn_only": ("benchmark/summary.csv", "test_ppl", dict(method="attn_only", size="medium")),
    "medium_hybrid": ("benchmark/summary.csv", "test_ppl", dict(method="attn_then_pil", size="medium")),
    "large_attn_only": ("benchmark/summary.csv", "test_ppl", dict(method="attn_only", size="large")),
    "large_hybrid": ("benchmark/summary.csv", "test_ppl", dict(method="attn_then_pil", size="large")),
}


def series(res: Results, name: str) -> dict[int, float]:
    rel, metric, where = SERIES[name]
    return res.seeds(rel, metric, **where)


def ffn_learned(res: Results, name: str) -> int:
    """FFN weights a series' runs learn (by AdamW or in closed form); every seed must agree."""
    rel, _, where = SERIES[name]
    rows = res.rows(rel, **where)
    counts = set(rows["params_ffn_trainable"] + rows["params_ffn_solved"])
    if len(counts) != 1:
        raise ReportError(f"{rel}: the seeds of {name} learn different numbers of FFN weights ({sorted(counts)})")
    return int(counts.pop())


def mean(res: Results, name: str) -> float:
    return statistics.fmean(series(res, name).values())


#: Runs whose per-layer fits the paper reports: (experiment, run-folder pattern).
FIT_RUNS = {
    **{m: ("benchmark", f"method={m},epochs=10,seed=*") for m in ("pil_pure", "pil_then_attn", "attn_then_pil",
                                                                   "alternating")},
    "hybrid": ("gap", f"{BEST_HYBRID},seed=*"),
    "teacher_4": ("teacher", "rf4x,seed=*"),
    "teacher_16": ("teacher", "rf16x,seed=*"),
}


def layer_r2(res: Results, name: str) -> dict[int, list[float]]:
    """``{layer: [R² of its last solve, one per run]}`` from the runs' ``result.json`` (``solves``)."""
    experiment, pattern = FIT_RUNS[name]
    out: dict[int, list[float]] = {}
    for p in res.run_files(experiment, pattern):
        last = {}
        for s in json.loads(p.read_text()).get("solves", []):
            if s.get("r2") is not None and s.get("layer") is not None:
                last[int(s["layer"])] = float(s["r2"])  # solves are recorded in order: the last sweep wins
        for layer, r2 in last.items():
            out.setdefault(layer, []).append(r2)
    if not out:
        raise NotRun(f"{experiment}/runs/{pattern}/result.json")
    return out


def bench_ratio(res: Results, key: str, smallest: bool = False) -> float:
    """A headline ratio of the single-GPU benchmark: the median over its repeats, or with ``smallest`` the
    smallest repeat (``pillm bench --combine`` writes both)."""
    return float(res.json(BENCH)[f"{key}_min" if smallest else key])


def compute_version(res: Results, rel: str) -> tuple[int, str]:
    """The compute version a results file records; files written before the field existed are version 1."""
    d = res.json(rel)
    return int(d.get("compute_version", (d.get("environment") or {}).get("compute_version", 1))), rel
