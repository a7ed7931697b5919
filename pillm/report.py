"""The paper build: results → tables, numbers, figures and result-dependent prose → PDF, arXiv bundle.

    pillm paper --profile paper     # tables/, figures/, paper/generated/ → paper/build/main.pdf
    pillm paper --profile smoke     # everything under paper/build/smoke/ (watermarked "SMOKE RESULTS")
    pillm arxiv --profile paper     # paper/build/arxiv.tar.gz, extracted and compiled once as a check

What is read (written by the experiment notebooks; any part may be missing)
--------------------------------------------------------------------------
``results/<profile>/<experiment>/summary.csv``      one row per run (see :data:`OUTPUT_COLUMNS`;
                                                    every other column but ``seed``/``name`` is a
                                                    varied parameter and a grouping key)
``results/<profile>/<experiment>/provenance.json``  notebook, git commit, environment, wall seconds
``results/<profile>/<experiment>/**/result.json``   per run: ``curve``, ``solves`` (per-layer κ …)
``results/<profile>/tinystories/samples.json``      generation samples (list or dict, see
                                                    :func:`_samples`)
``results/<profile>/complexity/fit.json``           ``{"x": col, "crossover": v, "fits": {series:
                                                    {"exponent": b, "coefficient": a}}}`` (looser
                                                    shapes are accepted: any numeric leaf whose key
                                                    contains "crossover", "exponent" or "slope")
``results/<profile>/gap/summary.json``              baseline/attn-only/hybrid/pure-PIL/KN5 test PPL
``results/bench/*.json``                            gram_rate_ratio, pil_phase_over_baseline_train,
                                                    pil_phase_speedup_2gpu (GPU micro-benchmarks)

What is written
---------------
* ``tables/<name>.tex``   complete ``table`` floats (booktabs; mean ± std over seeds, grouped by
  every column but the seed; the best mean per column in bold where lower/higher is better);
* ``tables/numbers.tex``  one ``\\newcommand`` per number the text uses, each preceded by a comment
  naming the results file (and its hash) it was computed from. A macro is emitted only when a
  template used it (:class:`Numbers` records the use), so every macro is used;
* ``figures/<name>.pdf`` (seaborn) and ``figures/<name>.tex`` (the ``figure`` float);
* ``generated/*.tex``     prose from ``paper/templates/*.tex.j2`` whose wording depends on the
  results (e.g. "does not match the baseline" vs "is competitive with") by the rules in
  :func:`verdict`.

For profile ``paper`` the outputs go to the committed ``tables/``, ``figures/`` and
``paper/generated/``; any other profile writes ``paper/build/<profile>/{tables,figures,generated}``
so that a smoke build never overwrites the paper's files. The paper sources and the generated files
are staged in ``<build>/src`` and compiled there by latexmk into ``<build>`` (``paper/build/main.pdf``
for ``paper``, ``paper/build/<profile>/main.pdf`` otherwise).

Missing results. Every table and figure has a stand-in float with the same label whose body says
the result is not available (not run in this profile); prose templates test
``n.has(...)`` before using a number and say the same; no placeholder number is ever printed.

Every caption names the notebook that made the result, the profile and the first 8 hex digits of
the sha256 of its results file, and links to the notebook when a repository URL is configured
(``PILLM_REPO_URL`` or ``[tool.pillm] repo_url`` in ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics as st
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "paper"
TEMPLATES = PAPER / "templates"

#: Experiments the paper uses (registry keys of :mod:`pillm.experiments`).
PAPER_EXPERIMENTS = ("benchmark", "lambada", "ablation_bipil", "ablation_lambda", "ablation_expansion",
                     "ablation_fusion", "training_strategy", "tinystories", "complexity", "training_curves",
                     "gap", "ngram", "tuning", "teacher", "adaptation", "protocol", "first_layer")
#: Columns of summary.csv that are outcomes, not parameters (never grouping keys).
OUTPUT_COLUMNS = ("valid_ppl", "test_ppl", "test_acc", "valid_acc", "train_s", "pil_s", "total_s",
                  "optimizer_steps", "params_embedding", "params_attention", "params_norm",
                  "params_ffn_trainable", "params_ffn_solved", "params_ffn_frozen_random", "params_head_solved",
                  "params_total", "max_cond", "any_fallback", "acc", "word_ppl", "oov_rate", "wall_s", "n_features",
                  "lambada_acc", "lambada_word_ppl", "lambada_oov_rate", "concurrent_runs",
                  # adaptation: measured per run (the pretrained model differs per seed)
                  "wiki_test_ppl", "adapt_s", "trained_params", "before_new_valid_ppl", "before_new_test_ppl",
                  "before_wiki_test_ppl",
                  # first_layer: the checkpoint's own perplexities, per seed
                  "before_valid_ppl", "before_test_ppl")
NOT_KEYS = ("seed", "name", "experiment")
LOWER_BETTER = {"valid_ppl", "test_ppl", "word_ppl", "total_s", "train_s", "pil_s"}
HIGHER_BETTER = {"test_acc", "valid_acc", "acc"}

#: first_layer's projection kinds, controls first (pillm.firstlayer.KINDS; not imported: it needs torch)
PROJECTION_ORDER = ("same", "random", "landmarks", "whitened", "pca", "autoencoder", "mixed")
METHOD_ORDER = ("baseline", "attn_only", "lora", "rf_adamw", "pil_pure", "pil_then_attn", "attn_then_pil",
                "alternating")
PIL_METHODS = ("pil_pure", "pil_then_attn", "attn_then_pil", "alternating")
HYBRID_METHODS = ("pil_then_attn", "attn_then_pil", "alternating")
METHOD_TEX = {"baseline": "Baseline (MLP FFN)", "attn_only": "Attention only", "lora": "LoRA FFN",
              "rf_adamw": "RF + AdamW readout", "pil_pure": "Pure PIL", "pil_then_attn": r"PIL$\rightarrow$attention",
              "attn_then_pil": r"attention$\rightarrow$PIL", "alternating": "Alternating"}
METHOD_PLAIN = {"baseline": "Baseline (MLP)", "attn_only": "Attention only", "lora": "LoRA FFN",
                "rf_adamw": "RF + AdamW", "pil_pure": "Pure PIL", "pil_then_attn": "PIL→attn",
                "attn_then_pil": "attn→PIL", "alternating": "Alternating"}
DATASET_TEX = {"wikitext2": "WikiText-2", "ptb": "PTB", "tinystories": "TinyStories", "lambada": "LAMBADA"}
DATASET_PREFERENCE = ("wikitext2", "ptb", "tinystories")
SIZE_ORDER = ("tiny", "small", "medium", "large")
TARGET_TEX = {"local": "local", "global": "global", "next_embedding": "next-embedding", "teacher": "teacher",
              "zero": "zero"}

#: Wording rules (used by :func:`verdict`): within ``COMPETITIVE_TOL`` of the reference counts as
#: "competitive"; within ``PAR_TOL`` as "on par"; ablation differences below ``SIMILAR_TOL`` are
#: called negligible.
COMPETITIVE_TOL = 0.05
PAR_TOL = 0.005
SIMILAR_TOL = 0.01
#: Issue 7's goal for the best hybrid: test perplexity at most this multiple of the baseline's.
GAP_GOAL = 1.05
#: Letters that name the n-th item of a list in macro names (``TeacherFitAPPL``, ``EtaTopBSolves``).
_TAGS = string.ascii_uppercase
#: The complexity fit locates the accumulation/solve crossover only when it explains the timings.
FIT_MIN_R2 = 0.9
#: LAMBADA accuracies below this are called low for every method.
LAMBADA_LOW = 0.05

FIGURES = ("curves", "lambda", "expansion", "complexity", "bench", "kappa", "contribution", "sizes")
TABLE_TITLES = {
    "ngram": "Kneser--Ney $n$-gram baseline",
    "benchmark": "Main results", "lambada": "LAMBADA", "ablation_bipil": "Bi-PIL versus a single projection",
    "ablation_lambda": r"Sensitivity to the relative ridge $\lambda$", "ablation_expansion": "Random-feature width",
    "ablation_fusion": "Fusion of the two Bi-PIL projections", "training_strategy": "Targets and order of the phases",
    "tinystories": "TinyStories", "tuning": "Learning rate and dropout chosen on validation",
    "tuned": "Every method at its own chosen setting",
    "gap": "Closing the gap: every variant of the gap experiment",
    "teacher": "Trained FFNs refitted by random features",
    "adaptation": "Adaptation to a new domain",
    "first_layer": "Data-dependent first layers, re-solved in closed form",
    "protocol": "Test perplexity with sliding windows",
    "complexity_fit": "Fit of the measured time of the closed-form phase",
    "models": "Model configurations", "datasets": "Corpora and token counts",
    "hparams": "Training hyper-parameters of the main benchmark", "hardware": "Hardware and provenance"}
FIGURE_SOURCE = {"curves": "training_curves", "lambda": "ablation_lambda", "expansion": "ablation_expansion",
                 "complexity": "complexity", "bench": "bench", "kappa": "benchmark", "contribution": "benchmark",
                 "sizes": "benchmark"}
FIGURE_TITLES = {"bench": "Gram accumulation rate and solve time on the GPU",
                 "curves": "Training curves", "lambda": r"Sensitivity to $\lambda$ and $\kappa$",
                 "expansion": "Random-feature width", "complexity": "Scaling of the closed-form phase",
                 "kappa": r"Condition number $\kappa$ per layer", "contribution": "What the FFN layers contribute",
                 "sizes": "Test perplexity against model size"}


class ReportError(RuntimeError):
    """The paper could not be built; the message says why."""


# ------------------------------------------------------------------------------------------------
# Small helpers: hashing, escaping, number formatting
# ------------------------------------------------------------------------------------------------


def sha256_short(path: Path, n: int = 8) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:n]


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: Any) -> str:
    """Escape LaTeX specials; non-ASCII punctuation is mapped, other non-ASCII dropped (pdflatex)."""
    s = str(text)
    s = (s.replace("\u2019", "'").replace("\u2018", "`").replace("\u201c", "``").replace("\u201d", "''")
         .replace("\u2014", "---").replace("\u2013", "--").replace("\u2026", "..."))
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)
    out = out.replace("<", r"\textless{}").replace(">", r"\textgreater{}")
    return "".join(ch for ch in out if ord(ch) < 128)


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def group_digits(n: int) -> str:
    s = f"{abs(int(n)):,}".replace(",", r"\,")
    return ("-" if n < 0 else "") + s


def fmt_fixed(x: float, digits: int) -> str:
    s = f"{x:.{digits}f}"
    if abs(x) >= 10000:
        whole, _, frac = s.partition(".")
        s = group_digits(int(whole)) + ("." + frac if frac else "")
    return s


def fmt_ppl(x: float) -> str:
    if x >= 1000:
        return group_digits(round(x))
    return fmt_fixed(x, 1 if x >= 10 else 2)


def fmt_pct(x: float) -> str:
    return fmt_fixed(x, 1)


def fmt_ratio(x: float) -> str:
    return fmt_fixed(x, 2 if x < 10 else 1)


def fmt_seconds(x: float) -> str:
    if x >= 100:
        return group_digits(round(x))
    return fmt_fixed(x, 1 if x >= 1 else 2)


def fmt_sci(x: float, digits: int = 1) -> str:
    if not _finite(x):
        return r"\ensuremath{\infty}"
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    if -2 <= e <= 3:
        return fmt_fixed(x, max(0, digits - e)) if e < 1 else fmt_fixed(x, 0 if e >= 2 else 1)
    m = x / 10 ** e
    if round(m, digits) >= 10:
        m, e = m / 10, e + 1
    if abs(round(m, digits) - 1) < 1e-12:
        return rf"\ensuremath{{10^{{{e}}}}}"
    return rf"\ensuremath{{{m:.{digits}f}\times 10^{{{e}}}}}"


def fmt_count(x: float) -> str:
    return group_digits(round(x))


def fmt_params(x: float) -> str:
    if x >= 1e6:
        return fmt_fixed(x / 1e6, 2) + r"\,M"
    if x >= 1e4:
        return fmt_fixed(x / 1e3, 1) + r"\,k"
    return group_digits(round(x))


def fmt_plain(x: Any) -> str:
    """A parameter value in a table cell (λ in powers of ten, floats trimmed)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    if isinstance(x, float):
        return fmt_sci(x) if (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:g}"
    return tex_escape(x)


