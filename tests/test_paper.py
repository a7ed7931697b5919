"""The paper build: statistics, numbers from results files, claims checked against the results, tables that
regenerate identically, hand-written sections without typed numbers, and the PDF."""

from __future__ import annotations

import argparse
import ast
import re
import shutil
from pathlib import Path

import pytest

from pillm import stats
from pillm.report import build, claims, numbers
from pillm.report.config import PAPER, REPO, ReportError
from pillm.report.results import NotRun, Results

RESULTS = REPO / "results"
SECTIONS = sorted((PAPER / "sections").glob("*.tex")) + [PAPER / "main.tex"]
needs_results = pytest.mark.skipif(not (RESULTS / "paper" / "benchmark").is_dir(), reason="no committed results")


def _text(paths) -> str:
    return "\n".join(re.sub(r"(?<!\\)%.*", "", p.read_text()) for p in paths)


# --- statistics ----------------------------------------------------------------------------------------

def test_paired_interval_matches_the_t_formula_and_pairs_by_seed():
    a, b = {0: 10.0, 1: 12.0, 2: 11.0, 7: 99.0}, {0: 9.0, 1: 10.0, 2: 10.5}
    p = stats.paired(a, b)
    assert p.seeds == (0, 1, 2) and p.diffs == (1.0, 2.0, 0.5)
    # mean 7/6, sd 0.7638, t(2) = 4.3027: half-width 1.8974
    assert p.mean == pytest.approx(7 / 6)
    assert p.hi - p.mean == pytest.approx(4.302653 * 0.763763 / 3 ** 0.5, rel=1e-5)
    assert p.includes_zero and not p.above_zero
    assert stats.paired({0: 5.0, 1: 6.0, 2: 7.0}, {0: 1.0, 1: 2.1, 2: 3.0}).above_zero


def test_paired_needs_two_shared_seeds():
    with pytest.raises(ValueError, match="at least two shared seeds"):
        stats.paired({0: 1.0, 1: 2.0}, {1: 1.0, 2: 3.0})


def test_gap_share_ratio_and_cost_model():
    assert stats.log_gap_share(200.0, 100.0, 100.0) == pytest.approx(100.0)
    assert stats.log_gap_share(200.0, 100.0, 200 / 2 ** 0.5) == pytest.approx(50.0)
    assert stats.log_gap_share(100.0, 100.0, 90.0) is None
    r, lo, hi = stats.ratio_ci({0: 2.0, 1: 2.2, 2: 1.8}, {0: 1.0, 1: 1.1, 2: 0.9})
    assert r == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    fit = {"a": 2.0, "b": 3.0, "c": None, "e": 1.0}
    assert stats.complexity_model_seconds(fit, 10, 2) == pytest.approx(1 + 2 * 10 * 4 + 3 * 8)
    assert stats.monotone([3, 2, 1]) and not stats.monotone([3, 3, 1])


