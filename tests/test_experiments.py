"""The experiment pipeline: run grids (resume), staleness hashes, atomic writes, the registry, and
``pillm experiments`` end to end (success, skip when up to date, an injected failure, rerun)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from pillm import experiments as ex
from pillm.experiments import grid
from pillm.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
INJECTED = {"profile", "results_root", "progress"}


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------


def test_expand_routes_fields_and_names_runs():
    base = {"size": "tiny", "train": {"epochs": 1}, "model": {"dropout": 0.0}}
    runs = ex.expand(base, method=["baseline", "pil_then_attn"], lam=[1e-5], expansion=[2], seed=[0, 1])
    assert len(runs) == 4
    r = runs[1]
    assert r["method"] == "baseline" and r["size"] == "tiny"
    assert r["train"] == {"epochs": 1, "lam": 1e-5, "seed": 1}
    assert r["model"] == {"dropout": 0.0, "expansion": 2}
    assert r["vary"] == {"method": "baseline", "lam": 1e-5, "expansion": 2, "seed": 1}
    assert r["name"] == "method=baseline,lam=1e-05,expansion=2,seed=1"
    assert base == {"size": "tiny", "train": {"epochs": 1}, "model": {"dropout": 0.0}}  # not mutated
    spec = ex.run_spec(r)
    assert spec.train["seed"] == 1 and spec.model["expansion"] == 2
    labelled = ex.make_run(base, labels={"variant": "PIL 2x"}, bipil=False, expansion=8)
    assert labelled["vary"] == {"variant": "PIL 2x", "bipil": False, "expansion": 8}
    assert labelled["bipil"] is False and "variant" not in labelled["model"]
    with pytest.raises(ValueError, match="unknown run parameter 'nope'"):
        ex.expand(base, nope=[1])
    with pytest.raises(TypeError):
        ex.expand(base, seed=0)


def _fake_result(spec, cond=10.0, fallback=False):
    return {"method": spec.method, "dataset": spec.dataset, "size": spec.size, "seed": spec.train.get("seed", 0),
            "spec": {}, "valid_ppl": 100.0 + spec.train.get("seed", 0), "valid_acc": 0.1, "test_ppl": 110.0,
            "test_acc": 0.2, "train_s": 1.0, "pil_s": 0.5, "total_s": 1.5, "optimizer_steps": 3,
            "params": {"embedding": 10, "ffn_solved": 5, "total": 15},
            "solves": [{"layer": 0, "cond": cond, "fallback": False, "n_features": 8, "lam": 1e-4},
                       {"layer": 1, "cond": cond * 2, "fallback": fallback, "n_features": 8, "lam": 1e-4}],
            "curve": [{"epoch": 0, "wall_s": 0.1, "valid_ppl": 200.0, "phase": "init"}], "complete": True}


FAIL_LR = 0.123


@pytest.fixture
def fake_execute(monkeypatch):
    """Replace pillm.run.execute inside experiments by a fast fake that records its calls."""
    calls = []

    def execute(spec, out=None, progress=True):
        calls.append(spec.train.get("seed"))
        if spec.train.get("lr") == FAIL_LR:
            raise RuntimeError("injected")
        result = _fake_result(spec, fallback=spec.train.get("seed") == 1)
        if spec.save_checkpoint:
            ex.write_json_atomic(Path(out) / "checkpoint" / "config.json", {})
        ex.write_json_atomic(Path(out) / "result.json", result)
        return result, None

    monkeypatch.setattr(grid, "execute", execute)  # what run_grid calls
    return calls


def test_run_grid_writes_summary_and_resumes(tmp_path, fake_execute, monkeypatch):
    runs = ex.expand({"size": "tiny"}, method=["baseline"], seed=[0, 1])
    df = ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1]
    summary = pd.read_csv(tmp_path / "smoke" / "exp" / "summary.csv")
    assert list(summary["name"]) == ["method=baseline,seed=0", "method=baseline,seed=1"]
    for col in ("experiment", "method", "seed", "valid_ppl", "test_ppl", "test_acc", "valid_acc", "train_s", "pil_s",
                "total_s", "optimizer_steps", "params_embedding", "params_total", "max_cond", "any_fallback"):
        assert col in summary.columns, col
    assert list(summary["any_fallback"]) == [False, True] and summary["max_cond"].iloc[0] == 20.0
    assert df.equals(ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False))
    assert fake_execute == [0, 1]  # second call: everything done, nothing executed

    # An interrupted run (result.json written, run.json not yet) is redone; a finished one is not.
    (tmp_path / "smoke" / "exp" / "runs" / runs[0]["name"] / "run.json").unlink()
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 0]

    # Same name, changed spec: redone. A new compute version: everything redone.
    runs[1]["train"]["lr"] = 0.5
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 0, 1]
    monkeypatch.setattr(grid, "COMPUTE_VERSION", grid.COMPUTE_VERSION + 1)
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 0, 1, 0, 1]

    # A run that keeps its checkpoint (a later step loads it) is redone if the checkpoint is gone.
    (tmp_path / "smoke" / "exp" / "runs" / runs[0]["name"] / "checkpoint" / "config.json").unlink()
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 0, 1, 0, 1, 0]
    runs = ex.expand({"size": "tiny", "save_checkpoint": False}, method=["baseline"], seed=[0])
    ex.run_grid("nockpt", runs, profile="smoke", results_root=tmp_path, progress=False)
    ex.run_grid("nockpt", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 0, 1, 0, 1, 0, 0]
    assert not (tmp_path / "smoke" / "nockpt" / "runs" / runs[0]["name"] / "checkpoint").exists()


def test_identical_runs_are_reused_across_experiments(tmp_path, fake_execute):
    """A run another experiment of the profile already finished is copied, not recomputed, even
    when the two notebooks spell it differently (an explicit default)."""
    ex.run_grid("first", ex.expand({"size": "tiny", "save_checkpoint": False}, method=["baseline"], seed=[0, 1]),
                profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1]
    second = ex.expand({"size": "tiny", "save_checkpoint": False, "model": {"dropout": 0.1}},  # 0.1 is the default
                       method=["baseline"], seed=[1, 2])
    df = ex.run_grid("second", second, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 2]  # seed 1 reused, seed 2 computed
    meta = json.loads((tmp_path / "smoke" / "second" / "runs" / second[0]["name"] / "run.json").read_text())
    assert meta["reused_from"] == "first/runs/method=baseline,seed=1"
    assert list(df["valid_ppl"]) == [101.0, 102.0]
    # a different config is not reused, and neither is another profile
    ex.run_grid("third", ex.expand({"size": "tiny", "save_checkpoint": False, "model": {"dropout": 0.2}},
                                   method=["baseline"], seed=[1]), profile="smoke", results_root=tmp_path, progress=False)
    ex.run_grid("first", ex.expand({"size": "tiny", "save_checkpoint": False}, method=["baseline"], seed=[1]),
                profile="other", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 2, 1, 1]


def test_run_grid_failure_keeps_finished_runs_and_writes_no_summary(tmp_path, fake_execute):
    runs = ex.expand({"size": "tiny"}, method=["baseline"], seed=[0, 1])
    runs[1]["train"]["lr"] = FAIL_LR  # the fake raises on this learning rate
    with pytest.raises(RuntimeError, match="injected"):
        ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    exp = tmp_path / "smoke" / "exp"
    assert not (exp / "summary.csv").exists()
    assert (exp / "runs" / runs[0]["name"] / "run.json").exists()
    assert not (exp / "runs" / runs[1]["name"] / "result.json").exists()
    del runs[1]["train"]["lr"]
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 1]  # resumed: only the failed run again
    assert len(pd.read_csv(exp / "summary.csv")) == 2


def test_run_grid_rejects_duplicate_names(tmp_path, fake_execute):
    runs = ex.expand({}, seed=[0]) * 2
    with pytest.raises(ValueError, match="unique"):
        ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)


def test_results_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("PILLM_RESULTS_DIR", raising=False)
    assert ex.root_dir() == REPO / "results"
    monkeypatch.setenv("PILLM_RESULTS_DIR", str(tmp_path))
    assert ex.root_dir() == tmp_path.resolve()
    assert ex.experiment_dir("e", "paper", tmp_path / "x") == (tmp_path / "x" / "paper" / "e").resolve()


# --------------------------------------------------------------------------------------------
# Analysis helpers
# --------------------------------------------------------------------------------------------


def test_mean_std_and_rounded():
    df = pd.DataFrame({"method": ["a", "a", "b"], "test_ppl": [1.0, 3.0, 5.0], "test_acc": [0.123456, 0.2, 0.3]})
    out = ex.mean_std(df, "method", ["test_ppl", "test_acc"])
    assert list(out.columns) == ["method", "test_ppl_mean", "test_ppl_std", "test_acc_mean", "test_acc_std", "n"]
    assert out["test_ppl_mean"].tolist() == [2.0, 5.0] and out["n"].tolist() == [2, 1]
    assert math.isclose(out["test_ppl_std"].iloc[0], math.sqrt(2)) and math.isnan(out["test_ppl_std"].iloc[1])
    assert ex.rounded(df)["test_acc"].iloc[0] == 0.1235


def test_fit_complexity_recovers_coefficients_of_both_parts():
    """Streaming e + c·N + a·N·D² and solve s + b·D³ are fitted on their own measured parts; the median
    over layers ignores a one-off slow first solve (library initialisation)."""
    rows = [{"tokens": n, "n_features": d, "layer": layer}
            for n in (1e3, 4e3, 16e3) for d in (64, 128, 256) for layer in range(3)]
    df = pd.DataFrame(rows)
    df["seconds"] = 1e-3 + 3e-8 * df["n_features"] ** 3
    df["seconds_total"] = df["seconds"] + 2e-3 + 5e-6 * df["tokens"] + 2e-9 * df["tokens"] * df["n_features"] ** 2
    df.loc[0, ["seconds", "seconds_total"]] += 0.5  # the first solve of the process: cuBLAS/cuSOLVER start-up
    fit = ex.fit_complexity(df)
    for key, want in (("a", 2e-9), ("b", 3e-8), ("c", 5e-6), ("e", 2e-3), ("s", 1e-3)):
        assert math.isclose(fit[key], want, rel_tol=1e-6), (key, fit[key])
    assert fit["r2"] > 0.999999 and fit["cells"] == 9
    assert math.isclose(fit["fitted"][1], df["seconds_total"][1], rel_tol=1e-9)


def test_fit_complexity_reports_a_model_that_does_not_fit():
    rng = np.random.default_rng(0)
    df = pd.DataFrame([{"tokens": n, "n_features": d} for n in (1e3, 4e3, 16e3) for d in (64, 128, 256)])
    df["seconds"] = rng.uniform(0, 1, len(df))
    df["seconds_total"] = df["seconds"] + rng.uniform(0, 1, len(df))  # noise: neither part follows the model
    assert ex.fit_complexity(df)["r2"] < 0.9


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_writes_leave_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "summary.csv"
    ex.write_csv_atomic(pd.DataFrame({"a": [1]}), path)
    ex.write_text_atomic(tmp_path / ".complete", "abc\n")
    assert (tmp_path / ".complete").read_text() == "abc\n"

    class Boom(pd.DataFrame):
        def to_csv(self, f, **kw):
            f.write("a\n")  # a partial write, then a crash
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ex.write_csv_atomic(Boom({"a": [2]}), path)
    assert pd.read_csv(path)["a"].tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".complete", "summary.csv"]  # no temp files left


# --------------------------------------------------------------------------------------------
# Staleness
# --------------------------------------------------------------------------------------------


def test_staleness_hash(tmp_path):
    nb_path = tmp_path / "nb.ipynb"
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", nb_path)
    params = {"seed": 0, "train": {"epochs": 1}}
    h = lambda p=params, profile="smoke", version=1: ex.staleness_hash(nb_path, p, profile, version=version)  # noqa: E731
    h0 = h()
    assert h0 == h() and len(h0) == 64

    # Outputs, execution counts and other metadata do not count.
    nb = nbformat.read(str(nb_path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="different\n")]
            cell.execution_count = 42
            cell.metadata["collapsed"] = True
    nb.metadata["papermill"] = {"duration": 1.0}
    nbformat.write(nb, str(nb_path))
    assert h() == h0

    # Parameters, profile, compute version, the notebook's source and tags all count.
    assert h({"seed": 1, "train": {"epochs": 1}}) != h0
    assert h({"seed": 0, "train": {"epochs": 2}}) != h0
    assert h(profile="paper") != h0
    assert h(version=2) != h0
    nb.cells[-1].source += "\n# edited"
    nbformat.write(nb, str(nb_path))
    h1 = h()
    assert h1 != h0
    nb.cells[-1].metadata["tags"] = ["nbval-ignore-output"]
    nbformat.write(nb, str(nb_path))
    assert h() != h1


def test_run_key_is_the_resolved_configuration_data_and_compute_version():
    a, b = (ex.run_spec(r) for r in ex.expand({"size": "tiny"}, seed=[0, 1]))
    k = ex.run_key(a)
    assert k == ex.run_key(ex.run_spec(ex.make_run({"size": "tiny"}, seed=0))) and k != ex.run_key(b)
    # an explicit default is the same run; a new compute version is not
    assert ex.run_key(ex.run_spec(ex.make_run({"size": "tiny"}, seed=0, lr=TrainConfig().lr))) == k
    assert ex.run_key(a, version=grid.COMPUTE_VERSION + 1) != k


def test_a_new_default_field_keeps_every_key():
    """Keys hold the non-default settings only: an option added with a default that keeps the computation
    leaves stored runs current."""
    from dataclasses import dataclass

    @dataclass
    class Old:
        lr: float = 1e-3

    @dataclass
    class New:
        lr: float = 1e-3
        eta_cap: float | None = None

    assert grid._non_default({"lr": 1e-3}, Old) == grid._non_default({"lr": 1e-3, "eta_cap": None}, New) == {}
    assert grid._non_default({"lr": 1e-2, "eta_cap": 5.0}, New) == {"lr": 1e-2, "eta_cap": 5.0}


# --------------------------------------------------------------------------------------------
# Registry ↔ notebooks
# --------------------------------------------------------------------------------------------

REGISTRY = ex.load_registry()


def test_registry_lists_every_notebook():
    listed = {Path(e["notebook"]).resolve() for e in REGISTRY.values()}
    on_disk = {p.resolve() for p in (REPO / "notebooks").glob("[!_]*.ipynb")}
    assert listed == on_disk
    # one entry per notebook, named after it (results/<profile>/<name>.ipynb is its executed copy)
    assert all(Path(e["notebook"]).stem == name for name, e in REGISTRY.items())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_parameters_match_notebook(name):
    """The registry is the one source of settings: a notebook's parameters cell holds only what papermill
    injects, and the notebook reads its settings for the profile from the registry."""
    entry = REGISTRY[name]
    declared = ex.notebook_parameters(entry["notebook"])
    assert set(declared) == set(ex.NOTEBOOK_PARAMETERS)
    assert declared["profile"] == "smoke" and declared["results_root"] is None and declared["progress"] is False
    assert declared["registry"] is None
    nb = nbformat.read(str(entry["notebook"]), as_version=4)
    assert any(f'EXPERIMENT = "{name}"' in c.source and "ex.experiment_settings(EXPERIMENT, profile, registry)"
               in c.source for c in nb.cells if c.cell_type == "code")
    smoke, paper = entry["parameters"]["smoke"], entry["parameters"]["paper"]
    assert set(paper) == set(smoke)
    if name == "ngram":  # count-based, CPU only: no model, no training configuration
        assert paper["orders"] == [1, 2, 3, 4, 5] and paper["dataset"] == "wikitext2"
        return
    train = paper["train"]
    assert train["device"] == "cuda" and paper["size"] == "small" and paper["threads"] is None
    if name != "quickstart":
        assert paper["seeds"] and all(isinstance(x, int) for x in paper["seeds"])
        # the main table's small rows are paired over 5 seeds; tuning and the timing runs use one seed per trial
        expected = {"benchmark": 5, "complexity": None, "training_curves": None, "tuning": None}.get(name, 3)
        assert expected is None or len(paper["seeds"]) == expected
        assert train["epochs"] == (0 if name == "complexity" else 10)
        if name != "complexity":  # the full training set and the full evaluation splits
            assert train["max_train_tokens"] is None and train["max_eval_tokens"] is None
    assert nb.metadata["kernelspec"]["name"] == ex.KERNEL


# --------------------------------------------------------------------------------------------
# `pillm experiments` end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capfd):
    """``pillm experiments ARGS`` through ``pillm.cli.main`` in this process, as a CompletedProcess: each
    notebook still executes in a process of its own (``python -m pillm experiments --one``) and its kernel."""
    from pillm.cli import main

    monkeypatch.chdir(REPO)

    def run(*args) -> subprocess.CompletedProcess:
        capfd.readouterr()
        try:
            code = main(["experiments", *args])
        except SystemExit as err:  # as the interpreter ends: a status, or a message on stderr and status 1
            code = err.code
            if not isinstance(code, int | None):
                print(code, file=sys.stderr)
                code = 1
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["pillm", "experiments", *args], code or 0, out, err)

    return run


def test_cli_rejects_unknown_experiment_and_profile(tmp_path, cli):
    r = cli("--only", "nope", "--results-dir", str(tmp_path))
    assert r.returncode != 0 and "unknown experiment 'nope'" in r.stderr
    r = cli("--profile", "huge", "--only", "quickstart", "--results-dir", str(tmp_path))
    assert r.returncode != 0 and "no parameters for profile 'huge'" in r.stderr
    assert not any(tmp_path.iterdir())


def _notebook(path: Path, *cells: str) -> Path:
    params = new_code_cell('profile = "smoke"\nresults_root = None\nprogress = False\nregistry = None',
                           metadata={"tags": ["parameters"]})
    settings = new_code_cell("from pillm import experiments as ex\n"
                             f"value = ex.experiment_settings({path.stem!r}, profile, registry)['value']")
    nb = new_notebook(cells=[params, settings] + [new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": ex.KERNEL, "display_name": "Python (pillm)",
                                               "language": "python"}})
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_experiments_end_to_end(tmp_path, cli):
    ex.check_kernel()
    root = tmp_path / "results"
    t0 = time.perf_counter()
    r = cli("--profile", "smoke", "--only", "ngram", "--results-dir", str(root))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = time.perf_counter() - t0
    smoke = root / "smoke"
    exp = smoke / "ngram"  # a real registry notebook that trains nothing (the notebook tests run the others)
    assert (smoke / "ngram.ipynb").exists() and (smoke / "ngram.html").exists()
    summary = pd.read_csv(exp / "summary.csv")
    assert set(summary["method"]) == {"kn1", "kn2"} and summary["test_ppl"].notna().all()
    prov = json.loads((exp / "provenance.json").read_text())
    assert (exp / ".complete").read_text().strip() == prov["hash"]
    assert prov["parameters"]["orders"] == [1, 2] and prov["environment"]["torch"] and prov["wall_s"] > 0
    assert "git_commit" in prov and prov["notebook"] == "notebooks/ngram.ipynb"
    executed = nbformat.read(str(smoke / "ngram.ipynb"), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    # Up to date: skipped, fast, nothing rewritten.
    mtime = (exp / ".complete").stat().st_mtime_ns
    t0 = time.perf_counter()
    r = cli("--profile", "smoke", "--only", "ngram", "--results-dir", str(root))
    again = time.perf_counter() - t0
    assert r.returncode == 0 and "ngram: up to date, skipped" in r.stdout and "0 ran, 1 skipped" in r.stdout
    assert again < min(first, 30) and (exp / ".complete").stat().st_mtime_ns == mtime

    # An injected failure: nothing of it counts, the executed notebook is kept, the error names the
    # cell, the other experiment still runs, the exit code is non-zero; then a fixed rerun completes.
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    broken = _notebook(nbs / "broken.ipynb", "from pillm import experiments as ex\nx = value + 1",
                       "raise RuntimeError('injected failure')", "print('unreachable')")
    fine = _notebook(nbs / "fine.ipynb", "from pathlib import Path\n"
                     "out = Path(results_root) / profile / 'fine'\nout.mkdir(parents=True, exist_ok=True)\n"
                     "(out / 'summary.csv').write_text('value\\n%d\\n' % value)")
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({"experiments": {
        "broken": {"notebook": str(broken), "parameters": {"smoke": {"value": 2}}},
        "fine": {"notebook": str(fine), "parameters": {"smoke": {"value": 3}}}}}))
    r = cli("--registry", str(registry), "--results-dir", str(root))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "broken: FAILED" in r.stdout and "cell 3 raised RuntimeError: injected failure" in r.stdout
    assert "1 ran, 0 skipped, 1 failed (broken)" in r.stdout
    assert not (smoke / "broken" / ".complete").exists() and not (smoke / "broken" / "provenance.json").exists()
    failed = json.loads((smoke / "broken" / "failed.json").read_text())
    assert failed["cell_index"] == 3 and failed["executed_cell_index"] == 4 and failed["ename"] == "RuntimeError"
    assert "in cell 3 of broken.ipynb" in r.stderr and "raise RuntimeError('injected failure')" in r.stderr
    kept = nbformat.read(str(smoke / "broken.ipynb"), as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in kept.cells if c.cell_type == "code" for o in c.outputs)
    assert (smoke / "fine" / ".complete").exists() and (smoke / "fine" / "summary.csv").read_text() == "value\n3\n"

    _notebook(broken, "from pillm import experiments as ex\nx = value + 1", "print('fixed')")
    r = cli("--registry", str(registry), "--results-dir", str(root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fine: up to date, skipped" in r.stdout and "1 ran, 1 skipped, 0 failed" in r.stdout
    assert (smoke / "broken" / ".complete").exists() and not (smoke / "broken" / "failed.json").exists()


@pytest.mark.slow
def test_finished_only_leaves_the_experiment_incomplete(tmp_path, cli):
    """``--finished-only`` executes the notebook with PILLM_FINISHED_ONLY=1; when it records a partial
    summary the experiment is not marked complete, so the next full run executes it again."""
    ex.check_kernel()
    root = tmp_path / "results"
    nb = _notebook(tmp_path / "part.ipynb", "from pillm import experiments as ex",
                   "import json\nfrom pathlib import Path\n"
                   "out = Path(results_root) / profile / 'part'\nout.mkdir(parents=True, exist_ok=True)\n"
                   "(out / 'summary.csv').write_text('value\\n%d\\n' % value)\n"
                   "(out / 'match.txt').write_text(ex.run_filter().pattern if ex.run_filter() else '')\n"
                   "if ex.finished_only():\n"
                   "    (out / 'partial.json').write_text(json.dumps({'runs': 2, 'finished': 1, 'missing': ['b']}))\n"
                   "else:\n    (out / 'partial.json').unlink(missing_ok=True)  # as run_grid does with a full summary")
    registry = tmp_path / "registry.yaml"
    registry.write_text(json.dumps({"experiments": {"part": {"notebook": str(nb), "parameters": {"smoke": {"value": 1}}}}}))
    exp = root / "smoke" / "part"
    r = cli("--registry", str(registry), "--results-dir", str(root), "--finished-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (exp / ".complete").exists() and (exp / "partial.json").exists()
    assert json.loads((exp / "provenance.json").read_text())["partial"]["missing"] == ["b"]
    (exp / "old.partial.json").write_text("{}")  # a grid this notebook no longer leaves partial
    os.utime(exp / "old.partial.json", (time.time() - 60, time.time() - 60))
    r = cli("--registry", str(registry), "--results-dir", str(root))
    assert r.returncode == 0 and "1 ran, 0 skipped" in r.stdout, r.stdout + r.stderr
    assert (exp / ".complete").exists() and not (exp / "partial.json").exists()
    assert not (exp / "old.partial.json").exists()  # older than this execution: a leftover, removed
    assert (exp / "match.txt").read_text() == ""
    # --match reaches the notebook's kernel the same way (its environment)
    r = cli("--registry", str(registry), "--results-dir", str(root), "--force", "--match", "seed=1$")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (exp / "match.txt").read_text() == "seed=1$"


def test_gap_summary_chooses_the_hybrid_on_validation_only():
    df = pd.DataFrame([
        {"variant": "baseline", "seed": 0, "valid_ppl": 120.0, "test_ppl": 115.0, "total_s": 60.0},
        {"variant": "attn_only", "seed": 0, "valid_ppl": 160.0, "test_ppl": 150.0, "total_s": 50.0},
        {"variant": "pil_pure", "seed": 0, "valid_ppl": 9000.0, "test_ppl": 8800.0, "total_s": 10.0},
        {"variant": "pil_pure+head", "seed": 0, "valid_ppl": 600.0, "test_ppl": 580.0, "total_s": 10.0},
        # best on validation, worse on test: must still be the one chosen
        {"variant": "h1", "seed": 0, "valid_ppl": 130.0, "test_ppl": 140.0, "total_s": 70.0},
        {"variant": "h1", "seed": 1, "valid_ppl": 132.0, "test_ppl": 142.0, "total_s": 70.0},
        {"variant": "h2", "seed": 0, "valid_ppl": 135.0, "test_ppl": 125.0, "total_s": 70.0},
        # a fair baseline, best on validation: a control, never a hybrid candidate
        {"variant": "baseline+time", "seed": 0, "valid_ppl": 110.0, "test_ppl": 105.0, "total_s": 150.0},
    ])
    ngram = pd.DataFrame({"order": [1, 5], "test_ppl": [911.7, 220.1]})
    roles = {"baseline": "baseline", "attn_only": "attn_only", "pure": ["pil_pure", "pil_pure+head"],
             "controls": "baseline+time"}
    s = ex.gap_summary(df, roles, ngram)
    assert s["best_hybrid_name"] == "h1" and s["best_hybrid_test_ppl"] == pytest.approx(141.0)
    assert s["hybrids"] == ["h1", "h2"]  # every variant without a role
    assert s["controls"] == {"baseline+time": 105.0}
    assert s["baseline_test_ppl"] == 115.0 and s["kn5_test_ppl"] == 220.1
    assert s["pure_pil_name"] == "pil_pure+head" and s["pure_pil_test_ppl"] == 580.0
    assert ex.gap_summary(df, roles | {"pure": "pil_pure"})["pure_pil_test_ppl"] == 8800.0
    assert s["seeds"]["h1"] == 2 and s["hybrid_over_baseline"] == pytest.approx(141.0 / 115.0)
    assert ex.gap_summary(df, roles)["kn5_test_ppl"] is None


def test_choose_on_validation_uses_validation_and_equal_budgets():
    df = pd.DataFrame([
        # baseline: lr 2e-3 best on validation (worse on test: must still be chosen)
        {"method": "baseline", "lr": 1e-3, "dropout": 0.1, "valid_ppl": 120.0, "test_ppl": 110.0},
        {"method": "baseline", "lr": 2e-3, "dropout": 0.1, "valid_ppl": 118.0, "test_ppl": 115.0},
        {"method": "lora", "lr": 1e-3, "dropout": 0.1, "valid_ppl": 140.0, "test_ppl": 139.0},
        {"method": "lora", "lr": 2e-3, "dropout": 0.1, "valid_ppl": 150.0, "test_ppl": 120.0},
    ])
    chosen = ex.choose_on_validation(df, "method", ["lr", "dropout"], default={"lr": 1e-3, "dropout": 0.1})
    b, lo = chosen.set_index("method").loc["baseline"], chosen.set_index("method").loc["lora"]
    assert b["lr"] == 2e-3 and b["test_ppl"] == 115.0 and b["default_valid_ppl"] == 120.0 and not b["chosen_is_default"]
    assert lo["lr"] == 1e-3 and bool(lo["chosen_is_default"]) and lo["trials"] == 2
    with pytest.raises(ValueError, match="unequal tuning budgets"):
        ex.choose_on_validation(df.iloc[:3], "method", ["lr", "dropout"])
    with pytest.raises(ValueError, match=r"columns \['momentum'\]"):
        ex.choose_on_validation(df, "method", ["momentum"])


def test_choose_on_validation_leaves_incomplete_grids_out_of_a_partial_summary(monkeypatch):
    df = pd.DataFrame([{"method": m, "lr": lr, "dropout": 0.1, "valid_ppl": v, "test_ppl": v}
                       for m, lr, v in [("baseline", 1e-3, 120.0), ("baseline", 2e-3, 118.0), ("lora", 1e-3, 100.0)]])
    monkeypatch.setenv(ex.FINISHED_ONLY, "1")
    chosen = ex.choose_on_validation(df, "method", ["lr", "dropout"])
    assert list(chosen["method"]) == ["baseline", "lora"] and list(chosen["complete"]) == [True, False]
    assert chosen["lr"].iloc[0] == 2e-3 and chosen["trials"].iloc[1] == 1 and math.isnan(chosen["lr"].iloc[1])


def test_lambda_is_searched_per_closed_form_method_at_its_chosen_setting():
    """λ of the closed-form methods that train is chosen on validation like lr and dropout, at each
    method's chosen setting; the trial at the common λ is the chosen run itself (the same run key)."""
    base = {"size": "tiny", "train": {"lam": 1e-4}}
    chosen = pd.DataFrame([{"method": "baseline", "lr": 2e-3, "dropout": 0.1, "complete": True},
                           {"method": "pil_then_attn", "lr": 4e-3, "dropout": 0.2, "complete": True},
                           {"method": "alternating", "lr": math.nan, "dropout": math.nan, "complete": False}])
    trials = ex.lambda_trials(base, chosen, [1e-4, 1e-2], [0])
    assert [r["name"] for r in trials] == ["method=pil_then_attn,lr=0.004,dropout=0.2,lam=0.0001,seed=0",
                                           "method=pil_then_attn,lr=0.004,dropout=0.2,lam=0.01,seed=0"]
    plain = ex.make_run(base, method="pil_then_attn", lr=4e-3, dropout=0.2, seed=0)
    assert ex.run_key(ex.run_spec(trials[0])) == ex.run_key(ex.run_spec(plain))  # the chosen run: reused
    assert ex.lambda_trials(base, chosen, [], [0]) == []
    for bad in ([0.0], [-1e-4], [True], [1e-4, 1e-4]):
        with pytest.raises(ValueError, match="lams"):
            ex.lambda_trials(base, chosen, bad, [0])
    # chosen on validation (1e-2), not on test (where 1e-4 is lower)
    df = pd.DataFrame([{"method": "pil_then_attn", "lam": 1e-4, "valid_ppl": 150.0, "test_ppl": 140.0},
                       {"method": "pil_then_attn", "lam": 1e-2, "valid_ppl": 149.0, "test_ppl": 141.0}])
    lambdas = ex.choose_lambda(df, base)
    assert lambdas["lam"].iloc[0] == 1e-2 and lambdas["default_valid_ppl"].iloc[0] == 150.0
    confirm = ex.confirmation_runs(base, chosen, [0, 1], lambdas)
    assert [r["name"] for r in confirm] == [
        "method=baseline,lr=0.002,dropout=0.1,seed=0", "method=baseline,lr=0.002,dropout=0.1,seed=1",
        "method=pil_then_attn,lr=0.004,dropout=0.2,lam=0.01,seed=0",  # lambda_trials' run of that λ
        "method=pil_then_attn,lr=0.004,dropout=0.2,lam=0.01,seed=1"]
    assert confirm[2]["train"]["lam"] == 1e-2 and confirm[0]["train"]["lam"] == 1e-4  # the base's common λ
    # a method whose λ search is incomplete (a partial grid) is not confirmed yet; without λ choices, as before
    waiting = lambdas.assign(complete=False)
    assert [r["method"] for r in ex.confirmation_runs(base, chosen, [0], waiting)] == ["baseline"]
    assert [r["name"] for r in ex.confirmation_runs(base, chosen, [0])] == [
        "method=baseline,lr=0.002,dropout=0.1,seed=0", "method=pil_then_attn,lr=0.004,dropout=0.2,seed=0"]


