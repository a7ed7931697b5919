"""Rendering (Jinja2 templates → paper/generated), staging, latexmk, the arXiv bundle and the CLI."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import (
    COMPETITIVE_TOL, FIGURE_SOURCE, FIGURE_TITLES, FIGURES, GAP_GOAL, LAMBADA_LOW, PAPER, PAPER_EXPERIMENTS,
    PAR_TOL, REPO, ReportError, SIMILAR_TOL, TEMPLATES,
)
from .files import write_if_changed, rel, sha256_short
from .fmt import fmt_fixed, tex_escape
from .numbers import Numbers, verdict
from .results import aggregate, and_join, Results
from .sections import Report
from .figures import figures


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
        write_if_changed(path, text)
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
    from .. import experiments

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
    write_if_changed(tar_path, buf.getvalue())
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