def fmt_pow10(x: float) -> str:
    """λ-like values: ``10^{k}`` for powers of ten, scientific notation otherwise."""
    if _finite(x) and x > 0:
        k = math.log10(x)
        if abs(k - round(k)) < 1e-9:
            return rf"\ensuremath{{10^{{{int(round(k))}}}}}"
        return rf"\ensuremath{{{x / 10 ** math.floor(k):.1f}\times 10^{{{int(math.floor(k))}}}}}"
    return fmt_plain(x)


def method_tex(m: Any) -> str:
    return METHOD_TEX.get(str(m), tex_escape(m))


#: How a ``gap`` variant's "+modifier" reads in prose (its table keeps the registry's label).
VARIANT_MOD_TEX = {"resolve": "a final re-solve", "head": "a solved output head", "global": "global targets",
                   "next_embedding": "next-embedding targets", "landmarks": "landmark keys",
                   "ppmi": "PPMI embeddings and a solved output head"}


def variant_tex(name: Any) -> str:
    """A registry variant label ("attn_then_pil+global") in words ("attention→PIL with global targets");
    labels of another form are escaped as they are."""
    base, *mods = str(name).split("+")
    if base not in METHOD_TEX or any(m not in VARIANT_MOD_TEX for m in mods):
        return tex_escape(name)
    return METHOD_TEX[base] + (" with " + " and ".join(VARIANT_MOD_TEX[m] for m in mods) if mods else "")


def dataset_tex(d: Any) -> str:
    return DATASET_TEX.get(str(d), tex_escape(d))


def _natural_key(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        s = str(v)
        if s in METHOD_ORDER:
            return (1, METHOD_ORDER.index(s), s)
        if s in SIZE_ORDER:
            return (1, SIZE_ORDER.index(s), s)
        if s in PROJECTION_ORDER:
            return (1, PROJECTION_ORDER.index(s), s)
        # labels with numbers in them sort by the numbers ("RF 4x" before "RF 16x")
        return (2, 0, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s)))


def repo_url() -> str | None:
    url = os.environ.get("PILLM_REPO_URL", "").strip()
    if url:
        return url.rstrip("/")
    try:
        import tomllib

        data = tomllib.loads((REPO / "pyproject.toml").read_text())
        url = data.get("tool", {}).get("pillm", {}).get("repo_url")
        return str(url).rstrip("/") if url else None
    except (OSError, ValueError):
        return None