def test_finished_only_summarizes_what_finished_and_runs_nothing(tmp_path, fake_execute, monkeypatch):
    runs = ex.expand({"size": "tiny"}, method=["baseline"], seed=[0, 1, 2])
    ex.run_grid("exp", runs[:1], profile="smoke", results_root=tmp_path, progress=False)
    partial = tmp_path / "smoke" / "exp" / ex.PARTIAL
    monkeypatch.setenv(ex.FINISHED_ONLY, "1")
    df = ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0] and list(df["seed"]) == [0]
    assert json.loads(partial.read_text()) == {"runs": 3, "finished": 1, "missing": [r["name"] for r in runs[1:]]}
    with pytest.raises(RuntimeError, match="none of its 1 runs has finished"):
        ex.run_grid("other", runs[1:2], profile="smoke", results_root=tmp_path, progress=False)
    monkeypatch.delenv(ex.FINISHED_ONLY)
    df = ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 1, 2] and len(df) == 3 and not partial.exists()


@pytest.mark.slow
def test_parallel_runs_write_their_progress_to_a_log_each(tmp_path, monkeypatch, capsys):
    """With PILLM_JOBS > 1 the runs execute in worker processes, out of sight of the notebook: each writes
    its progress bars and last line to ``logs/<run name>.log``, so that a run stopped by a time limit says
    how far it got. Real (tiny, CPU) runs: the workers are spawned processes."""
    monkeypatch.setenv("PILLM_JOBS", "2")
    for name in ("PILLM_CONCURRENT_RUNS", "TQDM_MININTERVAL"):
        monkeypatch.delenv(name, raising=False)
    smoke = ex.experiment_settings("benchmark", "smoke")  # the registry's smoke settings
    base = {"size": smoke["size"], "save_checkpoint": False, "train": smoke["train"]}
    runs = ex.expand(base, method=["baseline", "pil_then_attn"], seed=[0])
    df = ex.run_grid("par", runs, profile="smoke", results_root=tmp_path, progress=True)
    assert sorted(df["name"]) == sorted(r["name"] for r in runs) and df["test_ppl"].notna().all()
    logs = tmp_path / "smoke" / "par" / ex.RUN_LOGS
    assert str(logs) in capsys.readouterr().out
    for run, bar in zip(runs, ("adamw epoch 1", "attn epoch 1")):
        text = (logs / f"{run['name']}.log").read_text()
        assert bar in text and f"[par] {run['name']}: test ppl" in text
    # the workers' settings do not outlive the pool (a later sequential grid would record them)
    assert "PILLM_CONCURRENT_RUNS" not in os.environ and "TQDM_MININTERVAL" not in os.environ
    results = [json.loads((tmp_path / "smoke" / "par" / "runs" / x["name"] / "result.json").read_text()) for x in runs]
    assert all(r["environment"]["concurrent_runs"] == 2 for r in results)
    # every result and run record names the compute version that produced it
    assert all(r["compute_version"] == grid.COMPUTE_VERSION for r in results)
    assert all(json.loads((tmp_path / "smoke" / "par" / "runs" / x["name"] / "run.json").read_text())
               ["compute_version"] == grid.COMPUTE_VERSION for x in runs)


