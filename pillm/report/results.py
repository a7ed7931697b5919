"""Reading results: one :class:`Experiment` per results folder, :class:`Results` for a profile,
and the aggregation and comparison helpers the tables and sentences share."""

from __future__ import annotations

import functools
import json
import math
import statistics as st
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .config import DATASET_PREFERENCE, NOT_KEYS, OUTPUT_COLUMNS, PAPER_EXPERIMENTS, REPO, SIZE_ORDER
from .files import rel, sha256_short
from .fmt import _finite, _natural_key, fmt_fixed, fmt_ppl, tex_escape
from .numbers import similar


@dataclass
class Experiment:
    """One experiment's results directory (``available`` is False when it has no results)."""

    name: str
    profile: str
    path: Path
    df: Any = None  # pandas DataFrame of summary.csv
    source: Path | None = None  # the results file the numbers come from
    provenance: dict = field(default_factory=dict)
    _runs: list | None = None
    error: str | None = None  # the results exist but could not be read
    _agg: tuple | None = None
    _json: dict = field(default_factory=dict)
    _outdated: list | None = None

    @property
    def available(self) -> bool:
        return self.source is not None and (self.df is None or len(self.df) > 0)

    @property
    def sha(self) -> str:
        return sha256_short(self.source) if self.source else ""

    @property
    def notebook(self) -> str:
        nb = self.provenance.get("notebook") or self.provenance.get("notebook_path")
        if nb:
            return str(nb)
        found = sorted((REPO / "notebooks").glob(f"*{self.name}*.ipynb"))
        return rel(found[0]) if found else f"notebooks/{self.name}.ipynb"

    @property
    def commit(self) -> str | None:
        env = self.provenance.get("environment") or {}
        return self.provenance.get("git_commit") or self.provenance.get("commit") or env.get("git_commit")

    def runs(self) -> list[dict]:
        """Every ``result.json`` under the experiment directory, sorted by path."""
        if self._runs is None:
            self._runs = []
            if self.path.is_dir():
                for p in sorted(self.path.rglob("result.json")):
                    try:
                        r = json.loads(p.read_text())
                    except (OSError, ValueError):
                        continue
                    r.setdefault("name", p.parent.name)
                    r["_path"] = p
                    self._runs.append(r)
        return self._runs

    def agg(self):
        """``aggregate(df)`` of the summary, computed once (callers build new frames from it)."""
        if self._agg is None:
            self._agg = aggregate(self.df)
        return self._agg

    @property
    def outdated(self) -> list[tuple[str, Any, Any]]:
        """``(parameter, value it ran with, value the registry gives now)`` for every parameter of this
        profile's registry entry that the recorded run (``provenance.json``) had with another value:
        the results answer an earlier configuration, and what was added since has not run."""
        from ..experiments.registry import _entry

        if self._outdated is None:
            try:
                _, now = _entry(_registry(), self.name, self.profile)
            except (ValueError, KeyError, OSError):  # not in the registry, or no such profile: nothing to compare
                now = {}
            ran = self.provenance.get("parameters") or {}
            self._outdated = [(k, ran[k], v) for k, v in now.items() if k in ran and ran[k] != v]
        return self._outdated

    @property
    def partial(self) -> dict | None:
        """``partial.json``: the summary holds only the runs that have finished (``runs``, ``finished``,
        ``missing`` run names); None when the experiment is complete."""
        summary = self.source.name if self.source is not None else "summary.csv"
        name = "partial.json" if summary in ("summary.csv", "summary.json") else f"{Path(summary).stem}.partial.json"
        return self.json(name)[0]

    @property
    def unfinished(self) -> list[dict]:
        """Every grid of the experiment whose summary holds only some of its runs (a ``*partial.json``;
        ``grid`` is None for the main summary, else the other summary's name, e.g. ``tuning``'s
        confirmation seeds in ``tuned.csv``)."""
        out = []
        for p in sorted(self.path.glob("*partial.json")) if self.path.is_dir() else []:
            d = self.json(p.name)[0]
            if isinstance(d, dict):
                stem = p.name[:-len("partial.json")].rstrip(".")
                out.append({"grid": stem or None, "runs": d.get("runs"), "finished": d.get("finished")})
        return out

    def json(self, filename: str) -> tuple[dict | list | None, Path | None]:
        """A JSON results file and its path (read once), or ``(None, None)``."""
        if filename not in self._json:
            p = self.path / filename
            try:
                self._json[filename] = (json.loads(p.read_text()), p) if p.is_file() else (None, None)
            except ValueError:
                self._json[filename] = (None, None)
        return self._json[filename]


