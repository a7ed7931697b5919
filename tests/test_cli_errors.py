"""A user's mistakes through the CLI: each is exit status 1 or 2 and one line on stderr that names the flag
or the file, no traceback, and no finished run altered. The table runs through ``pillm.cli.main`` in this
process; two of its rows and the debug traceback also run through the real entry point, ``python -m pillm``.
Interrupts and kills leave the run directory whole or absent, and written files follow the user's umask."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--method", "baseline", "--size", "tiny", "--epochs", "1", "--max-train-tokens", "2048",
        "--max-eval-tokens", "512", "--device", "cpu", "--quiet"]


def _env(**extra) -> dict:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PILLM_DEBUG": ""} | extra


def _pillm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pillm", *args]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class Row(NamedTuple):
    argv: list[str]  # the arguments of `pillm`
    env: dict  # extra environment
    status: int  # the exit status
    words: list[str]  # words the one-line message must contain
    only_data_dir: bool = False  # hide every dataset folder but $PILLM_DATA_DIR


def _rows(run: Path, tmp: Path) -> dict[str, Row]:
    damaged = {}
    for name, damage in (("truncated", lambda c: (c / "model.safetensors").write_bytes(
            (c / "model.safetensors").read_bytes()[:100])),
            ("badconfig", lambda c: (c / "config.json").write_text("{\n  broken"))):
        shutil.copytree(run / "checkpoint", tmp / name)
        damage(tmp / name)
        damaged[name] = tmp / name
    (tmp / "afile").write_text("")
    (tmp / "nodata").mkdir()
    (tmp / "corrupt" / "wikitext-2").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (tmp / "corrupt" / "wikitext-2" / f"{split}.txt").write_text("not the corpus\n")
    readonly = Path("/sys/pillm-test/run") if os.geteuid() == 0 else tmp / "readonly" / "run"
    if os.geteuid() != 0:
        (tmp / "readonly").mkdir()
        (tmp / "readonly").chmod(0o555)
    train = ["train", *TINY]
    return {
        "out is a finished run": Row([*train, "--out", str(run)], {}, 2, [str(run), "--overwrite"]),
        "out is a file": Row([*train, "--out", str(tmp / "afile")], {}, 2, ["afile"]),
        "out is read-only": Row([*train, "--out", str(readonly)], {}, 2, [str(readonly), "not writable"]),
        "max-train-tokens negative": Row([*train, "--max-train-tokens", "-5", "--out", str(run)], {}, 2,
                                         ["--max-train-tokens", "-5", "65"]),
        "max-train-tokens zero": Row([*train, "--max-train-tokens", "0", "--out", str(run)], {}, 2,
                                     ["--max-train-tokens", "0", "65"]),
        "max-eval-tokens negative": Row([*train, "--max-eval-tokens", "-1", "--out", str(run)], {}, 2,
                                        ["--max-eval-tokens", "-1"]),
        "epochs 0 with an optimizer": Row([*train, "--epochs", "0", "--out", str(run)], {}, 2,
                                          ["--epochs", "0", "pil_pure"]),
        "device tpu": Row([*train, "--device", "tpu", "--out", str(run)], {}, 2,
                          ["--device", "tpu", "auto", "cpu", "cuda:N"]),
        "evaluate stride 0": Row(["evaluate", "--checkpoint", str(run), "--stride", "0"], {}, 2, ["--stride", "0"]),
        "evaluate max-tokens negative": Row(["evaluate", "--checkpoint", str(run), "--max-tokens", "-50"], {}, 2,
                                            ["--max-tokens", "-50"]),
        "missing data": Row([*train, "--out", str(tmp / "r1")], {"PILLM_DATA_DIR": str(tmp / "nodata")}, 1,
                            ["wikitext-2/train.txt", "PILLM_DATA_DIR", "data/"], only_data_dir=True),
        "corrupt data": Row([*train, "--out", str(tmp / "r2")], {"PILLM_DATA_DIR": str(tmp / "corrupt")}, 1,
                            ["wikitext-2/train.txt", "corrupt"]),
        "missing teacher": Row([*train, "--target", "teacher", "--teacher", str(tmp / "noteacher"),
                                "--out", str(tmp / "r3")], {}, 1, [str(tmp / "noteacher")]),
        "missing checkpoint": Row(["evaluate", "--checkpoint", str(tmp / "nothing")], {}, 1, [str(tmp / "nothing")]),
        "not a checkpoint": Row(["evaluate", "--checkpoint", str(tmp / "nodata")], {}, 1, ["nodata", "config.json"]),
        "truncated weights": Row(["evaluate", "--checkpoint", str(damaged["truncated"])], {}, 1,
                                 [str(damaged["truncated"] / "model.safetensors"), "damaged"]),
        "broken config.json": Row(["generate", "--checkpoint", str(damaged["badconfig"]), "--prompt", "the"], {}, 1,
                                  [str(damaged["badconfig"] / "config.json"), "damaged"]),
    }


ROWS = ["out is a finished run", "out is a file", "out is read-only", "max-train-tokens negative",
        "max-train-tokens zero", "max-eval-tokens negative", "epochs 0 with an optimizer", "device tpu",
        "evaluate stride 0", "evaluate max-tokens negative", "missing data", "corrupt data", "missing teacher",
        "missing checkpoint", "not a checkpoint", "truncated weights", "broken config.json"]


@pytest.fixture(scope="module")
def table(tiny_checkpoint, tmp_path_factory) -> tuple[Path, dict[str, Row]]:
    """The rows' folder (also their working directory) and the rows."""
    tmp = tmp_path_factory.mktemp("errors")
    return tmp, _rows(tiny_checkpoint.dir, tmp)