def test_match_runs_only_the_selected_runs_and_leaves_the_grid_incomplete(tmp_path, fake_execute, monkeypatch):
    """``--match`` (PILLM_MATCH) fits a call's time limit: only matching pending runs execute, the
    summary holds them and the finished ones, and a later full run completes the grid."""
    runs = ex.expand({"size": "tiny"}, method=["baseline"], seed=[0, 1, 2])
    ex.run_grid("exp", runs[:1], profile="smoke", results_root=tmp_path, progress=False)  # seed 0 finished
    partial = tmp_path / "smoke" / "exp" / ex.PARTIAL
    monkeypatch.setenv(ex.MATCH, "seed=2$")
    df = ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 2] and list(df["seed"]) == [0, 2]
    assert json.loads(partial.read_text()) == {"runs": 3, "finished": 2, "missing": [runs[1]["name"]]}
    assert ex.partial_allowed() and not ex.finished_only()
    monkeypatch.setenv(ex.MATCH, "seed=(")
    with pytest.raises(ValueError, match="not a regular expression"):
        ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    monkeypatch.delenv(ex.MATCH)
    # A call that dies running the last missing run (a time limit; here an error) leaves the old partial summary
    # marked partial: partial.json goes only with the summary that replaces it.
    runs[1]["train"]["lr"] = FAIL_LR
    with pytest.raises(RuntimeError, match="injected"):
        ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert partial.exists() and len(pd.read_csv(partial.parent / "summary.csv")) == 2
    del runs[1]["train"]["lr"]
    df = ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 2, 1, 1] and list(df["seed"]) == [0, 1, 2] and not partial.exists()