class Results:
    """``results/<profile>/`` plus ``results/bench/``; experiments are loaded lazily."""

    def __init__(self, root: Path, profile: str):
        self.root = Path(root)
        self.profile = profile
        self._cache: dict[str, Experiment] = {}

    def exp(self, name: str) -> Experiment:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def _load(self, name: str) -> Experiment:
        import pandas as pd

        path = self.root / self.profile / name
        e = Experiment(name, self.profile, path)
        prov = path / "provenance.json"
        if prov.is_file():
            try:
                e.provenance = json.loads(prov.read_text())
            except ValueError:
                e.provenance = {}
        failed = path / "failed.json"
        if failed.is_file():  # the notebook stopped part-way: its outputs may be incomplete or stale
            e.error = f"{rel(failed)}: the notebook failed; rerun it (pillm experiments --only {name})"
            return e
        summary = path / "summary.csv"
        if summary.is_file():
            try:
                df = pd.read_csv(summary)
            except Exception as err:  # unreadable: reported as not renderable, never a crash
                e.error = f"{rel(summary)}: {type(err).__name__}: {err}"
                return e
            if len(df):
                e.df, e.source = df, summary
        elif (path / "summary.json").is_file():  # gap
            e.source = path / "summary.json"
        return e

    def missing(self, names: Iterable[str] = PAPER_EXPERIMENTS) -> list[str]:
        return [n for n in names if not self.exp(n).available]

    def partial(self, names: Iterable[str] = PAPER_EXPERIMENTS) -> list[Experiment]:
        """Available experiments with a grid whose summary holds only some of its runs."""
        return [self.exp(n) for n in names if self.exp(n).available and self.exp(n).unfinished]

    def outdated(self, names: Iterable[str] = PAPER_EXPERIMENTS) -> list[Experiment]:
        """Available experiments whose results were produced with other registry parameters."""
        return [self.exp(n) for n in names if self.exp(n).available and self.exp(n).outdated]

    def bench(self) -> list[tuple[Path, dict]]:
        out = []
        for p in sorted((self.root / "bench").glob("*.json")):
            try:
                out.append((p, json.loads(p.read_text())))
            except ValueError:
                continue
        return out


@functools.lru_cache(maxsize=1)
def _registry() -> dict:
    """pillm/experiments.yaml, read once per process."""
    from .. import experiments

    return experiments.load_registry()


def _tally(counts: dict, short=lambda v: v) -> str:
    """``{value: runs}`` of :func:`pillm.experiments.run_provenance` in a table cell: the value alone
    when all runs agree, else ``value (runs)`` for each; ``--`` when none was recorded."""
    counts = {short(k): n for k, n in counts.items() if k not in ("None", "")}
    if not counts:
        return "--"
    return tex_escape("; ".join(k if len(counts) == 1 else f"{k} ({n})" for k, n in counts.items()))


def _param_tex(value) -> str:
    """A registry parameter in prose: lists as ``[a, b]`` without quotes."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(tex_escape(str(v)) for v in value) + "]"
    return tex_escape(str(value))


def _flag(column):
    """A boolean column of a CSV as read back by pandas (bools, or the strings "True"/"False")."""
    return column.astype(str).str.lower().isin(("true", "1"))


def compress_runs(names: list[str]) -> str:
    """Run names with their seeds folded: ``a,seed=0``, ``a,seed=1`` → ``a (seeds 0, 1)``."""
    groups: dict[str, list[str]] = {}
    for n in names:
        head, sep, seed = n.rpartition(",seed=")
        groups.setdefault(head if sep else n, []).append(seed if sep else "")
    parts = []
    for head, seeds in groups.items():
        seeds = [x for x in seeds if x]
        parts.append(head + (f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})" if seeds else ""))
    return "; ".join(parts)


def beyond_seed_spread(a: dict, b: dict, col: str = "test_ppl") -> bool:
    """Whether two aggregated rows differ by more than their error bars (mean ± std over seeds) together;
    with one seed (no std), whether they differ by more than the "similar" tolerance."""
    ma, mb = float(a[col]), float(b[col])
    sa, sb = a.get(f"{col}_std"), b.get(f"{col}_std")
    if _finite(sa) and _finite(sb):
        return abs(ma - mb) > float(sa) + float(sb)
    return not similar(ma, mb)


def and_join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (empty for no items)."""
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def spread_verdict(a: dict, b: dict, col: str = "test_ppl") -> str:
    """``within`` the seed spread of ``b`` (:func:`beyond_seed_spread`), else ``better`` or ``worse``
    (lower perplexity is better)."""
    if not beyond_seed_spread(a, b, col):
        return "within"
    return "better" if float(a[col]) < float(b[col]) else "worse"