def rel(path: Path) -> str:
    """A path relative to the repository when inside it (stable across machines)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


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
        from . import experiments

        if self._outdated is None:
            try:
                _, now = experiments._entry(_registry(), self.name, self.profile)
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
    from . import experiments

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
    """Whether two aggregated rows differ by more than their error bars (mean ± std over seeds)
    together, and by more than the "similar" tolerance; with one seed only the tolerance counts."""
    ma, mb = float(a[col]), float(b[col])
    sa, sb = a.get(f"{col}_std"), b.get(f"{col}_std")
    if similar(ma, mb):
        return False
    if _finite(sa) and _finite(sb):
        return abs(ma - mb) > float(sa) + float(sb)
    return True


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
    agg = pd.concat([mean, std, n], axis=1).reset_index()
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


# ------------------------------------------------------------------------------------------------
# Numbers (macros) and wording rules
# ------------------------------------------------------------------------------------------------


@dataclass
class Number:
    name: str
    text: str
    source: Path
    note: str
    value: Any = None


class Numbers:
    """Named numbers computed from results files; templates read them as ``n.Name``.

    Reading ``n.Name`` returns ``\\Name{}`` and marks the macro used; only used macros are written
    to ``numbers.tex``. A name that was not computed (its results are missing) is an error in the
    template (StrictUndefined), so templates must guard with ``n.has('Name', ...)``.
    """

    _NAME = re.compile(r"^[A-Za-z]+$")

    def __init__(self):
        self._defs: dict[str, Number] = {}
        self.used: set[str] = set()

    def add(self, name: str, text: str, source: Path, note: str, value: Any = None) -> None:
        if not self._NAME.match(name):
            raise ValueError(f"macro name {name!r} must be letters only")
        if name in self._defs:
            raise ValueError(f"macro {name!r} defined twice")
        self._defs[name] = Number(name, text, Path(source), note, value)

    def has(self, *names: str) -> bool:
        return all(n in self._defs for n in names)

    def value(self, name: str):
        return self._defs[name].value

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._defs:
            raise AttributeError(f"number {name!r} is not available")
        self.used.add(name)
        return "\\" + name + "{}"

    def __getitem__(self, name: str) -> str:
        try:
            return self.__getattr__(name)
        except AttributeError as e:
            raise KeyError(name) from e

    def defined(self) -> dict[str, Number]:
        return dict(self._defs)

    def used_numbers(self) -> list[Number]:
        return [self._defs[k] for k in sorted(self.used)]


def verdict(x: float, ref: float, lower_is_better: bool = True) -> str:
    """Wording rule of the paper: compare a result ``x`` with a reference ``ref``.

    ``better`` (more than :data:`PAR_TOL` better), ``on_par`` (within ``PAR_TOL``), ``competitive``
    (worse by at most :data:`COMPETITIVE_TOL`, relative), ``worse`` otherwise.
    """
    r = x / ref if lower_is_better else ref / x if x else math.inf
    if r < 1 - PAR_TOL:
        return "better"
    if r <= 1 + PAR_TOL:
        return "on_par"
    if r <= 1 + COMPETITIVE_TOL:
        return "competitive"
    return "worse"


def similar(a: float, b: float) -> bool:
    return abs(a - b) <= SIMILAR_TOL * min(abs(a), abs(b))


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


@dataclass
class Col:
    key: str  # column of the aggregate
    header: str
    fmt: Callable[[float], str] = fmt_ppl
    better: str | None = None  # "lower" / "higher" → best in bold
    std: bool = True
    zero_dash: bool = False  # print "--" for an exact zero (e.g. no closed-form phase)


@dataclass
class TableSpec:
    name: str
    caption: str
    label: str
    header: list[str]
    rows: list[list[str]]
    blocks: list[tuple[str, int]] = field(default_factory=list)  # (block title, first row index)
    align: str = ""
    note: str = ""
    sources: list = field(default_factory=list)
    star: bool = False

    @property
    def ncols(self) -> int:
        return len(self.header)

    def body(self) -> list[tuple[str, Any]]:
        """``("block", title)`` and ``("row", cells)`` items in order (for the template)."""
        starts = {i: title for title, i in self.blocks}
        out = []
        for i, row in enumerate(self.rows):
            if i in starts:
                out.append(("block", starts[i]))
            out.append(("row", row))
        return out


def metric_cells(rows, cols: list[Col]) -> list[list[str]]:
    """Formatted metric cells (mean, ± std when several seeds) with the best mean in bold."""
    best = {}
    for c in cols:
        vals = [r.get(c.key) for r in rows if _finite(r.get(c.key))]
        if c.better and len(vals) > 1:
            best[c.key] = min(vals) if c.better == "lower" else max(vals)
    out = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c.key)
            if not _finite(v) or (c.zero_dash and float(v) == 0):
                cells.append("--")
                continue
            s = c.fmt(float(v))
            if c.key in best and float(v) == best[c.key]:
                s = r"\textbf{" + s + "}"
            sd = r.get(c.key + "_std")
            if c.std and _finite(sd) and r.get("n", 1) > 1:
                s += r"{\scriptsize\,$\pm$\," + c.fmt(float(sd)) + "}"
            cells.append(s)
        out.append(cells)
    return out


def params_trained(r) -> float:
    """Parameters updated by an optimizer: none for a run without optimizer steps."""
    steps = r.get("optimizer_steps")
    if _finite(steps) and float(steps) == 0:
        return 0.0
    parts = ["params_embedding", "params_attention", "params_norm", "params_ffn_trainable"]
    vals = [r.get(p) for p in parts]
    return float(sum(float(v) for v in vals if _finite(v))) if any(_finite(v) for v in vals) else math.nan


def params_solved(r) -> float:
    vals = [r.get(p) for p in ("params_ffn_solved", "params_head_solved")]
    return float(sum(float(v) for v in vals if _finite(v))) if any(_finite(v) for v in vals) else math.nan


def _epochs_text(v: Any) -> str:
    """``5 epochs``, ``1 epoch``."""
    n = int(float(v))
    return f"{n} epoch" + ("" if n == 1 else "s")


def _searched(result: dict) -> list[dict]:
    """A run's solves whose step size η was searched on validation (local/global/next-embedding targets)."""
    return [s for s in result.get("solves", []) if s.get("search") and "eta" in s]


def _eta_at_top(solve: dict) -> bool:
    """Whether a searched solve chose the grid's largest η: the grid, not the data, limited the step."""
    return bool(solve.get("eta_at_edge")) and solve["eta"] >= max(x["eta"] for x in solve["search"])


def _records(agg) -> list[dict]:
    recs = agg.to_dict("records")
    for r in recs:
        r["params_trained"] = params_trained(r)
        r["params_solved"] = params_solved(r)
    return recs


def key_cells(r: dict, keys: list[str]) -> list[str]:
    out = []
    for k in keys:
        v = r[k]
        if k == "method":
            out.append(method_tex(v))
        elif k == "dataset":
            out.append(dataset_tex(v))
        elif k == "target":
            out.append(TARGET_TEX.get(str(v), tex_escape(v)))
        elif k == "lam":
            out.append(fmt_pow10(float(v)) if _finite(v) else fmt_plain(v))
        elif k == "variant" and isinstance(v, str):
            out.append(variant_tex(v))  # registry labels ("attn_then_pil+global") in words; others as they are
        else:
            out.append(fmt_plain(v))
    return out


KEY_HEADERS = {"method": "Method", "dataset": "Dataset", "size": "Size", "lam": r"$\lambda$", "epochs": "Epochs",
               "max_train_tokens": "Train tokens", "bipil": "Bi-PIL", "lambada_n": "Passages",
               "expansion": "Expansion", "fusion": "Fusion", "variant": "Variant", "target": "Target",
               "domain": "New domain", "how": "Adapted by"}

PPL_COLS = [Col("test_ppl", r"Test PPL $\downarrow$", fmt_ppl, "lower"),
            Col("valid_ppl", r"Valid PPL $\downarrow$", fmt_ppl, "lower")]
ACC_COL = Col("test_acc", r"Test acc.\ (\%) $\uparrow$", lambda x: fmt_pct(100 * x), "higher")
COND_COL = Col("max_cond", r"max $\kappa$", fmt_sci, None, std=False)
PIL_S_COL = Col("pil_s", "PIL (s)", fmt_seconds, None, zero_dash=True)


def _rf_features(e: Experiment) -> int | None:
    """Random features per layer of the benchmark's ``rf_adamw`` runs: its frozen random first layers
    hold ``n_layer · n_embd · D`` weights."""
    for r in e.runs():
        if r.get("method") == "rf_adamw":
            mc, frozen = r.get("model_config") or {}, (r.get("params") or {}).get("ffn_frozen_random")
            if frozen and mc.get("n_layer") and mc.get("n_embd"):
                return int(frozen) // (int(mc["n_layer"]) * int(mc["n_embd"]))
    return None


def generic_table(e: Experiment, name: str, caption: str, main_keys: list[str], cols: list[Col],
                  label: str | None = None, df=None, hide: tuple[str, ...] = ("bipil",),
                  blocks_by: tuple[str, ...] = ("dataset", "size", "epochs")) -> TableSpec:
    """One row per parameter combination; constant keys go into the caption, blocks by ``blocks_by``
    (dataset, size and epoch budget); columns in ``hide`` are not shown when they vary with the main keys."""
    agg, keys = e.agg() if df is None else aggregate(df)
    cols = [c for c in cols if c.key in agg.columns or c.key.startswith("params_")]
    vary = varying(agg, keys)
    block_keys = [k for k in blocks_by if k in vary and k not in main_keys]
    dep = dependent_keys(agg, main_keys, keys)
    show = [k for k in main_keys if k in keys] + [k for k in vary if k not in main_keys and k not in block_keys
                                                  and not (k in hide and k in dep)]
    const = [k for k in keys if k not in vary and k not in main_keys]
    recs = _records(agg)
    if block_keys:
        def bkey_sort(r):
            out = []
            for k in block_keys:
                nk = _natural_key(r[k])
                out.append((nk[0], -nk[1], nk[2]) if k == "epochs" and nk[0] == 0 else nk)
            return tuple(out)
        recs.sort(key=bkey_sort)
    rows, blocks = [], []
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault(tuple(r[k] for k in block_keys), []).append(r)
    for bkey, grecs in groups.items():
        if block_keys:
            parts = [(c if k in ("dataset", "size") else f"{KEY_HEADERS.get(k, tex_escape(k)).lower()}: {c}")
                     for k, c in zip(block_keys, key_cells(dict(zip(block_keys, bkey)), block_keys))]
            blocks.append((", ".join(parts), len(rows)))
        for r, cells in zip(grecs, metric_cells(grecs, cols)):
            rows.append(key_cells(r, show) + cells)
    consts = [f"{KEY_HEADERS.get(k, tex_escape(k))}: {key_cells(recs[0], [k])[0]}" for k in const
              if str(recs[0][k]) != ""]
    seeds = sorted({int(r["n"]) for r in recs})
    cap = caption.rstrip(".") + "."
    if consts:
        cap += " " + "; ".join(consts) + "."
    several = max(seeds) > 1
    pm = r" $\pm$ std" if several else ""
    span = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}--{seeds[-1]}"
    cap += f" Mean{pm} over {span} seed{'s' if several else ''} per row."
    header = [KEY_HEADERS.get(k, tex_escape(k)) for k in show] + [c.header for c in cols]
    return TableSpec(name=name, caption=cap, label=label or f"tab:{name}", header=header, rows=rows,
                     blocks=blocks, align="l" * len(show) + "r" * len(cols), sources=[e])