def test_cli_match_that_is_not_a_regex_says_so(tmp_path, cli):
    r = cli("--results-dir", str(tmp_path), "--match", "seed=(")
    assert r.returncode == 2 and "is not a regular expression" in r.stderr and "epochs=5" in r.stderr


def test_run_provenance_says_where_the_runs_were_computed(tmp_path, fake_execute):
    """The notebook that collects an experiment may execute elsewhere (a CPU) than its runs (GPUs):
    provenance.json's ``runs`` tallies the runs' own environments and the reused ones."""
    ex.run_grid("first", ex.expand({"size": "tiny", "save_checkpoint": False}, method=["baseline"], seed=[0]),
                profile="smoke", results_root=tmp_path, progress=False)
    ex.run_grid("second", ex.expand({"size": "tiny", "save_checkpoint": False}, method=["baseline"], seed=[0, 1]),
                profile="smoke", results_root=tmp_path, progress=False)
    for name, device in (("method=baseline,seed=0", "NVIDIA H200"), ("method=baseline,seed=1", "cpu")):
        p = tmp_path / "smoke" / "second" / "runs" / name / "result.json"
        r = json.loads(p.read_text())
        p.write_text(json.dumps(r | {"environment": {"device_name": device, "torch": "2.13.0", "concurrent_runs": 8}}))
    prov = ex.run_provenance(tmp_path / "smoke" / "second")
    assert prov["count"] == 2 and prov["reused_from_other_experiments"] == 1
    assert prov["device_name"] == {"NVIDIA H200": 1, "cpu": 1} and prov["concurrent_runs"] == {"8": 2}
    # results already read (the report's) are used as given, not read again
    runs = tmp_path / "smoke" / "second" / "runs"
    given = {p: {"environment": {"device_name": "given"}} for p in runs.glob("*/result.json")}
    assert ex.run_provenance(runs.parent, given)["device_name"] == {"given": 2}