def rows_where(df, where: dict):
    """The rows of ``df`` whose column ``k`` equals ``v`` for every item of ``where``, compared as text
    (summary.csv gives back numbers and labels alike)."""
    for k, v in where.items():
        df = df[df[k].astype(str) == str(v)]
    return df


def _main_configuration(e: "Experiment") -> dict:
    """The key values (size, budget, dataset) of an experiment's main configuration: its primary slice by
    method (:func:`primary_slice`)."""
    agg, keys = e.agg()
    return primary_slice(agg, keys, "method")[1]


def _runs_where(e: "Experiment", where: dict) -> list[dict]:
    """The ``result.json`` of the runs whose summary rows match ``where`` (:func:`rows_where`)."""
    names = set(rows_where(e.df, where)["name"])
    return [r for r in e.runs() if r.get("name") in names]


def paired_differences(df, key: str, a: str, b: str, where: dict, col: str = "test_ppl") -> list[float]:
    """``col`` of the run with ``key == a`` minus that of the run with ``key == b``, per seed, among the
    runs matching ``where``; seeds that lack either run are left out."""
    if df is None or not {key, "seed", col} <= set(df.columns):
        return []
    rows = rows_where(df, where)
    by = {kind: rows[rows[key].astype(str) == kind].set_index("seed")[col] for kind in (a, b)}
    seeds = sorted(set(by[a].index) & set(by[b].index))
    return [float(by[a][sd]) - float(by[b][sd]) for sd in seeds]


def _signed(x: float) -> str:
    """A difference of perplexities with its sign: two decimals below 100, whole numbers above."""
    if round(abs(x), 2) == 0:  # no sign on a difference that rounds to nothing
        return fmt_fixed(0.0, 2)
    return ("+" if x >= 0 else "-") + (fmt_fixed(abs(x), 2) if abs(x) < 100 else fmt_ppl(abs(x)))


def _paired_text(diffs: list[float]) -> tuple[str | None, str | None]:
    """Per-seed differences as text: their mean with its sign, and on how many seeds the first is lower
    ("2 of 3"); (None, None) with fewer than two seeds, where a difference is the two numbers themselves."""
    if len(diffs) < 2:
        return None, None
    return _signed(st.mean(diffs)), f"{sum(d < 0 for d in diffs)} of {len(diffs)}"


def add_paired(rep, e, prefix: str, diffs: list[float], a: str, b: str, at: str = "") -> float | None:
    """Per-seed differences test_ppl(``a``) − test_ppl(``b``) (:func:`_paired_text`) as the macros
    ``<prefix>PairedDiff`` and ``<prefix>PairedLower`` of ``rep``, sourced from ``e``; ``at`` ends both notes.
    Returns their mean; None (no macro) with fewer than two seeds."""
    diff, lower = _paired_text(diffs)
    if diff is None:
        return None
    rep.add(f"{prefix}PairedDiff", diff, e, f"mean over seeds of test_ppl({a}) - test_ppl({b}){at}", st.mean(diffs))
    rep.add(f"{prefix}PairedLower", lower, e, f"seeds where {a} has the lower test_ppl than {b}{at}")
    return st.mean(diffs)


def log_gap_share(worse: float, better: float, x: float) -> float | None:
    """The share, in percent, of the log-perplexity gap from ``worse`` to ``better`` that perplexity
    ``x`` closes: ``100·(ln worse − ln x) / (ln worse − ln better)``; None when there is no gap."""
    lw, lb = math.log(worse), math.log(better)
    return None if abs(lw - lb) <= 1e-12 else 100 * (lw - math.log(x)) / (lw - lb)


