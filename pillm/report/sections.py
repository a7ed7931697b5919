"""The report: every number, claim and table of the paper, computed from the results by one function per
section (modules ``results_main``, ``ablations``, ``closing``, ``performance``, ``setup_tables``), each
taking the :class:`Report` whose numbers, tables and claims it fills."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import ablations, closing, performance, results_main, setup_tables
from .config import PAPER_EXPERIMENTS, ReportError, TABLE_TITLES
from .files import repo_url
from .fmt import tex_escape
from .numbers import Numbers
from .results import _param_tex, compress_runs, Experiment, Results
from .tables import TableSpec


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

    # -------------------------------------------------------------- every section
    def compute(self) -> None:
        """Every section; one whose results cannot be read is reported as not available (and the
        error is kept in ``errors`` for the build log) instead of stopping the build."""
        steps = (("benchmark", results_main.benchmark, ("benchmark",), "bench"),
                 ("lambada", results_main.lambada, ("lambada",), "lambada"),
                 ("ablation_bipil", ablations.ablation_bipil, ("ablation_bipil",), "bipil"),
                 ("ablation_lambda", ablations.ablation_lambda, ("ablation_lambda",), "lam"),
                 ("ablation_expansion", ablations.ablation_expansion, ("ablation_expansion",), "expansion"),
                 ("ablation_fusion", ablations.ablation_fusion, ("ablation_fusion",), "fusion"),
                 ("training_strategy", ablations.strategy, ("training_strategy",), "strategy"),
                 ("tinystories", ablations.tinystories, ("tinystories",), "tiny"),
                 ("gap", closing.gap, ("gap_changes",), "gap"),
                 ("teacher", closing.teacher, ("teacher",), "teacher"),
                 ("adaptation", closing.adaptation, ("adaptation",), "adapt"),
                 ("first_layer", closing.first_layer, ("first_layer",), "first_layer"),
                 ("lambda_path", closing.lambda_path, ("lambda_path",), "lambda_path"),
                 ("pure_attention", closing.pure_attention, ("pure_attention",), "pure_attention"),
                 ("protocol", closing.protocol, ("protocol",), "protocol"),
                 ("ngram", closing.ngram, ("ngram",), "ngram"),
                 ("bench", performance.bench, (), "gpu"),
                 ("complexity", performance.complexity, ("complexity_fit",), "complexity"),
                 ("training_curves", results_main.curves, (), "curves"),
                 ("closing", closing.closing, ("gap",), "closing"),
                 ("tuning", ablations.tuning, ("tuning", "tuned"), "tuning"),
                 ("setup", setup_tables.setup_tables, ("models", "datasets", "hparams", "hardware"), None))
        for name, fn, tables, claim in steps:
            try:
                if name in PAPER_EXPERIMENTS and self.R.exp(name).error:  # e.g. its notebook failed
                    raise ReportError(self.R.exp(name).error)
                fn(self)
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