def test_expected_cost_orders_slow_runs_first():
    cost = lambda **kw: ex.expected_cost(ex.run_spec(ex.make_run({"size": "small"}, **kw)))  # noqa: E731
    assert cost(method="alternating") > cost(method="pil_pure") > cost(method="baseline")
    assert cost(method="pil_then_attn", final_resolve=True) > cost(method="pil_then_attn")
    assert cost(method="baseline", epochs=20) == 2 * cost(method="baseline", epochs=10)
    big = ex.expected_cost(ex.run_spec(ex.make_run({"size": "large"}, method="baseline")))
    assert big > cost(method="baseline")


def test_teacher_summary_retention():
    teachers = pd.DataFrame({"seed": [0, 1], "test_ppl": [100.0, 100.0]})
    students = pd.DataFrame({"variant": ["no FFN", "no FFN", "RF 4x", "RF 4x"], "test_ppl": [400.0, 400.0, 200.0, 200.0]})
    s = ex.teacher_summary(teachers, students)
    assert s["teacher_test_ppl"] == 100.0 and s["no_ffn_test_ppl"] == 400.0 and s["seeds"] == 2
    assert s["fits"]["RF 4x"]["retention_pct"] == pytest.approx(50.0)  # ln 2 of ln 4 recovered
    with pytest.raises(ValueError, match="no 'no FFN' variant"):
        ex.teacher_summary(teachers, students[students["variant"] != "no FFN"])