# ------------------------------------------------------------------------------------------------
# The report: numbers, claims, tables, figures
# ------------------------------------------------------------------------------------------------


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
        from .model import PRESETS

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
        from .experiments import run_provenance  # experiments imports this module: import when used

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


def _lambada_scores(e: Experiment) -> Experiment:
    """LAMBADA scores: ``acc``/``word_ppl``/``oov_rate`` columns of summary.csv, or the notebook's
    ``lambada.csv`` (``lambada_acc`` …), which then becomes the source of the numbers."""
    import pandas as pd

    names = {"lambada_acc": "acc", "lambada_word_ppl": "word_ppl", "lambada_oov_rate": "oov_rate"}
    if e.df is not None and "acc" in e.df.columns:
        return e
    if e.df is not None and "lambada_acc" in e.df.columns:
        return Experiment(e.name, e.profile, e.path, e.df.rename(columns=names), e.source, e.provenance)
    p = e.path / "lambada.csv"
    if p.is_file():
        df = pd.read_csv(p).rename(columns=names)
        if len(df) and "acc" in df.columns:
            return Experiment(e.name, e.profile, e.path, df, p, e.provenance)
    # scores recorded in each run's result.json ("lambada": {acc, word_ppl, oov_rate, ...})
    rows = [{"method": r.get("method"), "seed": r.get("seed"), "size": r.get("size"), "dataset": r.get("dataset"),
             **{k: (r["lambada"] or {}).get(k) for k in ("acc", "word_ppl", "oov_rate")}}
            for r in (e.runs() if e.source is not None else []) if isinstance(r.get("lambada"), dict)]
    if rows:
        return Experiment(e.name, e.profile, e.path, pd.DataFrame(rows), e.source, e.provenance)
    return e


def _samples(e: Experiment) -> list[dict] | None:
    """Normalise samples.json: a list of {method, prompt, text} or {method: [text | {prompt, text}]}."""
    data, _ = e.json("samples.json")
    if data is None:  # samples recorded in each run's result.json
        data = [{"method": r.get("method"), "run_seed": r.get("seed", 0), **s} for r in e.runs()
                for s in (r.get("samples") or []) if isinstance(s, dict)]
        if not data:
            return None
    out = []
    items = data.get("samples", data) if isinstance(data, dict) else data
    if isinstance(items, dict):
        for m, v in items.items():
            for s in (v if isinstance(v, list) else [v]):
                out.append({"method": m, **(s if isinstance(s, dict) else {"text": s})})
    elif isinstance(items, list):
        out = [s if isinstance(s, dict) else {"text": s} for s in items]
    res, seen = [], set()
    out.sort(key=lambda s: (_natural_key(s.get("method", "")), int(s.get("run_seed", 0) or 0), int(s.get("seed", 0) or 0)))
    for s in out:
        ident = (str(s.get("method", "")), str(s.get("prompt", "")))
        if ident in seen:  # one sample per (method, prompt): the lowest run seed and sample seed
            continue
        seen.add(ident)
        text = s.get("text") or s.get("sample") or s.get("completion") or s.get("generation")
        if not text:
            continue
        text, prompt = str(text)[:600], str(s.get("prompt", "") or "")
        if prompt and text.startswith(prompt):
            text = text[len(prompt):]
        res.append({"method": method_tex(s.get("method", "")), "prompt": tex_escape(prompt),
                    "text": tex_escape(text), "_key": (prompt, _natural_key(s.get("method", "")))})
    res.sort(key=lambda s: s.pop("_key"))
    return res[:16] or None


def _complexity_fit(e: Experiment) -> tuple[Any, Path | None]:
    """``fit.json`` (any JSON) or ``fit.csv`` (first row as a dict)."""
    data, path = e.json("fit.json")
    if data is not None:
        return data, path
    p = e.path / "fit.csv"
    if p.is_file():
        import pandas as pd

        df = pd.read_csv(p)
        if len(df):
            return {k: (float(v) if _finite(v) else v) for k, v in df.iloc[0].to_dict().items()}, p
    return None, None


def complexity_model_seconds(fit: dict, n, d):
    """Seconds per layer that the fitted cost model predicts for ``n`` tokens and ``d`` features: every term
    the fit has, streaming ``e + c·n + a·n·d²`` plus solve ``s + b·d³`` (a one-part fit has only ``a``, ``b``)."""
    t = {k: float(fit[k]) if _finite(fit.get(k)) else 0.0 for k in ("a", "b", "c", "e", "s")}
    return t["e"] + t["c"] * n + t["a"] * n * d ** 2 + t["s"] + t["b"] * d ** 3


def _complexity_solves(e: Experiment):
    p = e.path / "solves.csv"
    if not p.is_file():
        return None, None
    import pandas as pd

    df = pd.read_csv(p)
    if "layer" in df.columns:
        df = df[pd.to_numeric(df["layer"], errors="coerce").notna()]
    return (df, p) if len(df) else (None, None)


def _numeric_leaves(obj, prefix: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numeric_leaves(v, f"{prefix}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and _finite(obj):
        yield prefix, float(obj)


def _complexity_x(df, fit) -> str | None:
    if isinstance(fit, dict) and isinstance(fit.get("x"), str) and fit["x"] in df.columns:
        return fit["x"]
    keys = [c for c in df.columns if c not in OUTPUT_COLUMNS and c not in NOT_KEYS]
    numeric = []
    for c in keys:
        try:
            v = df[c].astype(float)
        except (TypeError, ValueError):
            continue
        if v.nunique() > 1:
            numeric.append((v.nunique(), c))
    prefer = [c for _, c in numeric if c in ("tokens", "train_tokens", "n_tokens", "max_train_tokens", "width",
                                               "hidden", "n_features")]
    if prefer:
        return prefer[0]
    return max(numeric)[1] if numeric else None


def _powerlaw(xs, ys):
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    return my - b * mx, b


def _fits(df, x: str):
    """Power-law fits ``(log a, b)`` of the PIL phase time (PIL methods) and the baseline's AdamW time."""
    if "method" not in df.columns or "pil_s" not in df.columns or "train_s" not in df.columns:
        return None
    p = df[df["method"].isin(PIL_METHODS)]
    b = df[df["method"] == "baseline"]
    fp = _powerlaw(p[x].astype(float), p["pil_s"].astype(float))
    fb = _powerlaw(b[x].astype(float), b["train_s"].astype(float))
    return (fp, fb) if fp and fb else None


def _estimate_crossover(df, x: str) -> float | None:
    """x where the power-law fits of the PIL phase time and the baseline's AdamW time cross."""
    fits = _fits(df, x)
    if not fits:
        return None
    fp, fb = fits
    if abs(fp[1] - fb[1]) < 1e-9:
        return None
    lx = (fb[0] - fp[0]) / (fp[1] - fb[1])
    if not -50 < lx < 50:
        return None
    return math.exp(lx)


# ------------------------------------------------------------------------------------------------
# Figures (seaborn)
# ------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper", font_scale=0.95)
    matplotlib.rcParams.update({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "pillm",
                                "axes.titlesize": 9, "legend.fontsize": 7, "legend.title_fontsize": 7})
    return plt, sns


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None,
                                                                  "Producer": None, "Creator": None})
    _write_if_changed(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)


def _hue_order(values) -> list:
    return sorted({str(v) for v in values}, key=_natural_key)


def kappa_per_layer(R: Results) -> tuple[list[dict], "Experiment | None", str]:
    """κ of the last solve of every layer, one row per (run, layer), the experiment the rows come from, and
    the caption's words for which runs: the benchmark's main configuration (one depth, one budget), else
    the λ sweep, labelled by λ."""
    for name in ("benchmark", "ablation_lambda"):
        e = R.exp(name)
        if not e.available:
            continue
        runs, which = e.runs(), " (λ sweep)" if name == "ablation_lambda" else ""
        if name == "benchmark" and "method" in e.df.columns:
            runs, which = _runs_where(e, _main_configuration(e)), ", in the main configuration's runs"
        rows = []
        for r in runs:
            last: dict[int, float] = {}
            for s in r.get("solves") or []:
                if isinstance(s.get("layer"), int) and _finite(s.get("cond")):
                    last[s["layer"]] = float(s["cond"])
            label = METHOD_PLAIN.get(str(r.get("method")), str(r.get("method")))
            if name == "ablation_lambda":
                lam = (r.get("train_config") or {}).get("lam")
                label = f"λ={lam:g}" if isinstance(lam, (int, float)) else label
            rows += [{"layer": layer, "κ": cond, "run": label, "seed": r.get("seed", 0)} for layer, cond in last.items()]
        if rows:
            return rows, e, which
    return [], None, ""