# The notebook pool's threads (conftest.notebook_pool) run beside the tests: their warnings are not the row's.
_NOTEBOOK_POOL = re.compile(r"[/\\](jupyter_client|jupyter_core|nbclient|nbformat|zmq|tornado|traitlets)[/\\]")


def _in_process(row: Row, tmp: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``pillm ARGV`` through ``pillm.cli.main`` in this process: (exit status, stderr). A warning counts as a
    line of stderr, as it would be one in a process of its own; the global state of torch is restored."""
    import torch

    import pillm.data.corpora
    from pillm.cli import main

    monkeypatch.chdir(tmp)
    monkeypatch.setenv("PILLM_DEBUG", "")
    for name, value in row.env.items():
        monkeypatch.setenv(name, value)
    if "PILLM_DATA_DIR" in row.env:  # corrupt files must not meet a tokenized cache of good ones
        monkeypatch.setenv("PILLM_CACHE_DIR", tempfile.mkdtemp(prefix="cache", dir=tmp))
    if row.only_data_dir:
        monkeypatch.setattr(pillm.data.corpora, "data_dir_candidates", lambda: [Path(row.env["PILLM_DATA_DIR"])])
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    capsys.readouterr()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            status = main(row.argv)
        except SystemExit as err:  # argparse's errors
            status = err.code
        finally:
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # Python's default
    shown = [f"{w.category.__name__}: {w.message}\n" for w in caught
             if not issubclass(w.category, hidden) and not _NOTEBOOK_POOL.search(w.filename)]
    return status, capsys.readouterr().err + "".join(shown)


def _assert_one_line(row: Row, status: int, stderr: str, tmp: Path) -> None:
    assert status == row.status, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in row.words:
        assert word in lines[0], (word, lines[0])
    assert not any(p.name.startswith(("r1", "r2", "r3")) for p in tmp.iterdir())  # nothing written


@pytest.mark.parametrize("name", ROWS)
def test_a_mistake_is_one_line(tiny_checkpoint, table, name, monkeypatch, capsys):
    tmp, rows = table
    before = _snapshot(tiny_checkpoint.dir)
    _assert_one_line(rows[name], *_in_process(rows[name], tmp, monkeypatch, capsys), tmp)
    assert _snapshot(tiny_checkpoint.dir) == before, "a finished run was altered"


def test_the_table_covers_every_row(table):
    assert set(table[1]) == set(ROWS)


def test_missing_data_points_inside_the_repository(table, monkeypatch, capsys):
    tmp, rows = table
    _, message = _in_process(rows["missing data"], tmp, monkeypatch, capsys)
    assert "wikitext-2/train.txt" in message  # the row's message, not another failure's
    assert "shared/" not in message and str(REPO.parent) not in message.replace(str(REPO), "")


def _run_timed(cmd: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``cmd``: its CompletedProcess and the CPU seconds of that process alone (``os.wait4``), which
    neither other jobs on the machine nor the session's other children (the notebook kernels) inflate."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kwargs)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()), usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("name", ["max-train-tokens zero", "truncated weights"])
def test_the_entry_point_reports_a_mistake_in_one_line(tiny_checkpoint, table, tmp_path, name):
    """Two rows, an argument error and a damaged checkpoint, through `python -m pillm` in a process of its
    own. Each fails in the time it takes to import pillm: no data is read, nothing is trained."""
    tmp, rows = table
    before = _snapshot(tiny_checkpoint.dir)
    row = rows[name]
    env = _env(PILLM_DATA_DIR=str(tmp_path / "nowhere"), PILLM_CACHE_DIR=str(tmp_path / "cache"), **row.env)
    r, cpu = _run_timed(_pillm(*row.argv), env=env, cwd=tmp)
    _assert_one_line(row, r.returncode, r.stderr, tmp)
    assert _snapshot(tiny_checkpoint.dir) == before, "a finished run was altered"
    assert cpu < 5, f"{cpu:.1f} s of CPU before the error"


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    missing = tmp_path / "none"
    r = subprocess.run(_pillm("evaluate", "--checkpoint", str(missing)), env=_env(PILLM_DEBUG="1"),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr
    from pillm.cli import main

    monkeypatch.setenv("PILLM_DEBUG", "")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):  # the exception itself, not one line
        main(["--debug", "evaluate", "--checkpoint", str(missing)])
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        main(["evaluate", "--checkpoint", str(missing), "--debug"])


def test_ctrl_c_writes_nothing(tmp_path):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--max-train-tokens", "200000", "--out", str(out)]
    argv.remove("--quiet")
    # Where SIGINT is ignored (a job in the background), a child would ignore it too and train to the end.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        p = subprocess.Popen(_pillm(*argv), env=_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen = ""
    while "adamw" not in seen:  # training has started
        seen += p.stderr.read(64)
        assert p.poll() is None or "adamw" in seen, seen
    p.send_signal(signal.SIGINT)
    _, rest = p.communicate(timeout=120)
    last = (seen + rest).replace("\r", "\n").strip().splitlines()[-1]
    assert p.returncode == 130 and last == f"pillm train: interrupted; nothing written to {out}"
    assert not out.exists() and not list(tmp_path.iterdir())


_KILL_DURING_SAVE = """
import os, signal, sys
from pathlib import Path
import pillm.run as run
out, where = Path(sys.argv[1]), sys.argv[2]
if where == "between renames":  # after the old run moved aside, before the new one moved in
    replace, calls = os.replace, []
    def replace_then_die(src, dst):
        replace(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
    run.os.replace = replace_then_die
with run.staged_directory(out, overwrite=True) as tmp:
    (tmp / "checkpoint").mkdir()
    (tmp / "checkpoint" / "config.json").write_text("new")
    if where == "while filling":
        os.kill(os.getpid(), signal.SIGKILL)
    run.write_json_atomic(tmp / "result.json", {"new": True})
"""


@pytest.mark.parametrize("where", ["while filling", "between renames"])
def test_kill_during_save_leaves_the_run_whole_or_absent(tiny_checkpoint, tmp_path, where):
    out = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.dir, out)
    before = _snapshot(out)
    r = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(out), where], env=_env())
    assert r.returncode == -signal.SIGKILL
    assert not out.exists() or _snapshot(out) == before  # the old run whole, or no run at all
    assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != out)  # leftovers are hidden temporaries
    from pillm.run import staged_directory

    with staged_directory(out, overwrite=True) as tmp:  # the next write to it clears the leftovers
        (tmp / "result.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_files_follow_the_umask(tiny_checkpoint, tmp_path):
    from pillm.run import staged_directory, write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "a.txt", "text")
        write_atomic(tmp_path / "b.bin", b"\x00\x01")
        with staged_directory(tmp_path / "run") as tmp:
            write_atomic(tmp / "result.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "text" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    for f in ("a.txt", "b.bin", "run/result.json"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o640, f
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o750
    mask = os.umask(0)
    os.umask(mask)
    for p in (tiny_checkpoint.dir, *tiny_checkpoint.dir.rglob("*")):
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~mask, p