def test_teacher_checkpoint_enters_the_key_by_repository_path_and_run_key(tmp_path):
    ckpt = REPO / "results" / "_test_teacher_key" / "runs" / "teacher,seed=0" / "checkpoint"
    try:
        ckpt.mkdir(parents=True)
        base = {"size": "tiny", "method": "pil_pure"}
        spec = ex.run_spec(ex.make_run(base | {"teacher": str(ckpt)}, target="teacher"))
        ident = grid._teacher_identity(spec.teacher)
        assert ident == {"path": "results/_test_teacher_key/runs/teacher,seed=0/checkpoint", "key": None}
        before = ex.run_key(spec)
        (ckpt.parent / "run.json").write_text(json.dumps({"key": "teacher-key"}))
        assert ex.run_key(spec) != before  # a retrained teacher makes its students stale
        # the same checkpoint named by a relative path: the same key
        rel_spec = ex.run_spec(ex.make_run(base | {"teacher": os.path.relpath(ckpt)}, target="teacher"))
        assert ex.run_key(rel_spec) == ex.run_key(spec)
    finally:
        shutil.rmtree(REPO / "results" / "_test_teacher_key", ignore_errors=True)


def test_checkpoints_are_needed_to_resume_not_to_summarize(tmp_path, fake_execute, monkeypatch):
    """Checkpoints are not committed: a finished run without one is redone before its checkpoint is
    used, but still counts as finished for a summary of finished runs."""
    runs = ex.expand({"size": "tiny", "save_checkpoint": True}, method=["baseline"], seed=[0])
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "smoke" / "exp" / "runs" / runs[0]["name"] / "checkpoint")
    monkeypatch.setenv(ex.FINISHED_ONLY, "1")
    assert len(ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)) == 1
    assert fake_execute == [0]
    monkeypatch.delenv(ex.FINISHED_ONLY)
    ex.run_grid("exp", runs, profile="smoke", results_root=tmp_path, progress=False)
    assert fake_execute == [0, 0]