def figures(rep: Report, out: Path) -> dict[str, dict]:
    """Render every figure; returns ``name → {"path", "caption", "sources"}`` or a missing stub."""
    import pandas as pd

    plt, sns = _plt()
    R = rep.R
    res: dict[str, dict] = {}

    def missing(name, caption, exps):
        p = out / f"{name}.pdf"
        if p.exists():
            p.unlink()
        res[name] = {"missing": exps, "caption": caption}

    def _fig_curves():
        # 1. training curves
        e = R.exp("training_curves")
        rows = []
        for r in (e.runs() if e.available else []):
            for p in r.get("curve") or []:
                if _finite(p.get("valid_ppl")):
                    rows.append({"method": METHOD_PLAIN.get(str(r.get("method")), str(r.get("method"))),
                                 "seed": r.get("seed", 0), "epoch": float(p.get("epoch", 0)),
                                 "wall_s": float(p.get("wall_s", math.nan)), "valid PPL": float(p["valid_ppl"])})
        cap = "Validation perplexity during training against epochs (left) and wall-clock seconds (right)"
        if rows:
            df = pd.DataFrame(rows)
            order = [METHOD_PLAIN.get(m, m) for m in METHOD_ORDER if METHOD_PLAIN.get(m, m) in set(df["method"])]
            fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6))
            sns.lineplot(df, x="epoch", y="valid PPL", hue="method", hue_order=order, marker="o", markersize=3,
                         errorbar="sd", ax=axes[0])
            sns.lineplot(df, x="wall_s", y="valid PPL", hue="method", hue_order=order, units="seed", estimator=None,
                         marker="o", markersize=3, ax=axes[1], legend=False)
            # the untrained models (epoch 0, ~vocabulary-size perplexity) would compress every trained epoch
            # into the bottom of a log axis: the range then ends just above the worst trained point
            trained = df.loc[df["epoch"] >= 1, "valid PPL"]
            clip = len(trained) and float(df["valid PPL"].max()) > 2 * float(trained.max())
            for ax in axes:
                if clip:
                    ax.set_ylim(0.95 * float(df["valid PPL"].min()), 1.15 * float(trained.max()))
                else:
                    ax.set_yscale("log")
            if clip:
                cap += ("; the untrained models' perplexities (epoch 0, up to "
                        f"{fmt_ppl(float(df['valid PPL'].max()))}) lie above the plotted range")
            axes[1].set_xlabel("wall-clock (s)")
            axes[0].legend(fontsize=6, ncol=2)
            fig.tight_layout()
            _save(fig, out / "curves.pdf")
            res["curves"] = {"caption": cap, "sources": [e]}
        else:
            missing("curves", cap, ["training_curves"])

    def _fig_lambda():
        # 2. λ sensitivity with κ
        e = R.exp("ablation_lambda")
        cap = (r"Sensitivity to the relative ridge $\lambda$: test perplexity (left) and the largest condition "
               r"number $\kappa$ of $G_c+\lambda_{\mathrm{abs}}I$ over layers (right)")
        if e.available and "lam" in e.df.columns:
            df = e.df.copy()
            df["lam"] = df["lam"].astype(float)
            hue = "method" if "method" in df.columns and df["method"].nunique() > 1 else None
            fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
            sns.lineplot(df, x="lam", y="test_ppl", hue=hue, marker="o", errorbar="sd", ax=axes[0])
            if "max_cond" in df.columns:
                sns.lineplot(df, x="lam", y="max_cond", hue=hue, marker="s", errorbar="sd", ax=axes[1], legend=False)
                axes[1].set_yscale("log")
                axes[1].set_ylabel(r"max $\kappa$")
            for ax in axes:
                ax.set_xscale("log")
                ax.set_xlabel(r"relative $\lambda$")
            axes[0].set_ylabel("test PPL")
            fig.tight_layout()
            _save(fig, out / "lambda.pdf")
            res["lambda"] = {"caption": cap, "sources": [e]}
        else:
            missing("lambda", cap, ["ablation_lambda"])

    def _fig_expansion():
        # 3. expansion
        e = R.exp("ablation_expansion")
        cap = "Test perplexity (left) and time of the closed-form phases (right) against the random-feature expansion"
        if e.available and "expansion" in e.df.columns:
            df = e.df.copy()
            df["expansion"] = df["expansion"].astype(float)
            hue = "method" if "method" in df.columns and df["method"].nunique() > 1 else None
            fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
            sns.lineplot(df, x="expansion", y="test_ppl", hue=hue, marker="o", errorbar="sd", ax=axes[0])
            if "pil_s" in df.columns:
                sns.lineplot(df, x="expansion", y="pil_s", hue=hue, marker="s", errorbar="sd", ax=axes[1], legend=False)
            axes[0].set_ylabel("test PPL")
            axes[1].set_ylabel("PIL phase (s)")
            fig.tight_layout()
            _save(fig, out / "expansion.pdf")
            conc = concurrency(e)
            if conc > 1:  # as in the main table: shared-GPU times are shown, not read as costs
                cap += (f"; the times were measured with up to {conc} runs sharing the GPUs, so they do not "
                        "measure the cost of width (Section~\\ref{sec:complexity} does)")
            res["expansion"] = {"caption": cap, "sources": [e]}
        else:
            missing("expansion", cap, ["ablation_expansion"])

    def _fig_complexity():
        # 4. complexity scaling
        e = R.exp("complexity")
        solves, _ = _complexity_solves(e) if e.available else (None, None)
        fit, _ = _complexity_fit(e) if e.available else (None, None)
        model = ("the fitted cost model, streaming $e + cN + aND^2$ plus solve $s + bD^3$ (Table~\\ref{tab:complexity_fit})"
                 if (rep.c.get("complexity") or {}).get("two_part") else "the least-squares fit $t \\approx a N D^2 + b D^3$")
        cap = ("Measured time of the closed-form phase per layer against the number of training tokens $N$, for each "
               f"number of features $D$ (log--log; points: medians over layers); dashed: {model}")
        x = rep.c.get("complexity") and rep.c["complexity"].get("x")
        tcol = next((c for c in ("seconds_total", "seconds") if solves is not None and c in solves.columns), None)
        if solves is not None and tcol and {"tokens", "n_features"} <= set(solves.columns):
            df = solves.copy()
            df["D"] = df["n_features"].map(lambda d: f"D={int(d)}")
            order = [f"D={int(d)}" for d in sorted(df["n_features"].unique())]
            fig, ax = plt.subplots(figsize=(4.6, 2.8))
            # medians over layers, as the fit uses them (the first layer's solve also pays the warm-up)
            sns.lineplot(df, x="tokens", y=tcol, hue="D", hue_order=order, marker="o", estimator="median",
                         errorbar=None, ax=ax)
            if isinstance(fit, dict) and _finite(fit.get("a")) and _finite(fit.get("b")):
                import numpy as np

                pal = dict(zip(order, sns.color_palette(n_colors=len(order))))
                ns = np.geomspace(float(df["tokens"].min()), float(df["tokens"].max()), 50)
                for d in sorted(df["n_features"].unique()):
                    ax.plot(ns, complexity_model_seconds(fit, ns, d), ls="--", lw=0.8, color=pal[f"D={int(d)}"])
            ax.set_xscale("log")
            ax.set_yscale("log")
            from matplotlib.ticker import NullFormatter

            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (2x10^5, 3x10^5, ...) overlap
            ticks = sorted(float(t) for t in df["tokens"].unique())  # the measured N, readable
            ax.set_xticks(ticks, [f"{t / 1e6:.1f}M" if t >= 1e6 else f"{t / 1e3:.0f}k" for t in ticks])
            ax.set_xlabel("training tokens N")
            ax.set_ylabel("seconds per layer")
            ax.legend(fontsize=6)
            fig.tight_layout()
            _save(fig, out / "complexity.pdf")
            res["complexity"] = {"caption": cap, "sources": [Experiment("complexity", e.profile, e.path, None,
                                                                        e.path / "solves.csv", e.provenance)]}
        elif e.available and x:
            cap = ("Measured scaling of the training time: closed-form phases (PIL) and AdamW training, log--log; "
                   "the dotted line marks the crossover where available")
            df = e.df.copy()
            df[x] = df[x].astype(float)
            long = []
            for _, r in df.iterrows():
                m = METHOD_PLAIN.get(str(r.get("method", "")), str(r.get("method", "")))
                for col, label in (("pil_s", "PIL phase"), ("train_s", "AdamW")):
                    if col in df.columns and _finite(r.get(col)) and float(r[col]) > 0:
                        long.append({x: r[x], "seconds": float(r[col]), "series": f"{m}: {label}"})
            if long:
                ld = pd.DataFrame(long)
                fig, ax = plt.subplots(figsize=(4.6, 2.8))
                sns.lineplot(ld, x=x, y="seconds", hue="series", hue_order=sorted(set(ld["series"])), marker="o",
                             errorbar="sd", ax=ax)
                ax.set_xscale("log")
                ax.set_yscale("log")
                leaves = dict(_numeric_leaves(fit)) if isinstance(fit, (dict, list)) else {}
                xv = next((v for k, v in leaves.items() if "crossover" in k.lower()), None)
                xv = xv if xv is not None else _estimate_crossover(e.df, x)
                if _finite(xv):
                    ax.axvline(float(xv), ls=":", color="k", lw=1)
                ax.legend(fontsize=6)
                fig.tight_layout()
                _save(fig, out / "complexity.pdf")
                res["complexity"] = {"caption": cap, "sources": [e]}
            else:
                missing("complexity", cap, ["complexity"])
        else:
            missing("complexity", cap, ["complexity"])

    def _fig_kappa():
        # 5. per-layer κ
        cap = (r"Condition number $\kappa$ of the regularised Gram matrix per layer (final solve of each layer), "
               r"for every closed-form method")
        krows, e, which = kappa_per_layer(R)
        if krows:
            df = pd.DataFrame(krows)
            fig, ax = plt.subplots(figsize=(4.6, 2.6))
            sns.lineplot(df, x="layer", y="κ", hue="run", hue_order=_hue_order(df["run"]), marker="o", errorbar="sd", ax=ax)
            ax.set_yscale("log")
            ax.set_xticks(sorted(df["layer"].unique()))
            ax.legend(fontsize=6)
            fig.tight_layout()
            _save(fig, out / "kappa.pdf")
            res["kappa"] = {"caption": cap + which, "sources": [e]}
        else:
            missing("kappa", cap, ["benchmark"])

    def _fig_contribution():
        # 6. attention vs FFN contribution
        e = R.exp("benchmark")
        cap = ("What the feed-forward layers contribute: test perplexity without FFN (attention only), with "
               "random-feature FFNs whose readout is trained (RF + AdamW, LoRA) or solved (PIL methods), and with a "
               "trained MLP (baseline); dashed lines mark attention only and the baseline")
        if e.available and "method" in e.df.columns:
            raw = rows_where(e.df, _main_configuration(e))
            means = raw.groupby("method")["test_ppl"].mean()
            # A method far off the others' scale (pure PIL) would flatten every bar on a log axis: it is
            # left out of the plot and its value given in the caption instead.
            ref = means.get("attn_only", means.median()) if len(means) else math.nan
            off = {m: float(v) for m, v in means.items() if _finite(ref) and v > 3 * ref}
            raw = raw[~raw["method"].isin(off)]
            if off:
                cap += ("; off this scale and left out: " + ", ".join(
                    f"{method_tex(m)} ({fmt_ppl(v)})" for m, v in off.items()))
            if len(raw):
                order = [m for m in ("attn_only", "rf_adamw", "lora", "pil_pure", "pil_then_attn", "attn_then_pil",
                                     "alternating", "baseline") if m in set(raw["method"])]
                raw = raw.assign(label=raw["method"].map(lambda m: METHOD_PLAIN.get(m, m)))
                fig, ax = plt.subplots(figsize=(5.0, 2.6))
                sns.barplot(raw, x="label", y="test_ppl", order=[METHOD_PLAIN[m] for m in order], errorbar="sd",
                            color=sns.color_palette()[0], ax=ax)
                means = raw.groupby("method")["test_ppl"].mean()
                for m, style in (("attn_only", "--"), ("baseline", "--")):
                    if m in means:
                        ax.axhline(means[m], ls=style, lw=0.8, color="gray")
                if means.max() / max(means.min(), 1e-9) > 20:
                    ax.set_yscale("log")
                ax.set_xlabel("")
                ax.set_ylabel("test PPL")
                ax.tick_params(axis="x", rotation=30, labelsize=7)
                fig.tight_layout()
                _save(fig, out / "contribution.pdf")
                res["contribution"] = {"caption": cap, "sources": [e]}
            else:
                missing("contribution", cap, ["benchmark"])
        else:
            missing("contribution", cap, ["benchmark"])

    def _fig_sizes():
        # 7. the main configuration's budget over model sizes: means over seeds and every seed
        e = R.exp("benchmark")
        cap = ("Test perplexity against model size at the main configuration's epoch budget, for the methods run at "
               "every size: lines join the medians over seeds, dots are single seeds")
        if not (e.available and {"method", "size"} <= set(e.df.columns)):
            missing("sizes", cap, ["benchmark"])
            return
        raw = rows_where(e.df, {k: v for k, v in _main_configuration(e).items() if k != "size"})
        sizes = [z for z in SIZE_ORDER if z in set(raw["size"].astype(str))]
        per_method = raw.groupby("method")["size"].nunique()
        methods = [m for m in METHOD_ORDER if per_method.get(m, 0) == len(sizes)]
        if len(sizes) < 2 or not methods:
            missing("sizes", cap, ["benchmark"])
            return
        raw = raw[raw["method"].isin(methods)].assign(
            label=lambda d: d["method"].map(lambda m: METHOD_PLAIN.get(m, m)), size=lambda d: d["size"].astype(str))
        order = [METHOD_PLAIN.get(m, m) for m in methods]
        # a diverged seed (far above its configuration's median) would flatten the others: it is drawn at
        # the top edge, with its value, instead of stretching the axis
        median = raw.groupby(["method", "size"])["test_ppl"].transform("median")
        far = raw["test_ppl"] > 2 * median
        top = 1.08 * float(raw.loc[~far, "test_ppl"].max())
        fig, ax = plt.subplots(figsize=(4.6, 2.6))
        sns.pointplot(raw, x="size", y="test_ppl", hue="label", order=sizes, hue_order=order, estimator="median",
                      errorbar=None, markersize=4, linewidth=1.2, ax=ax)
        sns.stripplot(raw[~far], x="size", y="test_ppl", hue="label", order=sizes, hue_order=order, jitter=False,
                      size=3, alpha=0.5, legend=False, ax=ax)
        colors = dict(zip(order, sns.color_palette(n_colors=len(order))))
        for _, r in raw[far].iterrows():
            x = sizes.index(r["size"])
            ax.plot([x], [top], marker="^", ms=4, color=colors[r["label"]], clip_on=False)
            ax.annotate(f"{fmt_ppl(r['test_ppl']).replace(chr(92) + ',', ' ')} (seed {r['seed']})", (x, top),
                        xytext=(-5, -3), textcoords="offset points", fontsize=6, ha="right", color=colors[r["label"]])
        ax.set_ylim(top=top)
        ax.set_xlabel("model size")
        ax.set_ylabel("test PPL")
        ax.legend(fontsize=6)
        fig.tight_layout()
        _save(fig, out / "sizes.pdf")
        if far.any():
            cap += "; a triangle at the top edge marks a seed more than twice its configuration's median, with its value"
        res["sizes"] = {"caption": cap, "sources": [e]}

    def _fig_bench():
        # 5. GPU micro-benchmarks of the solver (pillm bench): Gram rate and solve time against D
        cap = (r"Closed-form solver on the GPU against the number of features $D$: throughput of the streamed Gram "
               r"accumulation of $\sum H^\top H$ and $\sum H^\top Y$ next to a dense single-precision matrix product of the same shape "
               r"measured in the same run (left), and time of the float64 ridge solve, Cholesky with its $\kappa$ "
               r"check and the eigen fallback (right)")
        files = [(p, d) for p, d in R.bench() if isinstance(d, dict) and not d.get("quick")
                 and isinstance(d.get("gram"), dict) and isinstance(d.get("solve"), dict)]
        if not files:
            missing("bench", cap, ["bench"])
            return
        path, d = files[0]
        rows = []
        for g in d["gram"].get("per_size", []):
            for key, label in (("update_masked", "Gram accumulation"), ("dense_mm", "dense matmul")):
                if _finite((g.get(key) or {}).get("tflops")):
                    rows.append({"D": int(g["D"]), "TFLOP/s": float(g[key]["tflops"]), "kernel": label})
        solve = []
        for sz in d["solve"].get("per_size", []):
            for key, label in (("auto", "Cholesky + κ check"), ("eigh", "eigen fallback")):
                if _finite((sz.get(key) or {}).get("seconds")):
                    solve.append({"D": int(sz["D"]), "seconds": float(sz[key]["seconds"]), "solver": label})
        if not rows or not solve:
            missing("bench", cap, ["bench"])
            return
        fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.5))
        sns.lineplot(pd.DataFrame(rows), x="D", y="TFLOP/s", hue="kernel", marker="o", ax=axes[0])
        sns.lineplot(pd.DataFrame(solve), x="D", y="seconds", hue="solver", marker="s", ax=axes[1])
        for ax in axes:
            ax.set_xscale("log", base=2)
        axes[1].set_yscale("log")
        from matplotlib.ticker import NullFormatter

        axes[1].yaxis.set_minor_formatter(NullFormatter())  # minor labels within one decade overlap
        lo, hi = axes[1].get_ylim()
        ticks = [v * 10.0 ** k for k in range(-4, 3) for v in (1, 2, 5) if lo <= v * 10.0 ** k <= hi]
        axes[1].set_yticks(ticks, [f"{t:g}" for t in ticks])
        axes[0].set_ylim(bottom=0)
        fig.tight_layout()
        _save(fig, out / "bench.pdf")
        device = tex_escape(str(d.get("device_name") or path.stem))
        res["bench"] = {"caption": cap + f" ({device})", "sources": [],
                        "source_text": (r"Source: \texttt{pillm bench}, \texttt{" + tex_escape(rel(path)) +
                                        r"} sha256 \texttt{" + sha256_short(path) + "}.")}

    for name, fn in (("curves", _fig_curves), ("lambda", _fig_lambda), ("expansion", _fig_expansion),
                     ("complexity", _fig_complexity), ("bench", _fig_bench), ("kappa", _fig_kappa),
                     ("contribution", _fig_contribution), ("sizes", _fig_sizes)):
        try:
            fn()
        except Exception as err:  # a malformed results file must not stop the paper build
            rep.errors.append(f"figure {name}: {type(err).__name__}: {err}")
            plt.close("all")
            p = out / f"{name}.pdf"
            if p.exists():
                p.unlink()
            res[name] = {"missing": [], "error": True, "caption": FIGURE_TITLES[name]}
    return res


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def jinja_env(templates: Path = TEMPLATES):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        block_start_string=r"\BLOCK{", block_end_string="}",
        variable_start_string=r"\VAR{", variable_end_string="}",
        comment_start_string=r"\#{", comment_end_string="}",
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters["and_join"] = and_join  # "a, b and c"
    return env