def gap_recovered_pct(ppl: dict, method: str) -> float | None:
    """How much of the log-perplexity gap between attention only and the baseline ``method`` closes,
    in percent (:func:`log_gap_share`)."""
    return log_gap_share(ppl["attn_only"], ppl["baseline"], ppl[method])


def concurrency(e: "Experiment") -> int:
    """Most runs that shared one machine while a run of ``e`` was timed (1: timed alone).

    From the summary's ``concurrent_runs`` column, else from the runs' ``result.json``."""
    if e.df is not None and "concurrent_runs" in e.df.columns:
        vals = [v for v in e.df["concurrent_runs"].tolist() if _finite(v)]
        if vals:
            return int(max(vals))
    vals = [(r.get("environment") or {}).get("concurrent_runs", 1) for r in e.runs()]
    return int(max([1] + [v for v in vals if _finite(v)]))


def aggregate(df, metrics: Iterable[str] | None = None):
    """Mean, std and count over seeds: grouped by every column but seed/name/experiment/outputs.

    Returns ``(agg, keys)``; ``agg`` has the key columns, ``<m>`` (mean), ``<m>_std`` and ``n``.
    """
    import pandas as pd

    metrics = [c for c in (metrics or df.columns) if c in OUTPUT_COLUMNS and c in df.columns]
    keys = [c for c in df.columns if c not in OUTPUT_COLUMNS and c not in NOT_KEYS]
    d = df.copy()
    for m in metrics:
        d[m] = pd.to_numeric(d[m], errors="coerce")
    if not keys:
        d["_all"] = "all"
        keys = ["_all"]
    for k in keys:
        d[k] = d[k].where(d[k].notna(), "")
    g = d.groupby(keys, sort=False, dropna=False)
    mean = g[metrics].mean()
    std = g[metrics].std(ddof=1).add_suffix("_std")
    n = g.size().rename("n")
    parts = [mean, std, n]
    if "concurrent_runs" in metrics:  # timings of a row are as contended as its most shared run
        parts.append(g["concurrent_runs"].max().rename("concurrent_runs_max"))
    agg = pd.concat(parts, axis=1).reset_index()
    agg = agg.iloc[sorted(range(len(agg)), key=lambda i: tuple(_natural_key(agg.iloc[i][k]) for k in keys))]
    return agg.reset_index(drop=True), [k for k in keys if k != "_all"]


def varying(agg, keys: list[str]) -> list[str]:
    return [k for k in keys if agg[k].nunique(dropna=False) > 1]


def dependent_keys(agg, main: list[str], keys: list[str]) -> list[str]:
    """Keys that vary but are determined by ``main`` (e.g. ``expansion`` and ``bipil`` of a ``variant``)."""
    main = [m for m in main if m in agg.columns]
    if not main:
        return []
    g = agg.groupby(main, sort=False)
    return [k for k in keys if k not in main and agg[k].nunique() > 1 and int(g[k].nunique().max()) <= 1]


def primary_slice(agg, keys: list[str], main: str | list[str]):
    """Rows of the most representative combination of the keys other than ``main`` (and the keys
    that vary together with ``main``, see :func:`dependent_keys`).

    Preference: dataset in :data:`DATASET_PREFERENCE` order, then the combination with the most
    rows (e.g. all eight methods rather than a scaling subset), then larger numeric values (e.g. the
    main epoch budget), then the larger model size.
    """
    main = [main] if isinstance(main, str) else list(main)
    main = main + [k for k in dependent_keys(agg, main, keys) if k not in main]
    others = [k for k in keys if k not in main]
    if not others:
        return agg, {}
    combos = agg.groupby(others, sort=False).size().reset_index(name="_rows")

    def score(row):
        d = str(row.get("dataset", ""))
        s = str(row.get("size", ""))
        nums = []
        for k in others:
            try:
                nums.append(float(row[k]))
            except (TypeError, ValueError):
                pass
        return (-(DATASET_PREFERENCE.index(d) if d in DATASET_PREFERENCE else len(DATASET_PREFERENCE)),
                row["_rows"], tuple(nums), SIZE_ORDER.index(s) if s in SIZE_ORDER else -1)

    best = max((r for _, r in combos.iterrows()), key=score)
    sel = {k: best[k] for k in others}
    mask = None
    for k, v in sel.items():
        m = agg[k] == v
        mask = m if mask is None else mask & m
    return agg[mask].reset_index(drop=True), sel