def test_shared_statistics_are_one_leaf_module():
    from pillm import report

    assert report.log_gap_share is stats.log_gap_share
    assert report.complexity_model_seconds is stats.complexity_model_seconds
    tree = ast.parse((REPO / "pillm" / "stats.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("pillm") or m.startswith(".")], imported


# --- the report's shape --------------------------------------------------------------------------------

def _report_imports() -> dict[str, set[str]]:
    out = {}
    for p in sorted((REPO / "pillm" / "report").glob("*.py")):
        tree = ast.parse(p.read_text())
        mods = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                mods.add("." * n.level + (n.module or ""))
        out[p.stem] = mods
    return out


def test_report_reads_results_and_never_runs_experiments():
    for module, mods in _report_imports().items():
        upward = [m for m in mods if m.lstrip(".").split(".")[0] not in ("", "stats") and m.startswith("..")]
        assert not upward, f"pillm/report/{module}.py imports {upward}: the report may use only pillm.stats"
        assert not any("experiments" in m for m in mods), module
    assert not hasattr(build, "run_missing_experiments")


def test_report_modules_import_each_other_without_a_circle():
    graph = {m: {x.lstrip(".") for x in mods if x.startswith(".") and not x.startswith("..") and x.lstrip(".")}
             for m, mods in _report_imports().items()}

    def visit(node, path):
        assert node not in path, f"import circle: {' -> '.join(path + [node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])

    for m in graph:
        visit(m, [])


def test_report_is_small_and_has_no_wording_rules():
    lines = sum(len(p.read_text().splitlines()) for p in (REPO / "pillm" / "report").glob("*.py"))
    assert lines <= 1500, f"pillm/report has {lines} lines"
    src = _text((REPO / "pillm" / "report").glob("*.py"))
    for word in ("verdict", "competitive", "on_par"):
        assert word not in src, word
    assert sorted(p.name for p in (PAPER / "templates").iterdir()) == ["figure.tex.j2", "numbers.tex.j2",
                                                                       "table.tex.j2"]
    conditionals = sum(p.read_text().count(r"\BLOCK{ if") for p in (PAPER / "templates").iterdir())
    assert conditionals <= 5
    assert not (PAPER / "generated").exists()


# --- claims --------------------------------------------------------------------------------------------

def _claims_in_text() -> set[str]:
    return set(re.findall(r"\\claim\{([^}]+)\}", _text(SECTIONS)))


def test_every_claim_in_the_text_is_checked_and_every_check_is_in_the_text():
    named = _claims_in_text()
    assert named, "the text marks no claims"
    assert named - set(claims.BY_NAME) == set(), "claims in the text without a check"
    assert set(claims.BY_NAME) - named == set(), "checks that no sentence makes"
    assert len(claims.BY_NAME) == len(claims.CLAIMS)


@needs_results
def test_every_claim_holds_on_the_committed_results():
    out = claims.check(Results(RESULTS, "paper"))
    assert {o.claim.name: o.status for o in out} == {c.name: "holds" for c in claims.CLAIMS}


@pytest.fixture(scope="module")
def results_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    shutil.copytree(RESULTS / "paper", root / "paper")
    shutil.copytree(RESULTS / "bench", root / "bench")
    return root


def _edit_csv(path: Path, column: str, match: dict, value) -> None:
    import pandas as pd

    df = pd.read_csv(path)
    rows = (df[list(match)].astype(str) == [str(v) for v in match.values()]).all(axis=1)
    assert rows.any()
    df.loc[rows, column] = value
    df.to_csv(path, index=False)


@needs_results
def test_a_result_that_contradicts_a_sentence_fails_the_build_naming_the_claim(results_copy, tmp_path, capsys):
    gap = results_copy / "paper" / "gap" / "summary.csv"
    saved = gap.read_bytes()
    try:
        # the best hybrid now beats the baseline on every seed: "PIL loses" is false
        _edit_csv(gap, "test_ppl", {"variant": "attn_then_pil+global+iter4"}, 100.0)
        with pytest.raises(ReportError, match="pil-loses") as err:
            build.build_paper("paper", results_root=results_copy, out=tmp_path, compile=False)
        assert "teacher-equals-hybrid" in str(err.value)  # the hybrid is now far below the teacher probe
        assert not (tmp_path / "tables" / "numbers.tex").exists(), "nothing is rendered from contradicted results"
        args = argparse.Namespace(profile="paper", results=results_copy, out=tmp_path, no_compile=True, strict=False)
        assert build._cmd_paper(args) == 1  # `pillm paper` (and `make paper`) exits non-zero ...
        assert "pil-loses" in capsys.readouterr().err  # ... naming the claim
    finally:
        gap.write_bytes(saved)


@needs_results
def test_a_trend_that_breaks_fails_its_claim(results_copy):
    teacher = results_copy / "paper" / "teacher" / "summary.csv"
    saved = teacher.read_bytes()
    try:
        _edit_csv(teacher, "test_ppl", {"variant": "RF 16x"}, 150.0)
        names = {o.claim.name for o in claims.evaluate(Results(results_copy, "paper")) if o.status == "contradicted"}
        assert {"teacher-width", "teacher-matches-rf"} <= names
    finally:
        teacher.write_bytes(saved)


def test_missing_results_render_as_not_run(tmp_path):
    (tmp_path / "paper").mkdir()
    res = Results(tmp_path, "paper")
    assert {o.status for o in claims.evaluate(res)} == {"not run"}
    n = numbers.compute(res)
    assert {x.text for x in n.defs.values()} == {r"\textit{not run}"}
    with pytest.raises(NotRun):
        res.seeds("gap/summary.csv")
    out = build.build_paper("paper", results_root=tmp_path, out=tmp_path / "out", compile=False)
    assert all(o.status == "not run" for o in out["claims"])
    assert "not run" in (tmp_path / "out" / "tables" / "main.tex").read_text()


# --- numbers -------------------------------------------------------------------------------------------

def _macros(path: Path) -> dict[str, tuple[str, str]]:
    """``{name: (comment, value)}`` of ``tables/numbers.tex``."""
    text = path.read_text()
    return {m[1]: (m[0], m[2]) for m in re.findall(r"% (.*)\n\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}", text)}


def _used_macros() -> set[str]:
    files = SECTIONS + sorted((REPO / "tables").glob("*.tex")) + sorted((REPO / "figures").glob("*.tex"))
    files = [p for p in files if p.name != "numbers.tex"]
    return set(re.findall(r"\\([A-Za-z]+)\{\}", _text(files)))


@needs_results
def test_every_macro_comes_from_a_results_file_that_exists_and_is_used():
    defined = _macros(REPO / "tables" / "numbers.tex")
    assert defined
    used = _used_macros()
    assert set(defined) - used == set(), "macros no text uses"
    for name, (comment, value) in defined.items():
        assert "not run" not in value, name
        src = re.match(r"\w+: (.+?) \(sha256", comment).group(1).split("; ")[0]
        if "*" in src:  # one value from several runs' result.json
            assert list(REPO.glob(src)), f"{name}: nothing matches {src}"
        else:
            assert (REPO / src).is_file(), f"{name}: {src} does not exist"
            assert re.search(r"sha256 [0-9a-f]{8}", comment), name


@needs_results
def test_every_macro_the_text_uses_is_defined():
    defined = set(_macros(REPO / "tables" / "numbers.tex"))
    known = set(re.findall(r"\\(?:newcommand|DeclareMathOperator)\{\\([A-Za-z]+)\}", (PAPER / "main.tex").read_text()))
    text_macros = set(re.findall(r"\\([A-Z][A-Za-z]+)\{\}", _text(SECTIONS)))
    assert text_macros - defined - known == set()


@needs_results
def test_numbers_are_the_values_of_their_results_file():
    n = numbers.compute(Results(RESULTS, "paper"))
    import pandas as pd

    df = pd.read_csv(RESULTS / "paper" / "gap" / "summary.csv")
    hybrid = df[df["variant"] == "attn_then_pil+global+iter4"]["test_ppl"].mean()
    assert n.defs["HybridPPL"].text == f"{hybrid:.1f}" and n.defs["HybridPPL"].source == "gap/summary.csv"
    teacher = pd.read_csv(RESULTS / "paper" / "teacher" / "summary.csv")
    assert n.defs["TeacherSixteenPPL"].value == pytest.approx(teacher[teacher["variant"] == "RF 16x"]["test_ppl"].mean())
    assert numbers.fmt(1082.28, "ppl") == r"1\,082" and numbers.fmt(-3.0, "x") == "$-3.00$"


ALLOWED_WORDS = {"95"}  # the confidence level
NAMES = ("WikiText-2", "TF32")  # names that contain digits


def test_sections_type_no_numbers():
    for p in SECTIONS:
        text = re.sub(r"(?<!\\)%.*", "", p.read_text())
        for name in NAMES:
            text = text.replace(name, "")
        text = re.sub(r"^\\(re)?newcommand.*$|\\pdfoutput=\d", "", text, flags=re.M)  # definitions: arity, #1
        text = re.sub(r"\\begin\{(equation|align)\*?\}.*?\\end\{\1\*?\}", "", text, flags=re.S)
        text = re.sub(r"\\(ref|label|cite[pt]?|input|claim|href|bibliography\w*|usepackage|documentclass"
                      r"|section|subsection)(\[[^]]*\])?\{[^}]*\}", "", text)
        text = re.sub(r"\[(margin|round|font|leftmargin|colorlinks)[^]]*\]|\d+pt", "", text)
        for math in re.findall(r"\$[^$]*\$", text):
            assert not re.search(r"\d{2,}|\d\.\d", math), f"{p.name}: number in math {math!r}"
        prose = re.sub(r"\$[^$]*\$", "", text)
        typed = [d for d in re.findall(r"\d+(?:\.\d+)?", prose) if d not in ALLOWED_WORDS]
        assert not typed, f"{p.name} types numbers {typed}: use a macro from tables/numbers.tex"


# --- rendering and the PDF -----------------------------------------------------------------------------

@needs_results
def test_tables_figures_and_numbers_regenerate_identically(tmp_path):
    build.build_paper("paper", results_root=RESULTS, out=tmp_path, compile=False)
    for sub in ("tables", "figures"):
        committed = sorted(p.name for p in (REPO / sub).iterdir())
        assert sorted(p.name for p in (tmp_path / sub).iterdir()) == committed
        for name in committed:
            assert (tmp_path / sub / name).read_bytes() == (REPO / sub / name).read_bytes(), f"{sub}/{name}"


def test_captions_link_notebook_and_results_without_hashes():
    for p in sorted((REPO / "tables").glob("*.tex")) + sorted((REPO / "figures").glob("*.tex")):
        if p.name in ("numbers.tex", "provenance.tex"):
            continue
        caption = re.search(r"\\caption\[.*?\]\{(.*)\}\n\\label", p.read_text(), re.S).group(1)
        assert r"\src{" in caption, p.name
        assert not re.search(r"sha256|[0-9a-f]{8}\b|commit", caption), p.name


def test_the_two_gpu_figure_names_its_compute_version():
    text = (REPO / "figures" / "twogpu.tex").read_text()
    assert r"\ComputeVersionTwoGPU{}" in text and "nvidia-h200-2gpu.json" in text
    assert "ComputeVersionTwoGPU}{1}" in (REPO / "tables" / "numbers.tex").read_text()


@needs_results
@pytest.mark.skipif(not build.tex_available(), reason="latexmk/pdflatex not installed")
def test_the_pdf_builds_within_its_limits(tmp_path):
    s = build.build_paper("paper", results_root=RESULTS, out=tmp_path, strict=True)
    lay = s["layout"]
    assert s["problems"] == [] and s["pdf"].is_file()
    assert lay["references_page"] <= build.MAX_REFERENCES_PAGE
    assert 0 < lay["abstract_words"] <= build.MAX_ABSTRACT_WORDS
    assert lay["unresolved"] == 0