def _write_if_changed(path: Path, data: bytes | str) -> None:
    data = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Dirs:
    tables: Path
    figures: Path
    generated: Path
    build: Path  # latexmk -outdir; main.pdf lands here

    @property
    def src(self) -> Path:
        return self.build / "src"


def default_dirs(profile: str, out: Path | None = None) -> Dirs:
    """``paper``: the committed ``tables/``, ``figures/``, ``paper/generated/`` and ``paper/build``;
    any other profile (or an explicit ``out``): ``<out or paper/build/<profile>>/{tables,figures,generated}``."""
    if out is None and profile == "paper":
        return Dirs(REPO / "tables", REPO / "figures", PAPER / "generated", PAPER / "build")
    base = Path(out) if out is not None else PAPER / "build" / profile
    return Dirs(base / "tables", base / "figures", base / "generated", base)


PROSE = ("preamble", "abstract", "status", "intro_claims", "setup", "results_main", "results_lambada",
         "ablations", "closing", "appendix_tuning", "analysis", "complexity", "conclusion", "appendix_results", "appendix_curves",
         "appendix_samples")


@dataclass
class Rendered:
    report: Report
    files: list[Path]
    missing: list[str]


def render(profile: str, results_root: Path, dirs: Dirs, with_figures: bool = True) -> Rendered:
    """Compute numbers and claims, write tables, figures, prose and numbers.tex."""
    rep = Report(Results(results_root, profile))
    rep.compute()
    env = jinja_env()
    files: list[Path] = []

    def write(path: Path, text: str) -> None:
        _write_if_changed(path, text)
        files.append(path)

    # tables
    tpl_table, tpl_missing = env.get_template("table.tex.j2"), env.get_template("missing.tex.j2")
    for name, t in rep.tables.items():
        if t is None:
            cap, exps = rep.table_missing[name]
            note = rep.broken_note() if name in rep.broken else rep.missing_note(exps)
            text = tpl_missing.render(kind="table", label=f"tab:{name}", caption=cap, note=note,
                                      star=name in ("benchmark", "models", "hardware"))
        else:
            t.caption = t.caption.rstrip() if t.caption.rstrip().endswith(".") else t.caption.rstrip() + "."
            text = tpl_table.render(t=t, source=rep.source_note(t.sources) if t.sources else "")
        write(dirs.tables / f"{name}.tex", text)
    # figures
    figs = figures(rep, dirs.figures) if with_figures else {}
    rep.figures = figs
    tpl_fig = env.get_template("figure.tex.j2")
    for name in FIGURES:
        f = figs.get(name) or {"missing": [FIGURE_SOURCE[name]], "caption": FIGURE_TITLES[name]}
        if "missing" in f:
            note = rep.broken_note() if f.get("error") else rep.missing_note(f["missing"])
            text = tpl_missing.render(kind="figure", label=f"fig:{name}", caption=f["caption"], note=note, star=False)
        else:
            width = r"\linewidth" if name in ("curves", "lambda", "expansion", "bench") else r"0.7\linewidth"
            text = tpl_fig.render(name=name, label=f"fig:{name}", caption=f["caption"], width=width,
                                  source=f.get("source_text") or rep.source_note(f["sources"]))
        write(dirs.figures / f"{name}.tex", text)
    # prose
    ctx = dict(n=rep.n, c=rep.c, profile=profile, smoke=profile != "paper", gap_goal=fmt_fixed(GAP_GOAL, 2),
               tol_pct=int(round(100 * COMPETITIVE_TOL)),
               similar_pct=int(round(100 * SIMILAR_TOL)), par_pct=fmt_fixed(100 * PAR_TOL, 1),
               low_pct=int(round(100 * LAMBADA_LOW)), missing=rep.c["missing"], tex=tex_escape,
               fig_ok={name: name in figs and "missing" not in figs[name] for name in FIGURES})
    for name in PROSE:
        write(dirs.generated / f"{name}.tex", env.get_template(f"{name}.tex.j2").render(**ctx))
    # numbers (only the macros a template used)
    nums = [{"name": x.name, "text": x.text, "source": rel(x.source), "sha": sha256_short(x.source), "note": x.note}
            for x in rep.n.used_numbers()]
    write(dirs.tables / "numbers.tex", env.get_template("numbers.tex.j2").render(numbers=nums, profile=profile))
    return Rendered(rep, files, rep.c["missing"])