def test_workers_stay_on_the_gpus_their_grid_was_given(monkeypatch):
    """A grid started with CUDA_VISIBLE_DEVICES=1 (tools/device_experiments.sh places groups so) must
    pin its workers to physical GPU 1, not renumber them from 0; unset, workers go round robin."""
    import multiprocessing as mp

    def pinned(gpus, workers=3):  # what each of the pool's workers sets, in start order
        counter = mp.Value("i", 0)
        return [grid._worker_init(counter, gpus) or os.environ["CUDA_VISIBLE_DEVICES"] for _ in range(workers)]

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert ex.visible_gpus(1) == ["1"]  # torch counts the one visible GPU
    assert pinned(ex.visible_gpus(1)) == ["1", "1", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert ex.visible_gpus(2) == ["0", "1"]
    assert pinned(ex.visible_gpus(2)) == ["0", "1", "0"]
    assert ex.visible_gpus(0) == []  # no GPU: workers are not pinned


def test_unpack_results_takes_only_the_experiments_the_call_ran(tmp_path):
    """tools/unpack_results.sh: a call's tar holds all of results/ as the call's copy of the tree had it.
    Only the experiments its log names as run are unpacked (another experiment's newer files here stay),
    and their own files that the call deleted are deleted here."""
    import subprocess
    import tarfile

    call, here = tmp_path / "call", tmp_path / "here"
    for root in (call, here):
        (root / "results/paper/a/runs/r0").mkdir(parents=True)
        (root / "results/paper/b").mkdir(parents=True)
    # the call's copy: it ran `a` (finished its grid: partial.json gone), and had an older `b`
    (call / "results/paper/a/summary.csv").write_text("new a\n")
    (call / "results/paper/a/runs/r0/result.json").write_text("{}")
    (call / "results/paper/a.ipynb").write_text("executed a")
    (call / "results/paper/b/summary.csv").write_text("old b\n")
    # here: a's partial state, and b's newer results from a call unpacked since
    (here / "results/paper/a/summary.csv").write_text("old a\n")
    (here / "results/paper/a/partial.json").write_text("{}")
    (here / "results/paper/b/summary.csv").write_text("newer b\n")
    (here / "results/paper/b/partial.json").write_text("{}")
    dev = tmp_path / "device"
    dev.mkdir()
    with tarfile.open(dev / "results.tar", "w") as t:
        t.add(call / "results", arcname="results")
    (dev / "log0.txt").write_text("[1/1] a: running notebooks/a.ipynb\n[first_layer] 3 runs\n")
    script = Path(__file__).resolve().parents[1] / "tools" / "unpack_results.sh"
    out = subprocess.run(["bash", str(script), str(dev / "results.tar")], cwd=here, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (here / "results/paper/a/summary.csv").read_text() == "new a\n"
    assert (here / "results/paper/a/runs/r0/result.json").exists() and (here / "results/paper/a.ipynb").exists()
    assert not (here / "results/paper/a/partial.json").exists()  # deleted by the call
    assert (here / "results/paper/b/summary.csv").read_text() == "newer b\n"  # not run by the call: untouched
    assert (here / "results/paper/b/partial.json").exists()
    # a second call finished another run of `b`, while its summary still lists the first one as missing
    (call / "results/paper/b/runs/r1").mkdir(parents=True)
    (call / "results/paper/b/runs/r1/result.json").write_text("{}")
    (call / "results/paper/b/partial.json").write_text('{"missing": ["r0", "r2"]}')
    (here / "results/paper/b/runs/r0").mkdir(parents=True)
    (here / "results/paper/b/runs/r0/result.json").write_text("{}")  # unpacked from the first call
    with tarfile.open(dev / "results.tar", "w") as t:
        t.add(call / "results", arcname="results")
    (dev / "log0.txt").write_text("[1/1] b: running notebooks/b.ipynb\n")
    out = subprocess.run(["bash", str(script), str(dev / "results.tar")], cwd=here, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ("b: partial.json lists 1 missing run(s) that have finished here (r0); collect the summary: "
            ".venv/bin/python -m pillm experiments --profile paper --only b --finished-only") in out.stdout
    (dev / "log0.txt").write_text("nothing ran\n")  # no experiment named: nothing unpacked, and it says so
    out = subprocess.run(["bash", str(script), str(dev / "results.tar")], cwd=here, capture_output=True, text=True)
    assert out.returncode == 2 and "nothing unpacked" in out.stderr


@pytest.mark.parametrize("commit", ["REPLACE", "2a2be69", "unknown"])
def test_device_script_refuses_a_commit_that_is_not_a_full_hash(tmp_path, commit):
    """Every run records PILLM_GIT_COMMIT as its commit: tools/device_experiments.sh stops before it spends
    device time when that is a placeholder or a short hash, and leaves the tree's .git where it was."""
    work = tmp_path / "tree"
    (work / ".git").mkdir(parents=True)
    out = subprocess.run(["bash", str(REPO / "tools" / "device_experiments.sh"), "5", "--profile smoke"], cwd=work,
                         capture_output=True, text=True, env={**os.environ, "PILLM_GIT_COMMIT": commit})
    assert out.returncode == 2 and "full 40-hex commit" in out.stderr and commit in out.stderr
    assert (work / ".git").is_dir()


def test_a_sequential_grid_records_the_runs_of_other_processes(tmp_path, monkeypatch):
    """tools/device_experiments.sh runs several grids side by side and tells each how many runs the others
    execute (PILLM_OTHER_RUNS): a grid that runs its runs one at a time (PILLM_JOBS=1, or one pending run)
    shared the GPU all the same, and its runs must say so (they recorded 1 before)."""
    seen = []

    def execute(spec, out=None, progress=True):
        seen.append(os.environ.get("PILLM_CONCURRENT_RUNS"))
        result = _fake_result(spec) | {"environment": {"concurrent_runs": int(os.environ["PILLM_CONCURRENT_RUNS"])}}
        ex.write_json_atomic(Path(out) / "result.json", result)
        return result, None

    monkeypatch.setattr(grid, "execute", execute)
    monkeypatch.setenv("PILLM_JOBS", "1")
    monkeypatch.setenv("PILLM_OTHER_RUNS", "7")
    monkeypatch.delenv("PILLM_CONCURRENT_RUNS", raising=False)
    df = ex.run_grid("seq", ex.expand({"size": "tiny"}, method=["baseline"], seed=[0, 1]), profile="smoke",
                     results_root=tmp_path, progress=False)
    assert seen == ["8", "8"] and list(df["concurrent_runs"]) == [8, 8]
    assert "PILLM_CONCURRENT_RUNS" not in os.environ  # restored for a later grid in the same kernel


#: One run of each kind that is not a RunSpec (grid._OTHER_SPECS): every kind must have one here.
OTHER_KIND_RUNS = {
    "adapt": dict(checkpoint="ckpt", domain="ptb", how="resolve"),
    "first_layer": dict(checkpoint="ckpt", projection="pca", expansion=16),
    "lambda_path": dict(checkpoint="ckpt", lams=[1e-4, 1e-1]),
    "fixed_attention": dict(heads=["prev1", "prev2", "prev3", "avg"]),
}


@pytest.mark.parametrize("kind", sorted(OTHER_KIND_RUNS))
def test_each_other_kind_has_its_own_keys(tmp_path, kind):
    """Every kind of run builds its spec and has a key of its own (the kind is part of it)."""
    assert set(OTHER_KIND_RUNS) == set(grid._OTHER_SPECS)
    specs = {k: grid.run_spec(grid._other_run(k, "r", None, **dict(fields, **(
        {"checkpoint": str(tmp_path / fields["checkpoint"])} if "checkpoint" in fields else {}))))
        for k, fields in OTHER_KIND_RUNS.items()}
    assert all(type(spec).__name__ == grid._OTHER_SPECS[k][1] for k, spec in specs.items())
    keys = {k: ex.run_key(spec) for k, spec in specs.items()}
    assert len(set(keys.values())) == len(keys)
    assert ex.run_key(specs[kind], version=grid.COMPUTE_VERSION + 1) != keys[kind]
    with pytest.raises(ValueError, match="how must be one of"):
        ex.make_adapt_run("r", checkpoint="x", how="nope")


def test_warm_up_trains_each_method_once_briefly_on_a_gpu(monkeypatch):
    """Timed runs that share a process on a GPU are preceded by one short untimed run per method, so that the
    first timed run does not also pay the process's CUDA set-up; on a CPU nothing runs."""
    import torch

    from pillm.experiments import grid
    from pillm.run import RunSpec

    calls = []
    monkeypatch.setattr(grid, "execute", lambda spec, **kw: calls.append(spec))
    specs = [RunSpec(method=m, train={"seed": s, "solve_tokens": 204800}) for m in ("baseline", "attn_then_pil")
             for s in (0, 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid._warm_up(specs)
    assert calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    grid._warm_up(specs)
    assert [c.method for c in calls] == ["baseline", "attn_then_pil"]
    assert all(c.train["epochs"] == 1 and c.train["solve_tokens"] is None and not c.save_checkpoint for c in calls)