# ------------------------------------------------------------------------------------------------
# Build: stage, latexmk, checks
# ------------------------------------------------------------------------------------------------


def default_results_root(root: Path | str | None = None) -> Path:
    """``root``, else ``$PILLM_RESULTS_DIR``, else ``<repo>/results`` (as :mod:`pillm.experiments`)."""
    return Path(root or os.environ.get("PILLM_RESULTS_DIR") or REPO / "results")


def tex_available() -> bool:
    return shutil.which("latexmk") is not None and shutil.which("pdflatex") is not None


def _require_tex() -> None:
    if not tex_available():
        raise ReportError("latexmk/pdflatex not found. Install TeX with `make tex` (Debian: apt-get install "
                          "--no-install-recommends texlive-latex-extra texlive-fonts-recommended texlive-science latexmk)")


def stage(dirs: Dirs) -> Path:
    """Copy the paper sources and the generated files into ``<build>/src`` (a fresh tree)."""
    src = dirs.src
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(PAPER / "main.tex", src / "main.tex")
    shutil.copy2(PAPER / "references.bib", src / "references.bib")
    shutil.copytree(PAPER / "sections", src / "sections")
    for sub, d in (("tables", dirs.tables), ("figures", dirs.figures), ("generated", dirs.generated)):
        (src / sub).mkdir()
        for p in sorted(d.glob("*")):
            if p.suffix in (".tex", ".pdf") and p.is_file():
                shutil.copy2(p, src / sub / p.name)
    return src


LOG_PROBLEMS = (re.compile(r"LaTeX Warning: Reference .* undefined"),
                re.compile(r"LaTeX Warning: Citation .* undefined"),
                re.compile(r"LaTeX Warning: There were undefined references"),
                re.compile(r"Package natbib Warning: Citation .* undefined"),
                re.compile(r"LaTeX Warning: Label .* multiply defined"),
                re.compile(r"Warning: Empty .?thebibliography"))


def check_log(log: Path) -> list[str]:
    """Problems in a LaTeX log: undefined references/citations, multiply defined labels."""
    text = log.read_text(errors="replace") if log.exists() else ""
    out = []
    for line in text.splitlines():
        if any(p.search(line) for p in LOG_PROBLEMS):
            out.append(line.strip())
    return out


def latexmk(src: Path, outdir: Path, quiet: bool = True) -> Path:
    _require_tex()
    outdir.mkdir(parents=True, exist_ok=True)
    cmd = ["latexmk", "-pdf", "-bibtex", "-halt-on-error", "-interaction=nonstopmode", "-file-line-error",
           f"-outdir={outdir.resolve()}", "main.tex"]
    env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "0"), FORCE_SOURCE_DATE="1")
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    pdf = outdir / "main.pdf"
    if proc.returncode != 0 or not pdf.exists():
        log = outdir / "main.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else proc.stdout[-4000:]
        raise ReportError(f"latexmk failed (exit {proc.returncode}); see {log}\n{tail}")
    if not quiet:
        print(proc.stdout[-2000:])
    return pdf


def run_missing_experiments(profile: str, missing: list[str], log=print, results_root: Path | None = None) -> bool:
    """Run the missing experiments through :func:`pillm.experiments.run_experiments` when that is
    possible and sensible: for ``paper`` without a GPU only summarize the runs that have finished
    (``--finished-only``: the tables are marked partial). Returns True when anything ran."""
    from . import experiments

    todo = [m for m in missing if m in experiments.load_registry()]
    if not todo:
        if missing:
            log(f"pillm paper: results missing for {', '.join(missing)} (no such experiments in the registry)")
        return False
    root = default_results_root(results_root)
    finished_only = False
    if profile == "paper":
        import torch

        if not torch.cuda.is_available():
            todo = [m for m in todo
                    if any((experiments.experiment_dir(m, profile, root) / "runs").glob("*/result.json"))]
            log(f"pillm paper: paper-scale results missing for {', '.join(missing)}; not running them without a "
                f"GPU (run `make experiments PROFILE=paper` on a GPU machine)"
                + (f"; summarizing the finished runs of {', '.join(todo)} (tables marked partial)" if todo else ""))
            if not todo:
                return False
            finished_only = True
    else:
        log(f"pillm paper: running missing experiments for profile {profile}: {', '.join(todo)}")
    try:
        rc = experiments.run_experiments(profile, only=todo, results_root=str(root), finished_only=finished_only)
        if rc:
            log(f"pillm paper: some experiments failed (exit {rc}); building with what exists")
    except (Exception, SystemExit) as err:  # the paper still builds from what exists
        log(f"pillm paper: running experiments failed ({type(err).__name__}: {err}); building with what exists")
    return True


def build_paper(profile: str = "paper", results_root: Path | None = None, out: Path | None = None,
                run_missing: bool = True, compile: bool = True, strict: bool = False, log=print) -> dict:
    """Render and compile the paper; returns a summary dict (paths, missing, problems, seconds)."""
    t0 = time.perf_counter()
    results_root = default_results_root(results_root)
    dirs = default_dirs(profile, out)
    if run_missing:
        missing = Results(results_root, profile).missing()
        run_missing_experiments(profile, missing, log, results_root)
    rendered = render(profile, results_root, dirs)
    for err in rendered.report.errors:
        log(f"pillm paper: warning: could not render {err}")
    if strict and rendered.report.errors:
        raise ReportError("results could not be rendered: " + "; ".join(rendered.report.errors))
    if rendered.missing:
        log(f"pillm paper: not available in profile {profile}: {', '.join(rendered.missing)}")
    summary = {"profile": profile, "dirs": dirs, "missing": rendered.missing, "pdf": None, "problems": [],
               "render_s": time.perf_counter() - t0, "numbers": len(rendered.report.n.used)}
    if not compile:
        return summary
    src = stage(dirs)
    pdf = latexmk(src, dirs.build)
    problems = check_log(dirs.build / "main.log")
    summary.update(pdf=pdf, problems=problems, total_s=time.perf_counter() - t0)
    if problems:
        msg = "pillm paper: LaTeX problems:\n  " + "\n  ".join(problems)
        if strict:
            raise ReportError(msg)
        log(msg)
    log(f"pillm paper: wrote {rel(pdf)} ({summary['total_s']:.1f} s)")
    return summary


def _used_inputs(dirs: Dirs) -> list[Path]:
    """Files under ``<build>/src`` that pdflatex read (latexmk's recorder file ``main.fls``)."""
    fls = dirs.build / "main.fls"
    if not fls.exists():
        raise ReportError(f"{fls} not found: build the paper first (pillm paper)")
    src = dirs.src.resolve()
    used = set()
    pwd = src
    for line in fls.read_text(errors="replace").splitlines():
        if line.startswith("PWD "):
            pwd = Path(line[4:].strip())
        elif line.startswith("INPUT "):
            p = Path(line[6:].strip())
            p = (pwd / p if not p.is_absolute() else p).resolve()
            # pdflatex also looks in its -output-directory first, which for a smoke build holds the
            # rendered tables/, figures/ and generated/ (identical to their staged copies in src/)
            for base in (src, dirs.build.resolve()):
                try:
                    r = p.relative_to(base)
                except ValueError:
                    continue
                if (src / r).is_file() and r.suffix in (".tex", ".pdf", ".png", ".jpg"):
                    used.add(r)
                    break
    return sorted(used)


def build_arxiv(profile: str = "paper", out: Path | None = None, log=print, results_root: Path | None = None) -> Path:
    """``<build>/arxiv.tar.gz`` with the sources pdflatex used and ``main.bbl``; compiled once from a
    temporary extraction (pdflatex twice, no bibtex) to prove it builds."""
    _require_tex()
    dirs = default_dirs(profile, out)
    if not (dirs.build / "main.fls").exists() or not (dirs.build / "main.bbl").exists():
        build_paper(profile, results_root=results_root, out=out, run_missing=False, log=log)
    files = _used_inputs(dirs)
    bbl = dirs.build / "main.bbl"
    if not bbl.exists():
        raise ReportError(f"{bbl} not found: the bibliography was not built")
    tar_path = dirs.build / "arxiv.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        for r in files:
            add(str(r), (dirs.src / r).read_bytes())
        add("main.bbl", bbl.read_bytes())
    _write_if_changed(tar_path, buf.getvalue())
    with tempfile.TemporaryDirectory(prefix="pillm-arxiv-") as tmp:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        for i in range(2):
            proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=tmp,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise ReportError(f"the arXiv bundle does not compile (pdflatex pass {i + 1}):\n{proc.stdout[-3000:]}")
        problems = check_log(Path(tmp) / "main.log")
        if problems or not (Path(tmp) / "main.pdf").exists():
            raise ReportError("the arXiv bundle compiles with problems:\n  " + "\n  ".join(problems))
    log(f"pillm arxiv: wrote {rel(tar_path)} ({len(files) + 1} files) and compiled it from a clean extraction")
    return tar_path


# ------------------------------------------------------------------------------------------------
# Command line (registered by pillm.cli)
# ------------------------------------------------------------------------------------------------


def _cmd_paper(args) -> int:
    try:
        s = build_paper(args.profile, results_root=args.results, out=args.out, run_missing=not args.no_run,
                        compile=not args.no_compile, strict=args.strict)
    except ReportError as e:
        print(f"pillm paper: error: {e}", file=sys.stderr)
        return 1
    return 0 if not (args.strict and s["problems"]) else 1


def _cmd_arxiv(args) -> int:
    try:
        build_arxiv(args.profile, out=args.out, results_root=args.results)
    except ReportError as e:
        print(f"pillm arxiv: error: {e}", file=sys.stderr)
        return 1
    return 0


def add_subcommands(sub) -> None:
    """Add ``paper`` and ``arxiv`` to the ``pillm`` argument parser (``handler`` = the function)."""
    p = sub.add_parser("paper", help="render tables/numbers/figures from results and build the paper PDF")
    p.add_argument("--profile", default="paper", help="results profile (paper → committed tables/, figures/)")
    p.add_argument("--results", type=Path, help="results root (default: $PILLM_RESULTS_DIR or results/)")
    p.add_argument("--out", type=Path, help="output directory (default: repository for paper, "
                                            "paper/build/<profile> otherwise)")
    p.add_argument("--no-run", action="store_true", help="never run missing experiments")
    p.add_argument("--no-compile", action="store_true", help="render only; do not run LaTeX")
    p.add_argument("--strict", action="store_true", help="fail on undefined references or citations")
    p.set_defaults(handler=_cmd_paper)
    a = sub.add_parser("arxiv", help="bundle the built paper for arXiv and prove the bundle compiles")
    a.add_argument("--profile", default="paper")
    a.add_argument("--results", type=Path, help="results root (default: $PILLM_RESULTS_DIR or results/)")
    a.add_argument("--out", type=Path, help="build directory used by `pillm paper --out`")
    a.set_defaults(handler=_cmd_arxiv)


__all__ = ["Results", "Report", "Numbers", "render", "build_paper", "build_arxiv", "check_log", "verdict",
           "aggregate", "default_dirs", "add_subcommands", "ReportError", "PAPER_EXPERIMENTS"]
